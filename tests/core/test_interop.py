"""Interop with three independent client stacks: picows, the websockets library and
Node's `ws`. Each runs the same scenario; data must come back byte for byte."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import msgspec
import pytest
import websockets
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from websockets.typing import Subprotocol

from tests.helpers import ROOT, UNIT, Relay, unavailable

# Values whose exact bytes must survive: unicode, nesting, numbers past 64 bits, odd spacing.
JSON_VALUES = [
    '"h\\u00e9llo w\\u00f6rld \\ud83d\\ude80 — ✓"',
    '{"nested":{"list":[1,2,{"deep":[true,false,null]}],"s":"é"},"n":-0.5e-7}',
    "123456789012345678901234567890",
    '[ 1 ,  2.50 , {"a" : "b"} ]',
]


class Conn(Protocol):
    async def send(self, data: bytes | str) -> None: ...
    async def recv(self) -> bytes | str: ...
    async def close(self) -> None: ...


# A driver opens one connection: driver(url, user, subprotocol).
Driver = Callable[[str, str, str], AbstractAsyncContextManager[Conn]]


# --- drivers ------------------------------------------------------------------------------


class WebsocketsConn:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws

    async def send(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self) -> bytes | str:
        return await asyncio.wait_for(self.ws.recv(), UNIT)

    async def close(self) -> None:
        await self.ws.close()


class PicowsListener(WSListener):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | str] = asyncio.Queue()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.queue.put_nowait(frame.get_payload_as_utf8_text())
        elif frame.msg_type == WSMsgType.BINARY:
            self.queue.put_nowait(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


class PicowsConn:
    def __init__(self, transport: WSTransport, listener: PicowsListener) -> None:
        self.transport = transport
        self.listener = listener

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            self.transport.send(WSMsgType.TEXT, data.encode())
        else:
            self.transport.send(WSMsgType.BINARY, data)

    async def recv(self) -> bytes | str:
        return await asyncio.wait_for(self.listener.queue.get(), UNIT)

    async def close(self) -> None:
        self.transport.send_close()
        self.transport.disconnect()


@asynccontextmanager
async def websockets_conn(url: str, user: str, proto: str) -> AsyncIterator[Conn]:
    ws = await websockets.connect(f"{url}?user={user}", subprotocols=[Subprotocol(proto)])
    assert ws.subprotocol == proto
    conn = WebsocketsConn(ws)
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def picows_conn(url: str, user: str, proto: str) -> AsyncIterator[Conn]:
    transport, listener = await ws_connect(
        PicowsListener, f"{url}?user={user}", extra_headers={"Sec-WebSocket-Protocol": proto}
    )
    assert transport.response.headers["Sec-WebSocket-Protocol"] == proto
    assert isinstance(listener, PicowsListener)
    conn = PicowsConn(transport, listener)
    try:
        yield conn
    finally:
        await conn.close()


DRIVERS: dict[str, Driver] = {"websockets": websockets_conn, "picows": picows_conn}


# --- the scenario ---------------------------------------------------------------------------


def _data_slice(frame_text: str) -> str:
    """The raw text of `data` in a msg frame (data is the last field)."""
    marker = ',"data":'
    i = frame_text.index(marker) + len(marker)
    assert frame_text.endswith("}")
    return frame_text[i:-1]


async def _json_scenario(driver: Driver, url: str) -> None:
    async with (
        driver(url, "alice", "ferry.v1.json") as a,
        driver(url, "alice", "ferry.v1.json") as a2,
    ):
        welcome = json.loads(await a.recv())
        assert welcome["op"] == "welcome" and welcome["user"] == "alice" and welcome["version"] == 1
        json.loads(await a2.recv())
        await a.send('{"op":"sub","ch":"room.interop"}')
        sub = json.loads(await a.recv())
        assert sub == {
            "op": "subscribed", "ch": "room.interop", "seq": 0, "epoch": welcome["epoch"]
        }  # fmt: skip
        for i, value in enumerate(JSON_VALUES, start=1):
            await a.send(f'{{"op":"pub","ch":"room.interop","data":{value},"id":"c-{i}"}}')
            ack = json.loads(await a.recv())
            assert ack == {"op": "ack", "ch": "room.interop", "seq": i, "id": f"c-{i}"}
            raw = await a.recv()
            assert isinstance(raw, str)
            msg = json.loads(raw)
            assert (msg["op"], msg["ch"], msg["seq"], msg["from"]) == (
                "msg",
                "room.interop",
                i,
                "alice",
            )
            assert _data_slice(raw) == value  # byte for byte
        await a.send('{"op":"unsub","ch":"room.interop","id":7}')
        assert json.loads(await a.recv()) == {"op": "unsubscribed", "ch": "room.interop", "id": 7}
        # @user direct message: reaches both of alice's connections.
        await a2.send('{"op":"pub","ch":"@alice","data":{"dm":"hi ✉"},"id":"dm"}')
        frames = [json.loads(await a2.recv()), json.loads(await a2.recv())]
        assert sorted(f["op"] for f in frames) == ["ack", "msg"]
        dm = json.loads(await a.recv())
        assert dm["op"] == "msg" and dm["ch"] == "@alice" and dm["data"] == {"dm": "hi ✉"}


class MsgView(msgspec.Struct):
    op: str
    ch: str = ""
    seq: int = 0
    data: msgspec.Raw = msgspec.Raw(b"")


async def _recv_binary(conn: Conn) -> bytes:
    raw = await conn.recv()
    assert isinstance(raw, bytes), raw
    return raw


async def _msgpack_scenario(driver: Driver, url: str) -> None:
    value = {"bin": b"\x00\x01\xfe\xff", "text": "ünï", "big": 2**63 + 5, "list": [1.5, None, True]}
    packed = msgspec.msgpack.encode(value)
    async with (
        driver(url, "bob", "ferry.v1.msgpack") as b,
        driver(url, "carol", "ferry.v1.json") as c,
    ):
        welcome = msgspec.msgpack.decode(await _recv_binary(b))
        assert welcome["op"] == "welcome" and welcome["user"] == "bob"
        await c.recv()
        await b.send(msgspec.msgpack.encode({"op": "sub", "ch": "room.mp"}))
        assert msgspec.msgpack.decode(await _recv_binary(b))["op"] == "subscribed"
        await c.send('{"op":"sub","ch":"room.mp"}')
        assert json.loads(await c.recv())["op"] == "subscribed"
        await b.send(
            msgspec.msgpack.encode(
                {"op": "pub", "ch": "room.mp", "data": msgspec.Raw(packed), "id": 1}
            )
        )
        ack = msgspec.msgpack.decode(await _recv_binary(b))
        assert ack == {"op": "ack", "ch": "room.mp", "seq": 1, "id": 1}
        raw = await b.recv()
        assert isinstance(raw, bytes)
        view = msgspec.msgpack.decode(raw, type=MsgView)
        assert view.op == "msg" and view.seq == 1
        assert bytes(view.data) == packed  # byte for byte, bin values included
        # The JSON subscriber gets it transcoded: bin becomes base64.
        jmsg = json.loads(await c.recv())
        assert jmsg["data"]["bin"] == base64.b64encode(b"\x00\x01\xfe\xff").decode()
        assert jmsg["data"]["big"] == 2**63 + 5 and jmsg["data"]["text"] == "ünï"


@pytest.mark.parametrize("driver", sorted(DRIVERS))
async def test_json_session(relay: Relay, driver: str) -> None:
    await _json_scenario(DRIVERS[driver], relay.url)


@pytest.mark.parametrize("driver", sorted(DRIVERS))
async def test_msgpack_session(relay: Relay, driver: str) -> None:
    await _msgpack_scenario(DRIVERS[driver], relay.url)


def _node() -> tuple[str, str]:
    node = shutil.which("node")
    modules = ROOT / "bench" / "peers" / "node_modules"
    if node is None or not (modules / "ws").is_dir():
        unavailable("node and bench/peers/node_modules/ws (scripts/bootstrap.sh node)")
    return node, str(modules)


async def _run_node(url: str, script: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node, modules = _node()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(ROOT / "tests" / "core" / "interop_client.mjs"),
        url,
        json.dumps(script),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "FERRYTEST_NODE_MODULES": modules},
    )
    out, err = await asyncio.wait_for(proc.communicate(), UNIT * 4)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_node_ws_json(relay: Relay) -> None:
    script: list[dict[str, Any]] = [
        {"conn": "a", "user": "dave", "proto": "ferry.v1.json"},
        {"conn": "a2", "user": "dave"},  # no subprotocol offered: JSON is the default
        {"recv": "a", "count": 1},
        {"recv": "a2", "count": 1},
        {"send": "a", "text": '{"op":"sub","ch":"room.node"}'},
        {"recv": "a", "count": 1},
    ]
    for i, value in enumerate(JSON_VALUES, start=1):
        script.append(
            {"send": "a", "text": f'{{"op":"pub","ch":"room.node","data":{value},"id":"n{i}"}}'}
        )
        script.append({"recv": "a", "count": 2})
    script += [
        {"send": "a", "text": '{"op":"unsub","ch":"room.node"}'},
        {"recv": "a", "count": 1},
        {"send": "a2", "text": '{"op":"pub","ch":"@dave","data":"direct"}'},
        {"recv": "a2", "count": 2},
        {"recv": "a", "count": 1},
    ]
    frames = await _run_node(relay.url, script)
    a = [f["text"] for f in frames if f["conn"] == "a"]
    a2 = [f["text"] for f in frames if f["conn"] == "a2"]
    assert json.loads(a[0])["op"] == "welcome" and json.loads(a2[0])["op"] == "welcome"
    epoch = json.loads(a[0])["epoch"]
    assert json.loads(a[1]) == {"op": "subscribed", "ch": "room.node", "seq": 0, "epoch": epoch}
    for i, value in enumerate(JSON_VALUES, start=1):
        ack, msg = a[2 * i], a[2 * i + 1]
        assert json.loads(ack) == {"op": "ack", "ch": "room.node", "seq": i, "id": f"n{i}"}
        assert json.loads(msg)["seq"] == i and _data_slice(msg) == value
    assert json.loads(a[2 + 2 * len(JSON_VALUES)])["op"] == "unsubscribed"
    assert sorted(json.loads(t)["op"] for t in a2[1:3]) == ["ack", "msg"]
    assert json.loads(a[-1]) == {**json.loads(a[-1]), "op": "msg", "ch": "@dave", "data": "direct"}


async def test_node_ws_msgpack(relay: Relay) -> None:
    packed = msgspec.msgpack.encode({"bin": b"\x00\xff", "n": -(2**40)})
    pub = msgspec.msgpack.encode(
        {"op": "pub", "ch": "room.nmp", "data": msgspec.Raw(packed), "id": "m"}
    )
    script: list[dict[str, Any]] = [
        {"conn": "b", "user": "erin", "proto": "ferry.v1.msgpack"},
        {"recv": "b", "count": 1},
        {
            "sendb": "b",
            "b64": base64.b64encode(
                msgspec.msgpack.encode({"op": "sub", "ch": "room.nmp"})
            ).decode(),
        },
        {"recv": "b", "count": 1},
        {"sendb": "b", "b64": base64.b64encode(pub).decode()},
        {"recv": "b", "count": 2},
    ]
    frames = await _run_node(relay.url, script)
    assert all(f["binary"] for f in frames)
    decoded = [base64.b64decode(f["b64"]) for f in frames]
    assert msgspec.msgpack.decode(decoded[0])["op"] == "welcome"
    assert msgspec.msgpack.decode(decoded[1])["op"] == "subscribed"
    assert msgspec.msgpack.decode(decoded[2]) == {
        "op": "ack",
        "ch": "room.nmp",
        "seq": 1,
        "id": "m",
    }
    view = msgspec.msgpack.decode(decoded[3], type=MsgView)
    assert bytes(view.data) == packed
