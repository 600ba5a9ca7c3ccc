"""Idempotent publish (`pub` with `mid`), epochs and what `welcome` tells the client, in
the sans-I/O world: a duplicate is acked with the original seq and `dup`, logged and
delivered never; a pending original answers its duplicates when it becomes durable."""

from __future__ import annotations

from common.durability import HistoryLimits, RecoveredState
from core.dedupe import DedupeIndex
from tests.core.world import World


def _pub(ch: str, data: object, id: str, mid: str | None = "m-1") -> dict[str, object]:
    frame: dict[str, object] = {"op": "pub", "ch": ch, "data": data, "id": id}
    if mid is not None:
        frame["mid"] = mid
    return frame


def test_a_retried_mid_is_acked_dup_with_the_original_seq_and_not_delivered_again() -> None:
    world = World()
    reader = world.connect("r")
    reader.send({"op": "sub", "ch": "room"})
    pub = world.connect("alice")
    pub.send(_pub("room", {"n": 0}, "c-0", mid="other"))
    pub.send(_pub("room", {"n": 1}, "c-1"))
    world.settle()
    pub.send(_pub("room", {"n": "ignored"}, "c-2"))  # the retry: same mid, other id and data
    world.settle()
    acks = pub.ops("ack")
    assert acks == [
        {"op": "ack", "ch": "room", "seq": 1, "id": "c-0"},
        {"op": "ack", "ch": "room", "seq": 2, "id": "c-1"},
        {"op": "ack", "ch": "room", "seq": 2, "id": "c-2", "dup": True},
    ]
    assert [(m["seq"], m["data"]) for m in reader.ops("msg")] == [(1, {"n": 0}), (2, {"n": 1})]
    assert world.router.counters.msgs_in == 2 and world.router.counters.duplicates == 1
    room = world.router.get("room")
    assert room is not None and room.last_seq == 2


def test_a_duplicate_of_a_pending_original_is_acked_when_its_batch_is_durable() -> None:
    world = World()
    pub = world.connect("alice")
    pub.send(_pub("room", 1, "c-1"))
    pub.send(_pub("room", 1, "c-2"))  # retried before the first was acked
    world.tick()
    assert pub.ops("ack") == [] and len(world.log.pending) == 1  # one record only
    assert pub.session.inflight == 2  # both are owed an answer (a close waits for them)
    world.settle()
    assert pub.ops("ack") == [
        {"op": "ack", "ch": "room", "seq": 1, "id": "c-2", "dup": True},
        {"op": "ack", "ch": "room", "seq": 1, "id": "c-1"},
    ]
    assert pub.session.inflight == 0


def test_when_the_originals_write_fails_its_duplicates_get_unavailable_too() -> None:
    world = World()
    pub = world.connect("alice")
    pub.send(_pub("room", 1, "c-1"))
    pub.send(_pub("room", 1, "c-2"))
    world.log.fail()
    world.tick()
    errors = pub.ops("error")
    assert [(e["code"], e["id"]) for e in errors] == [
        ("unavailable", "c-2"),
        ("unavailable", "c-1"),
    ]
    assert pub.ops("ack") == [] and pub.session.inflight == 0
    assert len(world.router.dedupe) == 0  # forgotten: the retry is not a duplicate of nothing


def test_the_same_mid_from_another_user_or_on_another_channel_is_a_new_message() -> None:
    world = World()
    alice, bob = world.connect("alice"), world.connect("bob")
    alice.send(_pub("room", 1, "a"))
    bob.send(_pub("room", 1, "b"))
    alice.send(_pub("hall", 1, "a2"))
    world.settle()
    assert [(a["ch"], a["seq"], a.get("dup")) for a in alice.ops("ack") + bob.ops("ack")] == [
        ("room", 1, None), ("hall", 1, None), ("room", 2, None),
    ]  # fmt: skip


def test_without_mid_a_reused_id_is_only_a_correlation_id() -> None:
    world = World()
    pub = world.connect("alice")
    pub.send(_pub("room", 1, "dash-1", mid=None))
    pub.send(_pub("room", 1, "dash-1", mid=None))
    world.settle()
    assert [a["seq"] for a in pub.ops("ack")] == [1, 2]
    assert len(world.router.dedupe) == 0


def test_a_mid_is_remembered_for_the_window_only() -> None:
    world = World(dedupe=(10.0, 1000))
    pub = world.connect("alice")
    pub.send(_pub("room", 1, "c-1"))
    world.settle()
    world.loop.advance(9.0)
    pub.send(_pub("room", 1, "c-2"))
    world.loop.advance(2.0)  # 11 s after the original
    pub.send(_pub("room", 1, "c-3"))
    world.settle()
    assert [(a["seq"], a.get("dup")) for a in pub.ops("ack")] == [(1, None), (1, True), (2, None)]


def test_past_the_entry_cap_the_oldest_mid_is_evicted_and_counted() -> None:
    world = World(dedupe=(120.0, 2))
    pub = world.connect("alice")
    for i in range(3):
        pub.send(_pub("room", i, f"c-{i}", mid=f"m-{i}"))
    world.settle()
    dedupe = world.router.dedupe
    assert len(dedupe) == 2 and dedupe.evictions == 1
    pub.send(_pub("room", 0, "again-0", mid="m-0"))  # forgotten early: a new message
    pub.send(_pub("room", 2, "again-2", mid="m-2"))  # still remembered
    world.settle()
    assert [(a["id"], a["seq"], a.get("dup")) for a in pub.ops("ack")][3:] == [
        ("again-2", 3, True),
        ("again-0", 4, None),
    ]


def test_pending_mids_are_not_evicted_by_the_cap() -> None:
    index = DedupeIndex(120.0, 1, lambda: 1000.0)
    index.add(("u", "c", "a"), 1, 1_000_000)
    index.add(("u", "c", "b"), 2, 1_000_000)  # over the cap, but "a" is still pending
    assert len(index) == 2 and index.evictions == 0
    index.durable(("u", "c", "a"))
    index.add(("u", "c", "d"), 3, 1_000_000)
    assert index.lookup(("u", "c", "a")) is None and index.evictions == 1


def test_restored_mids_make_a_retry_after_a_restart_a_duplicate() -> None:
    world = World()
    now_ms = int(world.loop.wall() * 1000)
    world.router.restore(
        RecoveredState(
            heads={"room": 7},
            mids=[
                ("alice", "room", "old", 3, now_ms - 200_000),  # outside the 120 s window
                ("alice", "room", "m-1", 7, now_ms - 5_000),
            ],
            epoch="00000000000000aa",
        )
    )
    pub = world.connect("alice")
    pub.send(_pub("room", 1, "retry", mid="m-1"))
    pub.send(_pub("room", 1, "new", mid="old"))
    world.settle()
    assert [(a["id"], a["seq"], a.get("dup")) for a in pub.ops("ack")] == [
        ("retry", 7, True),
        ("new", 8, None),
    ]


def test_a_bad_mid_is_a_bad_request() -> None:
    world = World()
    pub = world.connect("alice")
    pub.send(_pub("room", 1, "empty", mid=""))
    pub.send(_pub("room", 1, "long", mid="x" * 129))
    pub.send({"op": "pub", "ch": "room", "data": 1, "id": "int", "mid": 5})
    world.settle()
    assert [(e["code"], e.get("id")) for e in pub.ops("error")] == [
        ("bad_request", None),
        ("bad_request", None),
        ("bad_request", None),
    ]
    assert pub.ops("ack") == []


def test_welcome_carries_the_epoch_the_client_limits_and_the_inbox_head() -> None:
    world = World(max_subscriptions=7, publish_rate=50.0, publish_burst=60)
    world.router.restore(RecoveredState(heads={"@bob": 4}, epoch="00000000000000bb"))
    bob = world.connect("bob")
    world.tick()
    welcome = bob.frames()[0]
    assert welcome["op"] == "welcome" and welcome["epoch"] == "00000000000000bb"
    assert welcome["inbox"] == {"ch": "@bob", "seq": 4}
    limits = welcome["limits"]
    assert limits["max_subscriptions"] == 7 and limits["publish_rate"] == 50.0
    assert limits["publish_burst"] == 60 and limits["dedupe_window_s"] == 120.0
    assert set(limits) == {
        "max_frame_bytes", "max_data_bytes", "publish_rate", "publish_burst",
        "max_subscriptions", "history_size", "dedupe_window_s", "idle_timeout_s",
    }  # fmt: skip


def test_direct_messages_sent_while_offline_are_recovered_from_the_inbox_head() -> None:
    world = World()
    bob = world.connect("bob")
    world.tick()
    last = bob.frames()[0]["inbox"]["seq"]
    epoch = bob.frames()[0]["epoch"]
    bob.session.closed()
    alice = world.connect("alice")
    for i in range(3):
        alice.send({"op": "pub", "ch": "@bob", "data": i})
    world.settle()
    again = world.connect("bob")
    world.tick()
    assert again.frames()[0]["inbox"] == {"ch": "@bob", "seq": 3}
    again.send({"op": "sub", "ch": "@bob", "since": last, "epoch": epoch})
    world.settle()
    assert again.ops("subscribed")[0]["recovered"] is True
    assert [m["data"] for m in again.ops("msg")] == [0, 1, 2]


def test_since_with_another_epoch_is_not_recovered_and_replays_nothing() -> None:
    world = World(history=HistoryLimits(size=10))
    pub = world.connect("p")
    for i in range(3):
        pub.send({"op": "pub", "ch": "r", "data": i})
    world.settle()
    epoch = world.router.epoch
    same, other = world.connect("a"), world.connect("b")
    same.send({"op": "sub", "ch": "r", "since": 1, "epoch": epoch})
    other.send({"op": "sub", "ch": "r", "since": 1, "epoch": "ffffffffffffffff"})
    world.settle()
    assert same.ops("subscribed")[0]["recovered"] is True
    assert [m["seq"] for m in same.ops("msg")] == [2, 3]
    assert other.ops("subscribed")[0] == {
        "op": "subscribed", "ch": "r", "seq": 3, "epoch": epoch, "recovered": False
    }  # fmt: skip
    assert other.ops("msg") == []
    pub.send({"op": "pub", "ch": "r", "data": 3})
    world.settle()
    assert [m["seq"] for m in other.ops("msg")] == [4]  # live from the new head on


def test_sys_channels_have_the_process_boot_epoch() -> None:
    world = World()
    world.router.restore(RecoveredState(epoch="00000000000000cc"))
    admin = world.connect("admin", admin=True)
    admin.send({"op": "sub", "ch": "$sys.stats"})
    admin.send({"op": "sub", "ch": "room"})
    world.settle()
    subscribed = {f["ch"]: f["epoch"] for f in admin.ops("subscribed")}
    assert subscribed["room"] == "00000000000000cc"
    assert subscribed["$sys.stats"] == world.router.boot_epoch != "00000000000000cc"
