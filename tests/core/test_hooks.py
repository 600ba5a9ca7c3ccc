"""Application webhooks (core/hooks.py): presence with hold-back, batching, Standard Webhooks
signatures, retries with the same webhook-id, and a receiver that never slows the relay.

The hold-back, the queue and the retry schedule are sans-I/O and run on a hand-turned clock
(tests/core/world.py); the rest runs a real relay on loopback against a small HTTP receiver
(asyncio streams) on port 0. Every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core import compose
from core.config import FIELDS, ConfigError, env_name, load
from core.hooks import (
    CHANNEL_OCCUPIED,
    CHANNEL_VACATED,
    EVENT_TYPES,
    NODE_STARTED,
    USER_OFFLINE,
    USER_ONLINE,
    Counters,
    EventQueue,
    Hooks,
    Presence,
    RetryPolicy,
    encode_batch,
    new_batch,
    sign,
    signing_key,
    verify,
)
from core.server import Server
from tests.core.world import FakeLoop, World
from tests.helpers import (
    UNIT,
    Client,
    HttpReceiver,
    Relay,
    free_port,
    http_get,
    relay_config,
    wait_for,
)

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


# --- an independent signature check (hmac + base64, nothing from core.hooks) ---------------


def independently_signed(headers: dict[str, str], body: bytes, key: bytes = KEY) -> bool:
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    mac = hmac.new(key, msg_id.encode() + b"." + stamp.encode() + b"." + body, hashlib.sha256)
    expected = "v1," + base64.b64encode(mac.digest()).decode()
    return expected in headers["webhook-signature"].split()


# --- sans-I/O: presence on a fake clock ---------------------------------------------------


@dataclass
class Recorded:
    type: str
    ts: float
    data: dict[str, str]


class PresenceWorld:
    """A router world whose occupancy and connections feed a `Presence` on the fake loop."""

    def __init__(self, hold_s: float = 5.0) -> None:
        self.world = World()
        self.loop: FakeLoop = self.world.loop
        self.events: list[Recorded] = []
        self.presence = Presence(
            hold_s,
            lambda kind, ts, data: self.events.append(Recorded(kind, ts, data)),
            clock=lambda: self.loop.time,
            wall=self.loop.wall,
            later=self.loop.call_later,
        )
        self.world.router.occupancy = self.presence.channel

    def types(self, kind: str | None = None) -> list[tuple[str, str]]:
        return [
            (e.type, next(iter(e.data.values())))
            for e in self.events
            if kind is None or e.type.startswith(kind)
        ]


def test_a_resubscribe_within_the_hold_cancels_the_vacated_event() -> None:
    pw = PresenceWorld(hold_s=5.0)
    peer = pw.world.connect("alice")
    peer.send({"op": "sub", "ch": "room.1"})
    peer.send({"op": "unsub", "ch": "room.1"})
    pw.loop.advance(2.0)
    peer.send({"op": "sub", "ch": "room.1"})
    pw.loop.advance(60.0)
    assert pw.types() == [(CHANNEL_OCCUPIED, "room.1")]
    assert pw.presence.cancelled == 1 and pw.presence.held == 0


def test_vacated_comes_once_after_the_hold_with_the_time_it_happened() -> None:
    pw = PresenceWorld(hold_s=5.0)
    peer = pw.world.connect("alice")
    peer.send({"op": "sub", "ch": "room.1"})
    left_at = pw.loop.wall()
    peer.send({"op": "unsub", "ch": "room.1"})
    pw.loop.advance(4.9)
    assert pw.types() == [(CHANNEL_OCCUPIED, "room.1")]
    assert pw.presence.held == 1
    pw.loop.advance(0.2)
    assert pw.types() == [(CHANNEL_OCCUPIED, "room.1"), (CHANNEL_VACATED, "room.1")]
    assert pw.events[-1].ts == left_at
    pw.loop.advance(60.0)
    assert len(pw.events) == 2


def test_only_the_first_subscriber_and_the_last_one_leaving_count() -> None:
    pw = PresenceWorld(hold_s=1.0)
    a, b = pw.world.connect("a"), pw.world.connect("b")
    a.send({"op": "sub", "ch": "r"})
    b.send({"op": "sub", "ch": "r"})
    a.send({"op": "sub", "ch": "r"})  # idempotent re-sub: 2 -> 1 -> 2 occupants, no event
    a.send({"op": "unsub", "ch": "r"})
    pw.loop.advance(5.0)
    assert pw.types() == [(CHANNEL_OCCUPIED, "r")]
    b.session.closed()  # a disconnect drops its subscriptions
    pw.loop.advance(5.0)
    assert pw.types() == [(CHANNEL_OCCUPIED, "r"), (CHANNEL_VACATED, "r")]


def test_inboxes_and_sys_channels_never_report() -> None:
    pw = PresenceWorld(hold_s=0.0)
    admin = pw.world.connect("root", admin=True)
    alice = pw.world.connect("alice")  # subscribed to @alice on connect
    admin.send({"op": "sub", "ch": "$sys.stats"})
    admin.send({"op": "sub", "ch": "@alice"})
    alice.session.closed()
    admin.session.closed()
    pw.loop.advance(1.0)
    assert pw.events == []


def test_a_since_replay_counts_from_its_sub_and_catching_up_is_no_flap() -> None:
    pw = PresenceWorld(hold_s=0.0)  # no hold: every transition would show
    pub = pw.world.connect("p")
    for i in range(3):
        pub.send({"op": "pub", "ch": "r", "data": i})
    pw.world.settle()
    peer = pw.world.connect("s")
    peer.send({"op": "sub", "ch": "r", "since": 0})  # replays 1..3, then attaches
    pw.world.settle()
    assert [m["seq"] for m in peer.ops("msg")] == [1, 2, 3]
    assert pw.types() == [(CHANNEL_OCCUPIED, "r")]
    peer.send({"op": "unsub", "ch": "r"})
    assert pw.types() == [(CHANNEL_OCCUPIED, "r"), (CHANNEL_VACATED, "r")]


def test_an_unsub_during_a_replay_vacates_once() -> None:
    pw = PresenceWorld(hold_s=0.0)
    pub = pw.world.connect("p")
    pub.send({"op": "pub", "ch": "r", "data": 1})
    pw.world.settle()
    peer = pw.world.connect("s")
    peer.outbox.pause()  # the replay cannot finish: the session stays a replayer
    peer.send({"op": "sub", "ch": "r", "since": 0})
    peer.send({"op": "unsub", "ch": "r"})
    assert pw.types() == [(CHANNEL_OCCUPIED, "r"), (CHANNEL_VACATED, "r")]


def test_users_are_online_from_the_first_connection_to_the_last() -> None:
    loop = FakeLoop()
    events: list[tuple[str, str]] = []
    presence = Presence(
        3.0,
        lambda kind, _ts, data: events.append((kind, data["user"])),
        clock=lambda: loop.time,
        wall=loop.wall,
        later=loop.call_later,
    )
    presence.user_connected("alice")
    presence.user_connected("alice")
    presence.user_connected("bob")
    presence.user_disconnected("alice")
    loop.advance(10.0)
    assert events == [(USER_ONLINE, "alice"), (USER_ONLINE, "bob")]
    presence.user_disconnected("alice")  # the last one: held
    loop.advance(1.0)
    presence.user_connected("alice")  # back within the hold: nothing
    presence.user_disconnected("alice")
    presence.user_disconnected("bob")
    assert presence.users_online == 0 and presence.held == 2
    loop.advance(3.0)
    assert events[2:] == [(USER_OFFLINE, "alice"), (USER_OFFLINE, "bob")]
    loop.advance(10.0)
    assert len(events) == 4


def test_flush_lets_every_held_event_out_now() -> None:
    loop = FakeLoop()
    events: list[str] = []
    presence = Presence(
        60.0,
        lambda kind, _ts, _data: events.append(kind),
        clock=lambda: loop.time,
        wall=loop.wall,
        later=loop.call_later,
    )
    presence.user_connected("a")
    presence.channel("r", True)
    presence.channel("r", False)
    presence.user_disconnected("a")
    presence.flush()
    assert events == [USER_ONLINE, CHANNEL_OCCUPIED, CHANNEL_VACATED, USER_OFFLINE]
    loop.advance(120.0)  # the timer was cancelled: nothing twice
    assert len(events) == 4


# --- sans-I/O: the queue, batches and the retry schedule ----------------------------------


def test_a_batch_is_ready_at_batch_max_or_after_the_linger() -> None:
    now = [100.0]
    woken: list[int] = []
    counters = Counters()
    queue = EventQueue(5, 3, 0.1, lambda: now[0], counters, lambda: woken.append(len(queue)))
    assert queue.wait_s(now[0]) is None
    queue.put(USER_ONLINE, 1.0, {"user": "a"})
    assert woken == [1]
    assert queue.wait_s(now[0]) == pytest.approx(0.1)
    now[0] += 0.05
    queue.put(USER_ONLINE, 2.0, {"user": "b"})
    assert queue.wait_s(now[0]) == pytest.approx(0.05)
    now[0] += 0.05
    assert queue.wait_s(now[0]) == 0.0
    assert [e.data["user"] for e in queue.take()] == ["a", "b"]
    for user in "cdefgh":
        queue.put(USER_ONLINE, 3.0, {"user": user})
    assert woken == [1, 1, 3]  # the first one, and a full batch
    assert queue.wait_s(now[0]) == 0.0  # full: no linger
    assert [e.data["user"] for e in queue.take()] == ["c", "d", "e"]
    assert len(queue) == 2 and counters.dropped["queue_full"] == 1  # "h" found it full
    queue.closed = True
    assert not queue.put(USER_ONLINE, 4.0, {"user": "i"})
    assert counters.dropped["shutdown"] == 1


def test_a_batch_body_is_a_json_list_of_standard_payloads() -> None:
    queue = EventQueue(10, 10, 0.1, lambda: 0.0, Counters())
    queue.put(CHANNEL_OCCUPIED, 1795959335.357, {"channel": "room.1"})
    queue.put(NODE_STARTED, 1795959335.0, {"epoch": "ab12"})
    body = json.loads(encode_batch(queue.take(), "n1"))
    assert body == [
        {
            "type": "channel.occupied",
            "timestamp": "2026-11-29T13:35:35.357Z",
            "data": {"channel": "room.1", "node": "n1"},
        },
        {
            "type": "ferry.started",
            "timestamp": "2026-11-29T13:35:35.000Z",
            "data": {"epoch": "ab12", "node": "n1"},
        },
    ]
    batch = new_batch([], "n1")
    assert batch.id.startswith("msg_") and "." not in batch.id


def test_the_retry_schedule_backs_off_for_five_minutes() -> None:
    policy = RetryPolicy()
    elapsed = 0.0
    waits: list[float] = []
    while (wait := policy.delay(len(waits) + 1, elapsed)) is not None:
        waits.append(wait)
        elapsed += wait
    # rand 0.5: no jitter; ten attempts, at 0, 1, 3, 7, 15, 31, 63, 123, 183 and 243 s
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert elapsed == 243 and elapsed + 60 > 300
    low, high = policy.delay(3, 0.0, rand=0.0), policy.delay(3, 0.0, rand=0.999999)
    assert low is not None and high is not None and 3.2 <= low < 4 < high <= 4.8
    assert policy.delay(1, 0.0, retry_after=30.0) == 30.0  # the receiver asks for longer
    assert policy.delay(1, 0.0, retry_after=3600.0) == 60.0  # but never past the cap
    assert policy.delay(1, 299.5) is None


# --- the signature ---------------------------------------------------------------------------


def test_sign_matches_the_published_standard_webhooks_vector() -> None:
    # The Standard Webhooks reference libraries' test vector.
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _signed(body: bytes, at: float, secret: str = SECRET) -> dict[str, str]:
    stamp = int(at)
    return {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(stamp),
        "Webhook-Signature": sign(signing_key(secret), "msg_1", stamp, body),
    }


def test_verify_accepts_a_good_signature_and_refuses_tampering_and_stale_ones() -> None:
    body = b'[{"type":"user.online"}]'
    now = time.time()
    headers = _signed(body, now)
    assert verify(SECRET, headers, body)
    assert independently_signed({k.lower(): v for k, v in headers.items()}, body)
    assert not verify(SECRET, headers, body.replace(b"online", b"offline"))  # tampered body
    assert not verify(SECRET, {**headers, "Webhook-Id": "msg_2"}, body)  # tampered id
    assert not verify("whsec_" + base64.b64encode(b"x" * 32).decode(), headers, body)
    stale = _signed(body, now - 301)  # older than 5 minutes
    assert not verify(SECRET, stale, body)
    assert verify(SECRET, stale, body, now=now - 300)
    assert not verify(SECRET, _signed(body, now + 301), body)  # from the future
    assert not verify(SECRET, {**headers, "Webhook-Timestamp": "soon"}, body)
    assert not verify(SECRET, {}, body)


def test_verify_takes_any_matching_signature_of_a_list_and_plain_secrets() -> None:
    body = b"[]"
    headers = _signed(body, time.time())
    headers["Webhook-Signature"] = "v1,bm9wZQ== " + headers["Webhook-Signature"]
    assert verify(SECRET, headers, body)
    plain = "p" * 32
    assert signing_key(plain) == plain.encode()
    assert verify(plain, _signed(body, time.time(), plain), body)
    with pytest.raises(ValueError):
        signing_key("whsec_not base64!")


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("", "needs hooks_secret"),
        ("short", "must be at least 32 bytes"),
        ("whsec_!!!", "not base64"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "16-byte key"),
    ],
)
def test_hooks_need_a_good_secret(secret: str, message: str) -> None:
    env = {"FERRY_HOOKS_URL": "http://127.0.0.1:9/hooks", "FERRY_HOOKS_SECRET": secret}
    with pytest.raises(ConfigError, match=message):
        load({}, env)
    with pytest.raises(ConfigError, match=message):
        compose.build(
            replace(relay_config(), hooks_url=env["FERRY_HOOKS_URL"], hooks_secret=secret)
        )


def test_hooks_settings_load_and_are_off_without_a_url() -> None:
    config = load(
        {},
        {
            "FERRY_HOOKS_URL": "https://backend.example/ferry",
            "FERRY_HOOKS_SECRET": SECRET,
            "FERRY_HOOKS_HOLD_S": "2.5",
        },
    )
    assert (config.hooks_hold_s, config.hooks_queue_size, config.hooks_retry_s) == (
        2.5,
        10_000,
        300.0,
    )
    with pytest.raises(ConfigError, match="hooks_url"):
        load({}, {"FERRY_HOOKS_URL": "backend:8000", "FERRY_HOOKS_SECRET": SECRET})
    assert not any(s.name == "hooks" for s in compose.build(relay_config()).services)
    assert compose.build(relay_config()).extensions == []


# --- a receiver on loopback ------------------------------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)
        return events


class Receiver(HttpReceiver):
    """An HTTP/1.1 webhook receiver on 127.0.0.1:0. `statuses` are answered in turn (200
    once they run out); with `hang` it reads the request and never answers."""

    def __init__(self, statuses: list[int] | None = None, *, hang: bool = False) -> None:
        super().__init__()
        self.statuses = list(statuses or [])
        self.hang = hang
        self.deliveries: list[Delivery] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ferry-hooks"

    def events(self) -> list[dict[str, Any]]:
        """Every event accepted (2xx) once, in order: repeated webhook-ids skipped, as a
        receiver should."""
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        for delivery in self.accepted:
            if delivery.headers["webhook-id"] not in seen:
                seen.add(delivery.headers["webhook-id"])
                out.extend(delivery.events)
        return out

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.headers.get(":status") == "200"]

    def types(self, prefix: str = "") -> list[tuple[str, str]]:
        return [
            (e["type"], e["data"].get("channel") or e["data"].get("user") or "")
            for e in self.events()
            if e["type"].startswith(prefix)
        ]

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> bytes | None:
        assert (method, target) == ("POST", "/ferry-hooks"), (method, target)
        status = 0 if self.hang else (self.statuses.pop(0) if self.statuses else 200)
        headers[":status"] = str(status)
        self.deliveries.append(Delivery(headers, body))
        if self.hang:
            return None
        return f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


def _hooks_of(server: Server) -> Hooks:
    (hooks,) = [s for s in server.services if isinstance(s, Hooks)]
    return hooks


def _fast_retries() -> RetryPolicy:
    return RetryPolicy(window_s=UNIT * 4, first_s=0.01, cap_s=0.05)


async def test_a_batch_is_retried_after_500s_with_the_same_webhook_id() -> None:
    receiver = Receiver([500, 503])
    await receiver.start()
    hooks = Hooks(receiver.url, SECRET, "n1", retry=_fast_retries())
    try:
        hooks.user_connected("alice")
        hooks.user_connected("bob")
        await hooks.start()
        await wait_for(lambda: len(receiver.accepted) == 1, what="the third attempt accepted")
        attempts = receiver.deliveries
        assert [d.headers[":status"] for d in attempts] == ["500", "503", "200"]
        assert len({d.headers["webhook-id"] for d in attempts}) == 1  # at-least-once: one id
        assert {d.body for d in attempts} == {attempts[0].body}
        for delivery in attempts:  # each attempt signed anew (its own timestamp), all valid
            assert independently_signed(delivery.headers, delivery.body)
            assert verify(SECRET, delivery.headers, delivery.body)
        assert receiver.types() == [(USER_ONLINE, "alice"), (USER_ONLINE, "bob")]
        await wait_for(lambda: hooks.counters.sent == 2, what="counted as sent")
        assert (hooks.counters.failed_attempts, hooks.counters.batches) == (2, 1)
        assert hooks.counters.last_error == "HTTP 503"
    finally:
        await hooks.stop()
        await receiver.close()


async def test_a_4xx_is_a_final_no_and_the_next_batch_goes_on() -> None:
    receiver = Receiver([400])
    await receiver.start()
    hooks = Hooks(receiver.url, SECRET, "n1", retry=_fast_retries(), batch_max=1)
    try:
        hooks.user_connected("a")
        hooks.user_connected("b")
        await hooks.start()
        await wait_for(lambda: hooks.counters.sent == 1, what="the second batch sent")
        assert hooks.counters.dropped["gave_up"] == 1
        assert [d.headers[":status"] for d in receiver.deliveries] == ["400", "200"]
        assert receiver.types() == [(USER_ONLINE, "b")]
    finally:
        await hooks.stop()
        await receiver.close()


async def test_events_arrive_batched_in_one_post() -> None:
    receiver = Receiver()
    await receiver.start()
    hooks = Hooks(receiver.url, SECRET, "n1", batch_max=50)
    try:
        await hooks.start()
        for i in range(120):
            hooks.user_connected(f"u{i}")
        await wait_for(lambda: hooks.counters.sent == 120, what="all 120 sent")
        sizes = [len(d.events) for d in receiver.accepted]
        assert sum(sizes) == 120 and max(sizes) == 50 and len(sizes) <= 5
        assert [user for _, user in receiver.types()] == [f"u{i}" for i in range(120)]
    finally:
        await hooks.stop()
        await receiver.close()


# --- end to end: a relay, its clients and the receiver ----------------------------------------


async def _relay(start: Callable[..., Awaitable[Relay]], url: str, **overrides: Any) -> Relay:
    return await start(hooks_url=url, hooks_secret=SECRET, **overrides)


async def test_a_relay_posts_presence_with_the_hold_back(
    start_relay: Callable[..., Awaitable[Relay]], receiver: Receiver
) -> None:
    hold = UNIT / 2  # far longer than an unsub + sub round trip, short enough to wait out
    relay = await _relay(start_relay, receiver.url, hooks_hold_s=hold)
    hooks = _hooks_of(relay.server)
    alice = await Client.connect(relay.url, user="alice")
    await alice.sub("room.1")
    await alice.send({"op": "unsub", "ch": "room.1"})
    await alice.expect("unsubscribed")
    await alice.sub("room.1")  # back within the hold: no vacated, no second occupied
    await wait_for(lambda: hooks.presence.cancelled == 1, what="the held vacated cancelled")
    await wait_for(lambda: len(receiver.events()) == 3, what="started, online, occupied")
    assert receiver.types() == [
        (NODE_STARTED, ""),
        (USER_ONLINE, "alice"),
        (CHANNEL_OCCUPIED, "room.1"),
    ]
    started = receiver.events()[0]["data"]
    assert started == {"epoch": relay.hub.router.epoch, "node": "test-node"}
    await alice.send({"op": "unsub", "ch": "room.1"})
    await alice.expect("unsubscribed")
    await alice.close()
    await wait_for(lambda: hooks.counters.sent == 5, UNIT * 3, "vacated and offline sent")
    # held in the order they happened: the unsub was answered before the close
    assert receiver.types()[3:] == [(CHANNEL_VACATED, "room.1"), (USER_OFFLINE, "alice")]
    for delivery in receiver.deliveries:
        assert independently_signed(delivery.headers, delivery.body)
    assert all("@" not in name for _, name in receiver.types(prefix="channel."))
    _, metrics = await asyncio.to_thread(http_get, relay.http + "/metrics")
    text = metrics.decode()
    assert "ferry_hooks_events_sent_total 5.0" in text
    assert 'ferry_hooks_events_dropped_total{reason="queue_full"} 0.0' in text
    section = relay.server._extra_stats()["hooks"]
    assert (section.sent, section.queued, section.held) == (5, 0, 0)
    assert relay.server._extra_stats()["services"]["hooks"]["running"] is True


async def test_shutdown_sends_the_held_events_at_once(receiver: Receiver, tmp_path: Path) -> None:
    server = compose.build(
        relay_config(tmp_path, hooks_url=receiver.url, hooks_secret=SECRET, hooks_hold_s=3600.0)
    )
    await server.start()
    try:
        client = await Client.connect(f"ws://127.0.0.1:{server.port}/ws", user="bob")
        await client.sub("news")
        await client.close()
        await wait_for(lambda: _hooks_of(server).presence.held == 2, what="two events held")
    finally:
        await server.shutdown()
    assert receiver.types()[-2:] in (
        [(CHANNEL_VACATED, "news"), (USER_OFFLINE, "bob")],
        [(USER_OFFLINE, "bob"), (CHANNEL_VACATED, "news")],
    )


async def _publish_round_trip(relay: Relay) -> None:
    """A subscriber and a publisher on a fresh connection each: pub -> ack and msg."""
    sub = await Client.connect(relay.url, user="reader")
    pub = await Client.connect(relay.url, user="writer")
    await sub.sub("live")
    await pub.pub("live", {"n": 1}, msg_id="p1")
    ack = await pub.expect("ack")
    msg = await sub.expect("msg")
    assert (ack["ch"], msg["data"]) == ("live", {"n": 1})
    await sub.close()
    await pub.close()


@pytest.mark.parametrize("dead", ["refused", "silent"])
async def test_a_dead_receiver_never_slows_the_relay_and_the_queue_drops(
    start_relay: Callable[..., Awaitable[Relay]], dead: str
) -> None:
    silent = Receiver(hang=True)
    await silent.start()
    url = silent.url if dead == "silent" else f"http://127.0.0.1:{free_port()}/ferry-hooks"
    try:
        relay = await _relay(
            start_relay,
            url,
            hooks_hold_s=0.0,
            hooks_queue_size=5,
            hooks_batch_max=2,
            hooks_timeout_s=UNIT * 2,
        )
        hooks = _hooks_of(relay.server)
        if dead == "silent":
            await wait_for(lambda: len(silent.deliveries) == 1, what="the first POST hanging")
        else:
            await wait_for(lambda: hooks.counters.failed_attempts >= 1, what="a refused POST")
        client = await Client.connect(relay.url, user="many")
        for i in range(20):
            await client.sub(f"room.{i}")
        await _publish_round_trip(relay)
        await wait_for(lambda: hooks.counters.dropped["queue_full"] > 0, what="drops")
        assert len(hooks.queue) == 5  # bounded
        assert hooks.counters.sent == 0
        stats = relay.server._extra_stats()["hooks"]
        assert stats.queued == 5 and stats.dropped["queue_full"] > 0
        _, metrics = await asyncio.to_thread(http_get, relay.http + "/metrics")
        assert "ferry_hooks_queue_depth 5.0" in metrics.decode()
        await client.close()
    finally:
        await silent.close()


def test_the_stats_section_is_left_out_without_hooks_and_typed_with_them() -> None:
    hooks = Hooks("http://127.0.0.1:9/", SECRET, "n1")
    section = hooks.stats_section()["hooks"]
    wire = json.loads(msgspec.json.encode(section))
    assert wire == {
        "queued": 0,
        "held": 0,
        "in_flight": 0,
        "sent": 0,
        "batches": 0,
        "failed_attempts": 0,
        "dropped": {"queue_full": 0, "gave_up": 0, "shutdown": 0},
        "last_error": None,
    }


# --- the receiver's docs -------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def test_the_verify_code_in_the_docs_checks_what_ferry_signs() -> None:
    """docs/webhooks.md's Python block is what a receiver copies: it must agree with
    core.hooks (a good request passes, a tampered or stale one does not)."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    (code,) = [block for block in blocks if "def verify(" in block]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    documented = namespace["verify"]
    body = b'[{"type":"channel.vacated"}]'
    now = time.time()
    for secret in (SECRET, "q" * 40):
        headers = _signed(body, now, secret)
        assert documented(secret, headers, body) and verify(secret, headers, body)
        assert not documented(secret, headers, body + b" ")
        assert not documented(secret, _signed(body, now - 400, secret), body)


def test_the_docs_list_every_hooks_setting_and_event() -> None:
    text = DOCS.read_text()
    for name in FIELDS:
        if name.startswith("hooks_"):
            assert f"`{env_name(name)}`" in text, name
    for kind in EVENT_TYPES:
        assert f"`{kind}`" in text, kind
