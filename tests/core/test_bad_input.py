"""Bad input gets the documented error frame or close code; the server stays up and
other clients see nothing unusual."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import websockets
from websockets.typing import Subprotocol

from core.auth import make_token
from tests.helpers import UNIT, Client, Relay, StartRelay

SECRET = "test-secret-of-at-least-32-bytes!!"
ADMIN_TOKEN = "admin-token-of-at-least-32-bytes-long"


@pytest.fixture
async def bystander(relay: Relay) -> AsyncIterator[Client]:
    """A healthy subscriber that must notice nothing while others misbehave."""
    client = await Client.connect(relay.url, user="bystander")
    await client.sub("calm")
    yield client
    await client.assert_silent(0.1)
    # still served: a publish round-trips
    await client.pub("calm", {"still": "fine"}, "ok")
    frames = [await client.recv(), await client.recv()]
    assert sorted(f["op"] for f in frames) == ["ack", "msg"]
    await client.close()


async def _error(client: Client, code: str) -> dict[str, Any]:
    frame = await client.expect("error")
    assert frame["code"] == code, frame
    assert isinstance(frame["reason"], str) and frame["reason"]
    return frame


BAD_JSON_FRAMES = [
    ('{"op":"pub","ch":"a","data":{"x":1}', "truncated JSON"),
    ('{"op":"teleport","ch":"a"}', "unknown op"),
    ('{"ch":"a"}', "missing op"),
    ('{"op":"pub","data":1}', "missing ch"),
    ('{"op":"pub","ch":"a"}', "missing data"),
    ('{"op":"sub","ch":42}', "mistyped ch"),
    ('{"op":"sub","ch":"a","since":"x"}', "mistyped since"),
    ('{"op":"pub","ch":"a","data":1,"id":[1]}', "mistyped id"),
    ('["op","pub"]', "not a map"),
    ("", "empty frame"),
    ('{"op":"pub","ch":"' + "a" * 201 + '","data":1}', "201-char channel"),
    ('{"op":"sub","ch":"room 1"}', "space in channel"),
    ('{"op":"sub","ch":"röom"}', "non-ascii channel"),
    ('{"op":"sub","ch":""}', "empty channel"),
    ('{"op":"sub","ch":"a","since":-1}', "negative since"),
]


@pytest.mark.parametrize(("text", "why"), BAD_JSON_FRAMES, ids=[w for _, w in BAD_JSON_FRAMES])
async def test_bad_json_frames(relay: Relay, bystander: Client, text: str, why: str) -> None:
    client = await Client.connect(relay.url, user="mallory")
    await client.send_raw(text)
    await _error(client, "bad_request")
    # the connection survives a bad frame
    await client.send({"op": "ping"})
    await client.expect("pong")
    await client.close()


async def test_error_echoes_id(relay: Relay) -> None:
    client = await Client.connect(relay.url)
    await client.send({"op": "sub", "ch": "bad channel!", "id": "x-9"})
    frame = await _error(client, "bad_request")
    assert frame["id"] == "x-9"


async def test_channel_of_200_chars_is_fine(relay: Relay) -> None:
    client = await Client.connect(relay.url)
    assert (await client.sub("c" * 200))["seq"] == 0


async def test_non_utf8_text_frame_closes_1007(relay: Relay, bystander: Client) -> None:
    client = await Client.connect(relay.url)
    # websockets refuses to send invalid text; send a raw text frame ourselves.
    await client.ws.send(b'{"op":"pub","ch":"a","data":"\xff\xfe"}', text=True)
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1007


async def test_msgpack_bytes_in_json_session(relay: Relay, bystander: Client) -> None:
    client = await Client.connect(relay.url)
    await client.send_raw(msgspec.msgpack.encode({"op": "ping"}))  # binary frame
    await _error(client, "bad_request")


async def test_json_text_in_msgpack_session(relay: Relay, bystander: Client) -> None:
    client = await Client.connect(relay.url, msgpack=True)
    await client.send_raw('{"op":"ping"}')
    await _error(client, "bad_request")
    await client.send_raw(b"\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
    await _error(client, "bad_request")
    await client.send_raw(msgspec.msgpack.encode({"op": "ping"}))
    await client.expect("pong")


async def test_frame_over_limit_closes_1009(start_relay: StartRelay, bystander: Client) -> None:
    relay = await start_relay(max_frame_bytes=4096)
    client = await Client.connect(relay.url)
    await client.send_raw('{"op":"pub","ch":"a","data":"' + "x" * 5000 + '"}')
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    # a frame under the limit on a fresh connection is fine
    client2 = await Client.connect(relay.url)
    await client2.pub("a", "x" * 3000, "ok")
    assert (await client2.expect("ack"))["id"] == "ok"


async def test_data_over_its_limit_is_too_large_and_the_connection_stays(
    start_relay: StartRelay,
) -> None:
    """The data limit sits below the frame limit, so `too_large` is an answer a client can
    get: the publish is refused, nothing is logged, and the connection goes on."""
    relay = await start_relay(max_frame_bytes=4096, max_data_bytes=2000)
    client = await Client.connect(relay.url)
    await client.sub("big")
    await client.pub("big", "x" * 1998, "fits")  # a JSON string: 1998 + 2 quotes = 2000 bytes
    frames = {f["op"]: f for f in [await client.recv(), await client.recv()]}
    assert frames["ack"]["id"] == "fits" and frames["msg"]["seq"] == 1
    await client.pub("big", "x" * 1999, "over")
    error = await _error(client, "too_large")
    assert error["id"] == "over" and "2000" in error["reason"]
    await client.pub("big", "after", "next")
    ack = await client.expect("ack")
    assert ack["id"] == "next" and ack["seq"] == 2  # the refused one used no seq


async def test_fragmented_message_is_reassembled(relay: Relay) -> None:
    client = await Client.connect(relay.url)
    await client.ws.send(iter(['{"op":"pub",', '"ch":"frag",', '"data":"ok","id":"f"}']))
    assert (await client.expect("ack"))["id"] == "f"


async def test_subscribing_past_the_limit(start_relay: StartRelay) -> None:
    relay = await start_relay(max_subscriptions=3)
    client = await Client.connect(relay.url)
    for i in range(3):
        await client.sub(f"room.{i}")
    await client.send({"op": "sub", "ch": "room.3"})
    frame = await _error(client, "forbidden")
    assert "limit" in str(frame["reason"])
    await client.sub("room.1")  # re-subscribing an existing one is idempotent, not a new one
    await client.send({"op": "unsub", "ch": "room.0"})
    await client.expect("unsubscribed")
    await client.sub("room.3")


async def test_sys_channels_need_admin(relay: Relay, bystander: Client) -> None:
    client = await Client.connect(relay.url)
    await client.pub("$sys.x", 1, "p")
    frame = await _error(client, "forbidden")
    assert frame["id"] == "p"
    await client.send({"op": "sub", "ch": "$sys.stats"})
    await _error(client, "forbidden")


async def test_unsub_unknown_channel(relay: Relay) -> None:
    client = await Client.connect(relay.url)
    await client.send({"op": "unsub", "ch": "never"})
    await _error(client, "not_subscribed")


async def test_internal_text_never_reaches_client(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception in the upgrade path gives a generic 500, not its message."""
    from core import listener

    def boom(*args: object) -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(listener, "_upgrade", boom)
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(relay.url, open_timeout=UNIT)
    assert info.value.response.status_code == 500
    assert b"secret" not in info.value.response.body


async def test_server_survives_garbage_flood(relay: Relay, bystander: Client) -> None:
    clients = await asyncio.gather(*(Client.connect(relay.url) for _ in range(5)))
    for c in clients:
        for text in ("{", "null", "[]", '{"op":1}', "\u0000"):
            await c.send_raw(text)
    for c in clients:
        for _ in range(5):
            await _error(c, "bad_request")


# --- auth ------------------------------------------------------------------------------------


async def _status(url: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, additional_headers=headers, open_timeout=UNIT)
    return info.value.response.status_code


async def test_jwt_auth(start_relay: StartRelay) -> None:
    relay = await start_relay(auth="jwt", jwt_secret=SECRET, admin_token=ADMIN_TOKEN)
    # (no token at all is upgraded for first-frame auth: tests/core/test_tokens.py)
    assert await _status(relay.url + "?token=not.a.jwt") == 401
    wrong = make_token("another-secret-that-is-also-32-bytes!", "eve", ["*"], ["*"])
    assert await _status(relay.url + "?token=" + wrong) == 401
    expired = make_token(SECRET, "eve", ["*"], ["*"], ttl_s=-60)
    assert await _status(relay.url + "?token=" + expired) == 401
    assert await _status(relay.url, {"Authorization": "Bearer " + expired}) == 401

    token = make_token(SECRET, "alice", ["room.*", "@*"], ["room.*"])
    alice = await Client.connect(relay.url, headers={"Authorization": f"Bearer {token}"})
    assert alice.welcome["user"] == "alice"
    await alice.pub("other.1", 1, "x")
    assert (await _error(alice, "forbidden"))["id"] == "x"
    await alice.send({"op": "sub", "ch": "other.1"})
    await _error(alice, "forbidden")
    await alice.sub("room.1")
    await alice.pub("room.1", {"ok": True}, "y")
    assert (await alice.expect("ack"))["id"] == "y"
    await alice.expect("msg")
    await alice.pub("$sys.x", 1)
    await _error(alice, "forbidden")

    admin = await Client.connect(relay.url, token=ADMIN_TOKEN)
    assert admin.welcome["user"] == "admin"
    await admin.sub("$sys.stats")
    stats = await admin.expect("msg", timeout=UNIT)
    assert stats["ch"] == "$sys.stats" and stats["data"]["connections"] >= 2


async def test_origin_allow_list(start_relay: StartRelay) -> None:
    relay = await start_relay(allowed_origins=("https://app.example",))
    assert await _status(relay.url, {"Origin": "https://evil.example"}) == 403
    ok = await Client.connect(relay.url, headers={"Origin": "https://app.example"})
    await ok.close()
    # No Origin: not a browser (a backend publisher); its token decides, not the list.
    backend = await Client.connect(relay.url)
    await backend.sub("room.1")
    await backend.close()


async def test_max_connections_503(start_relay: StartRelay) -> None:
    relay = await start_relay(max_connections=2)
    a = await Client.connect(relay.url)
    b = await Client.connect(relay.url)
    assert await _status(relay.url) == 503
    await a.close()
    await asyncio.wait_for(a.ws.wait_closed(), UNIT)

    async def third() -> Client:
        while True:
            try:
                return await Client.connect(relay.url)
            except websockets.InvalidStatus:
                await asyncio.sleep(0.02)

    c = await asyncio.wait_for(third(), UNIT)
    await b.close()
    await c.close()


async def test_unknown_subprotocol_is_refused(relay: Relay) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(
            relay.url, subprotocols=[Subprotocol("chat.v9")], open_timeout=UNIT
        )
    assert info.value.response.status_code == 400


# --- rate limits -----------------------------------------------------------------------------


async def test_rate_limit_then_abuse_close(start_relay: StartRelay, bystander: Client) -> None:
    relay = await start_relay(publish_rate=5, publish_burst=5, rate_abuse_limit=20)
    client = await Client.connect(relay.url)
    for i in range(10):
        await client.pub("rl", i, str(i))
    codes = []
    for _ in range(10):
        frame = await client.recv()
        codes.append(frame.get("code") or frame["op"])
    assert codes.count("ack") >= 5 and codes.count("rate_limited") >= 4
    # keep hammering: the connection is closed with 4429
    with pytest.raises(websockets.ConnectionClosed) as info:
        for i in range(200):
            await client.pub("rl", i)
        while True:
            await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 4429


async def test_nobody_publishes_into_server_channels(start_relay: StartRelay) -> None:
    relay = await start_relay(admin_token=ADMIN_TOKEN)
    admin = await Client.connect(relay.url, token=ADMIN_TOKEN)
    for channel in ("$sys.stats", "$sys.tail", "$sys.flow"):
        await admin.pub(channel, {"fake": True}, "x")
        frame = await _error(admin, "forbidden")
        assert frame["id"] == "x"
    await admin.pub("$sys.ops", "admins may use other $sys channels", "y")
    assert (await admin.expect("ack"))["id"] == "y"
