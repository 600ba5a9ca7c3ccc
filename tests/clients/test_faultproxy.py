"""The fault proxy itself (tests/clients/faultproxy.py), with a plain websockets client
against an in-process relay: it forwards both encodings, records what crossed, and each
fault does what it says."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import websockets

from tests.clients.faultproxy import C2S, S2C, FaultProxy, FrameParser, _unmask
from tests.helpers import UNIT, Client, Relay


def test_parser_splits_frames_across_reads() -> None:
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    frame = bytes((0x81, 5)) + b"hello"
    long_payload = b"x" * 300
    long_frame = bytes((0x82, 126)) + len(long_payload).to_bytes(2, "big") + long_payload
    stream = head + frame + long_frame
    parser = FrameParser(masked=False)
    pieces = []
    for i in range(0, len(stream), 7):  # 7-byte reads cut the head and both frames
        pieces += parser.feed(stream[i : i + 7])
    assert [raw for raw, _ in pieces] == [head, frame, long_frame]
    assert pieces[1][1] == (0x1, True, b"hello")
    assert pieces[2][1] == (0x2, True, long_payload)


def test_parser_unmasks_client_frames() -> None:
    mask = os.urandom(4)
    payload = b'{"op":"ping"}'
    frame = bytes((0x81, 0x80 | len(payload))) + mask + _unmask(payload, mask)
    parser = FrameParser(masked=True)
    pieces = parser.feed(b"GET /ws HTTP/1.1\r\n\r\n" + frame)
    assert pieces[1][1] == (0x1, True, payload)


def test_parser_passes_a_refusal_through() -> None:
    parser = FrameParser(masked=False)
    pieces = parser.feed(b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy")
    assert [p for _, p in pieces] == [None, None]
    assert b"".join(raw for raw, _ in pieces).endswith(b"busy")


@pytest.fixture
async def proxy(relay: Relay) -> AsyncIterator[FaultProxy]:
    p = await FaultProxy("127.0.0.1", relay.port).start()
    yield p
    await p.stop()


async def test_forwards_and_records_both_encodings(proxy: FaultProxy) -> None:
    for msgpack in (False, True):
        c = await Client.connect(proxy.url(), msgpack=msgpack)
        await c.pub("room.p", {"m": msgpack}, "x1")
        ack = await c.expect("ack")
        await c.close()
        assert ack["id"] == "x1"
        assert {"op": "pub", "ch": "room.p", "data": {"m": msgpack}, "id": "x1"} in proxy.frames(
            C2S, "pub"
        )
    acks = proxy.frames(S2C, "ack")
    assert [a["seq"] for a in acks] == [1, 2]
    assert len(proxy.frames(S2C, "welcome")) == 2


async def test_cut_resets_open_connections(proxy: FaultProxy) -> None:
    c = await Client.connect(proxy.url())
    assert proxy.cut() == 1
    with pytest.raises(websockets.ConnectionClosed) as info:
        await c.recv()
    assert info.value.rcvd is None  # no close frame: what a crash looks like (1006)


async def test_refuse_then_accept_again(proxy: FaultProxy) -> None:
    proxy.refuse(True)
    with pytest.raises((OSError, websockets.InvalidHandshake, EOFError)):
        await Client.connect(proxy.url())
    assert proxy.refused == 1
    proxy.refuse(False)
    c = await Client.connect(proxy.url())
    await c.close()


async def test_blackhole_keeps_the_socket_but_forwards_nothing(proxy: FaultProxy) -> None:
    c = await Client.connect(proxy.url())
    assert proxy.blackhole() == 1
    await c.send({"op": "ping"})
    with pytest.raises(TimeoutError):
        await c.recv(timeout=0.3)
    assert proxy.open_connections == 1  # still open: only a deadline notices
    fresh = await Client.connect(proxy.url())  # new connections are not blackholed
    await fresh.send({"op": "ping"})
    assert (await fresh.expect("pong"))["op"] == "pong"
    await fresh.close()


async def test_drop_ack_drops_exactly_that_ack_then_cuts(proxy: FaultProxy) -> None:
    c = await Client.connect(proxy.url())
    dropped = proxy.drop_ack(lambda f: f.get("id") == "p2")
    await c.pub("room.d", 1, "p1")
    assert (await c.expect("ack"))["id"] == "p1"
    await c.pub("room.d", 2, "p2")
    frame = await asyncio.wait_for(dropped, UNIT)
    assert frame["id"] == "p2" and frame["seq"] == 2
    with pytest.raises(websockets.ConnectionClosed):
        await c.recv()
    # the server did log it: a fresh reader sees both messages
    reader = await Client.connect(proxy.url())
    subscribed = await reader.sub("room.d", since=0)
    assert subscribed["seq"] == 2
    assert [(await reader.expect("msg"))["data"] for _ in range(2)] == [1, 2]
    await reader.close()
