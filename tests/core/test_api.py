"""The HTTP API for backends (core/api.py, core/api_server.py) against a real relay: every
answer is checked against docs/openapi.json as well as for its content."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import websockets
from openapi_spec_validator import validate as validate_spec

from core.api_server import ApiServer
from tests.helpers import UNIT, Client, Relay, StartRelay

ROOT = Path(__file__).resolve().parents[2]
SPEC = json.loads((ROOT / "docs" / "openapi.json").read_text())
KEY = "svc-secret-that-is-long-enough-0123456789"
ADMIN = "admin-token-that-is-long-enough-0123456789"


def test_the_openapi_document_is_valid() -> None:
    validate_spec(SPEC)


def _schema(path: str, method: str, status: int) -> dict[str, Any]:
    operation = SPEC["paths"][path][method]
    response = operation["responses"].get(str(status)) or operation["responses"]["default"]
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    return {**schema, "components": SPEC["components"]}


def conforms(path: str, method: str, response: httpx.Response) -> Any:
    """The response's JSON, after checking it against the OpenAPI document."""
    doc = response.json()
    # the components ride along, so `#/components/schemas/X` resolves inside the schema
    jsonschema.validate(doc, _schema(path, method, response.status_code))
    return doc


class Api:
    def __init__(self, relay: Relay, key: str = KEY) -> None:
        service = next(s for s in relay.server.services if isinstance(s, ApiServer))
        self.base = f"http://127.0.0.1:{service.port}"
        self.client = httpx.AsyncClient(
            base_url=self.base, headers={"Authorization": f"Bearer {key}"}, timeout=UNIT
        )
        self.relay = relay

    async def post(self, path: str, doc: Any = None, **kw: Any) -> httpx.Response:
        if doc is not None:
            kw["content"] = json.dumps(doc)
        return await self.client.post(path, **kw)

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, **kw)


@pytest.fixture
async def api(start_relay: StartRelay) -> AsyncIterator[Api]:
    relay = await start_relay(api_keys=(f"svc:{KEY}",), api_port=0, admin_token=ADMIN)
    client = Api(relay)
    yield client
    await client.client.aclose()


async def test_publish_answers_after_the_fsync_and_subscribers_get_it_from_the_key(
    api: Api,
) -> None:
    reader = await Client.connect(api.relay.url)
    await reader.sub("room.1")
    response = await api.post("/api/v1/publish", {"ch": "room.1", "data": {"text": "hi"}})
    assert response.status_code == 200
    doc = conforms("/api/v1/publish", "post", response)
    assert doc["ch"] == "room.1" and doc["seq"] == 1 and doc["dup"] is False
    assert doc["epoch"] == reader.welcome["epoch"]
    msg = await reader.expect("msg")
    assert (msg["seq"], msg["from"], msg["data"]) == (1, "svc", {"text": "hi"})
    assert msg["ts"] == doc["ts"]
    head = await api.get("/api/v1/channels/room.1")
    info = conforms("/api/v1/channels/{ch}", "get", head)
    assert info["seq"] == doc["seq"] and info["subscribers"] == 1 and info["users"] == 1


async def test_the_same_idempotency_key_gives_one_message_and_one_seq(api: Api) -> None:
    first = await api.post(
        "/api/v1/publish", {"ch": "room.i", "data": 1}, headers={"Idempotency-Key": "k-1"}
    )
    again = await api.post(
        "/api/v1/publish", {"ch": "room.i", "data": 2}, headers={"Idempotency-Key": "k-1"}
    )
    assert first.json()["seq"] == again.json()["seq"] == 1
    assert (first.json()["dup"], again.json()["dup"]) == (False, True)
    # concurrently: both are in flight before either is durable
    together = await asyncio.gather(
        *(api.post("/api/v1/publish", {"ch": "room.i", "data": 3, "mid": "k-2"}) for _ in range(5))
    )
    seqs = {r.json()["seq"] for r in together}
    assert seqs == {2} and sorted(r.json()["dup"] for r in together) == [False] + [True] * 4
    page = conforms(
        "/api/v1/channels/{ch}/messages",
        "get",
        await api.get("/api/v1/channels/room.i/messages", params={"since": 0}),
    )
    assert [(m["seq"], m["data"]) for m in page["messages"]] == [(1, 1), (2, 3)]


async def test_a_batch_is_one_wal_batch_with_contiguous_seqs_in_item_order(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    relay = await start_relay(api_keys=(f"svc:{KEY}",), api_port=0, durability="wal")
    client = Api(relay)
    try:
        wal = relay.server.log
        before = wal.stats()["batches"]
        items: list[dict[str, object]] = [
            {"ch": f"room.{i % 3}", "data": {"i": i}} for i in range(1000)
        ]
        items[500] = {"ch": "$sys.x", "data": 0}  # forbidden: fails alone
        items[600] = {"ch": "", "data": 0}  # not a name: fails alone
        items[700] = {"ch": "room.0 ", "data": 0}  # nor this, next to a known channel
        failing = (500, 600, 700)
        response = await client.post("/api/v1/publish/batch", {"items": items})
        doc = conforms("/api/v1/publish/batch", "post", response)
        results = doc["results"]
        assert results[500]["error"]["code"] == "forbidden"
        assert results[600]["error"]["code"] == results[700]["error"]["code"] == "bad_request"
        assert wal.stats()["batches"] - before == 1  # one write, one fsync
        for ch in ("room.0", "room.1", "room.2"):
            seqs = [
                r["seq"] for i, r in enumerate(results) if i not in failing and items[i]["ch"] == ch
            ]
            assert seqs == list(range(1, len(seqs) + 1)), ch
        assert all(
            r["epoch"] == wal_epoch(relay) for i, r in enumerate(results) if i not in failing
        )
    finally:
        await client.client.aclose()


def wal_epoch(relay: Relay) -> str:
    return str(relay.hub.router.epoch)


async def test_broadcast_reaches_each_channel_and_exclude_client_skips_one_connection(
    api: Api,
) -> None:
    alice = await Client.connect(api.relay.url, user="alice")
    bob = await Client.connect(api.relay.url, user="bob")
    other = await Client.connect(api.relay.url, user="bob")
    response = await api.post(
        "/api/v1/broadcast",
        {"channels": ["@alice", "@bob"], "data": "dm", "exclude_client": other.welcome["client"]},
    )
    doc = conforms("/api/v1/broadcast", "post", response)
    assert [(r["ch"], r["seq"]) for r in doc["results"]] == [("@alice", 1), ("@bob", 1)]
    assert (await alice.expect("msg"))["data"] == "dm"
    assert (await bob.expect("msg"))["data"] == "dm"
    await other.assert_silent()  # the excluded connection (the publisher's own tab)


async def test_refusals_have_their_status_and_code(api: Api, start_relay: StartRelay) -> None:
    async def refused(status: int, code: str, response: httpx.Response) -> None:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code

    anonymous = httpx.AsyncClient(base_url=api.base, timeout=UNIT)
    try:
        await refused(401, "unauthorized", await anonymous.post("/api/v1/publish", content="{}"))
        wrong = {"Authorization": "Bearer not-a-key"}
        await refused(
            401,
            "unauthorized",
            await anonymous.post("/api/v1/publish", headers=wrong, content="{}"),
        )
    finally:
        await anonymous.aclose()
    await refused(403, "forbidden", await api.post("/api/v1/publish", {"ch": "$sys.x", "data": 1}))
    await refused(400, "bad_request", await api.post("/api/v1/publish", content="{nope"))
    await refused(
        400, "bad_request", await api.post("/api/v1/publish", {"ch": "bad ch", "data": 1})
    )
    await refused(404, "not_found", await api.get("/api/v1/nothing"))
    await refused(404, "not_found", await api.get("/api/v1/channels/never.used"))
    await refused(405, "method_not_allowed", await api.get("/api/v1/publish"))
    await refused(403, "forbidden", await api.post("/api/v1/disconnect", {"user": "x"}))
    big = {"ch": "room.1", "data": "x" * (70 * 1024)}
    response = await api.post("/api/v1/publish", big)
    await refused(413, "too_large", response)
    conforms("/api/v1/publish", "post", response)
    relay = await start_relay(api_keys=(f"svc:{KEY}",), api_port=0, api_max_body_bytes=4096)
    small = Api(relay)
    try:
        await refused(413, "too_large", await small.post("/api/v1/publish", content="x" * 5000))
    finally:
        await small.client.aclose()


async def test_a_failing_disk_is_503_and_nothing_is_delivered(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = await start_relay(api_keys=(f"svc:{KEY}",), api_port=0, durability="wal")
    client = Api(relay)
    try:
        reader = await Client.connect(relay.url)
        await reader.sub("room.d")
        real = os.fdatasync

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fdatasync", full)
        first = await client.post("/api/v1/publish", {"ch": "room.d", "data": 1})
        assert first.status_code == 503 and first.headers["Retry-After"]
        assert conforms("/api/v1/publish", "post", first)["error"]["code"] == "unavailable"
        later = await client.post("/api/v1/publish/batch", {"items": [{"ch": "room.d", "data": 2}]})
        assert later.status_code == 503  # the log is unwritable: nothing is accepted
        monkeypatch.setattr(os, "fdatasync", real)
        await reader.assert_silent()
        room = relay.hub.router.get("room.d")
        assert room is not None and room.durable_seq == 0
    finally:
        await client.client.aclose()


async def test_history_pages_and_channel_listing(api: Api) -> None:
    for i in range(5):
        await api.post("/api/v1/publish", {"ch": "room.h", "data": i})
    await api.post("/api/v1/publish", {"ch": "room.other", "data": 0})
    page = conforms(
        "/api/v1/channels/{ch}/messages",
        "get",
        await api.get("/api/v1/channels/room.h/messages", params={"since": 1, "limit": 2}),
    )
    assert [m["seq"] for m in page["messages"]] == [2, 3] and page["next"] == 3
    assert page["complete"] is True and page["head"] == 5
    rest = await api.get("/api/v1/channels/room.h/messages", params={"since": page["next"]})
    assert [m["seq"] for m in rest.json()["messages"]] == [4, 5] and rest.json()["next"] is None
    listing = conforms(
        "/api/v1/channels", "get", await api.get("/api/v1/channels", params={"prefix": "room."})
    )
    assert [c["ch"] for c in listing["channels"]] == ["room.h", "room.other"]
    one = await api.get("/api/v1/channels", params={"prefix": "room.", "limit": 1})
    assert [c["ch"] for c in one.json()["channels"]] == ["room.h"] and one.json()[
        "next"
    ] == "room.h"


async def test_disconnect_closes_a_users_connections_with_the_code(api: Api) -> None:
    admin = Api(api.relay, key=ADMIN)
    try:
        victim = await Client.connect(api.relay.url, user="mallory")
        response = await admin.post("/api/v1/disconnect", {"user": "mallory", "code": 4000})
        assert conforms("/api/v1/disconnect", "post", response) == {"closed": 1}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await victim.recv(timeout=UNIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    finally:
        await admin.client.aclose()


def raw_publish(ch: str) -> bytes:
    """One keep-alive publish request, as bytes on the wire."""
    body = b'{"ch":"%s","data":1}' % ch.encode()
    return (
        b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def raw_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next answer's head and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), UNIT)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


async def test_keep_alive_and_pipelining_answer_in_order(api: Api) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(api.base.rsplit(":", 1)[1]))
    try:
        writer.write(raw_publish("room.p") * 20)  # twenty requests in one write
        seqs = []
        for _ in range(20):
            head, body = await raw_answer(reader)
            assert head.startswith(b"HTTP/1.1 200")
            seqs.append(json.loads(body)["seq"])
        assert seqs == list(range(1, 21))
    finally:
        writer.close()


async def test_an_idle_connection_is_closed_and_a_slow_request_answered_408(
    start_relay: StartRelay,
) -> None:
    """The deadlines of the one sweep (no timer per request): an idle keep-alive connection
    is closed after api_idle_timeout, one that stops halfway through a request gets 408
    after handshake_timeout, and one that keeps publishing is never cut off."""
    relay = await start_relay(
        api_keys=(f"svc:{KEY}",), api_port=0, api_idle_timeout=0.4, handshake_timeout=0.4
    )
    port = int(Api(relay).base.rsplit(":", 1)[1])
    request = raw_publish("room.t")

    async def answer(reader: asyncio.StreamReader) -> bytes:
        return (await raw_answer(reader))[0]

    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
    try:
        idle_w.write(request)
        assert (await answer(idle_r)).startswith(b"HTTP/1.1 200")
        slow_w.write(request[:40])  # half a request head, then nothing
        loop = asyncio.get_running_loop()
        started = loop.time()
        # the busy one publishes every 0.1 s, well past both timeouts
        while loop.time() - started < 1.2:
            busy_w.write(request)
            assert (await answer(busy_r)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(idle_r.read(), UNIT) == b"", "idle: closed, nothing sent"
        head = await asyncio.wait_for(slow_r.readuntil(b"\r\n\r\n"), UNIT)
        assert head.startswith(b"HTTP/1.1 408") and b"Connection: close" in head
    finally:
        for w in (busy_w, idle_w, slow_w):
            w.close()


async def test_presence_counts_and_pages_the_subscribers(api: Api) -> None:
    clients = [await Client.connect(api.relay.url, user=u) for u in ("ann", "ann", "ben", "cy")]
    try:
        for client in clients:
            await client.sub("room.p")
        page = conforms(
            "/api/v1/channels/{ch}/presence",
            "get",
            await api.get("/api/v1/channels/room.p/presence", params={"limit": 2}),
        )
        assert (page["users"], page["connections"]) == (3, 4)
        assert page["members"] == [{"user": "ann", "conns": 2}, {"user": "ben", "conns": 1}]
        assert page["next"] == "ben"
        rest = conforms(
            "/api/v1/channels/{ch}/presence",
            "get",
            await api.get("/api/v1/channels/room.p/presence", params={"after": "ben"}),
        )
        assert rest["members"] == [{"user": "cy", "conns": 1}] and rest["next"] is None
        empty = await api.get("/api/v1/channels/room.nobody/presence")
        assert conforms("/api/v1/channels/{ch}/presence", "get", empty)["users"] == 0
        for path, status in (
            ("/api/v1/channels/$sys.stats/presence", 403),  # not an admin key
            ("/api/v1/channels/room.p/presence?limit=0", 400),
        ):
            refused = await api.get(path)
            assert refused.status_code == status
            conforms("/api/v1/channels/{ch}/presence", "get", refused)
    finally:
        for client in clients:
            await client.close()
