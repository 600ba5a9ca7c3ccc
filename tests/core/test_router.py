"""The router on its own terms (sessions over fake writers, a held log, no event loop):
seqs, durability before delivery, encode-once fan-out, history, forgetting channels."""

from __future__ import annotations

from common.durability import Encoding, HistoryLimits
from tests.core.world import World


def test_seqs_count_per_channel_from_one() -> None:
    world = World()
    pub = world.connect("p")
    for ch in ("a", "b", "a"):
        pub.send({"op": "pub", "ch": ch, "data": 0})
    assert [(e.channel, e.seq) for e in world.log.pending] == [("a", 1), ("b", 1), ("a", 2)]


def test_nothing_is_delivered_or_acked_before_the_log_says_durable() -> None:
    world = World()
    pub, sub = world.connect("p"), world.connect("s")
    sub.send({"op": "sub", "ch": "r"})
    pub.send({"op": "pub", "ch": "r", "data": 1, "id": 7})
    world.tick()
    assert pub.ops("ack") == [] and sub.ops("msg") == []
    world.log.release()
    world.tick()
    assert pub.ops("ack") == [{"op": "ack", "ch": "r", "seq": 1, "id": 7}]
    assert [m["data"] for m in sub.ops("msg")] == [1]


def test_fan_out_encodes_once_per_encoding() -> None:
    world = World()
    pub = world.connect("p")
    subs = [world.connect(f"s{i}") for i in range(3)]
    packed = world.connect("m", Encoding.MSGPACK)
    for peer in (*subs, packed):
        peer.send({"op": "sub", "ch": "r"})
    world.settle()
    for peer in (*subs, packed):
        peer.outbox.pause()  # keep the delivered chunks in the outboxes
    pub.send({"op": "pub", "ch": "r", "data": {"k": 1}})
    world.log.release()
    (first,) = subs[0].outbox.chunks
    assert all(peer.outbox.chunks[0] is first for peer in subs[1:])  # the same bytes object
    (other,) = packed.outbox.chunks
    assert other[0] == 0x82 and first[0] == 0x81  # binary frame for msgpack, text for JSON


def test_a_failed_batch_voids_its_seqs() -> None:
    world = World()
    pub = world.connect("p")
    pub.send({"op": "pub", "ch": "r", "data": 1, "id": 1})
    world.log.fail()
    pub.send({"op": "pub", "ch": "r", "data": 2, "id": 2})
    world.settle()
    assert [f["id"] for f in pub.ops("error")] == [1]
    assert pub.ops("ack") == [{"op": "ack", "ch": "r", "seq": 1, "id": 2}]  # seq 1 again


def test_since_replays_what_the_ring_still_holds() -> None:
    world = World(history=HistoryLimits(size=5))
    pub = world.connect("p")
    for i in range(7):
        pub.send({"op": "pub", "ch": "r", "data": i})
    world.settle()
    late = world.connect("late")
    late.send({"op": "sub", "ch": "r", "since": 3})
    world.settle()
    assert late.ops("subscribed") == [
        {"op": "subscribed", "ch": "r", "seq": 7, "epoch": world.router.epoch, "recovered": True}
    ]
    assert [m["seq"] for m in late.ops("msg")] == [4, 5, 6, 7]


def test_since_older_than_the_ring_is_not_recovered() -> None:
    world = World(history=HistoryLimits(size=5))
    pub = world.connect("p")
    for i in range(7):
        pub.send({"op": "pub", "ch": "r", "data": i})
    world.settle()
    late = world.connect("late")
    late.send({"op": "sub", "ch": "r", "since": 1})  # seq 2 fell out of the ring
    world.settle()
    assert late.ops("subscribed") == [
        {"op": "subscribed", "ch": "r", "seq": 7, "epoch": world.router.epoch, "recovered": False}
    ]
    assert late.ops("msg") == []


def test_a_channel_nobody_uses_is_forgotten() -> None:
    world = World()
    peer = world.connect("u")
    peer.send({"op": "sub", "ch": "ephemeral"})
    peer.send({"op": "unsub", "ch": "ephemeral"})
    assert "ephemeral" not in world.router.channels


def test_a_channel_with_history_is_kept_until_its_last_subscriber_goes() -> None:
    world = World()
    peer = world.connect("u")
    peer.send({"op": "pub", "ch": "kept", "data": 1})
    world.settle()
    peer.send({"op": "sub", "ch": "kept"})
    peer.send({"op": "unsub", "ch": "kept"})
    assert world.router.channels["kept"].last_seq == 1  # it has history: it stays
    peer.session.closed()
    assert "@u" not in world.router.channels


def test_disconnect_removes_every_subscription() -> None:
    world = World()
    peer = world.connect("u")
    for ch in ("a", "b", "c"):
        peer.send({"op": "sub", "ch": ch})
    assert world.router.subscription_count == 4  # + the @u inbox
    peer.session.closed()
    assert world.router.subscription_count == 0
