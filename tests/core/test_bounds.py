"""Bounded state: channel cardinality, history bytes, `since` replay pacing and edges
(sans-I/O: tests/core/world.py)."""

from __future__ import annotations

from common.durability import Encoding, HistoryLimits, entry_bytes
from tests.core.world import World

J, M = Encoding.JSON, Encoding.MSGPACK


def test_node_channel_bound_forgets_idle_channels_first() -> None:
    world = World(history=HistoryLimits(size=10, max_channels=50))
    reader = world.connect("reader")
    reader.send({"op": "sub", "ch": "kept"})  # has a subscriber: never forgotten
    publisher = world.connect("flooder")
    for i in range(500):
        publisher.send({"op": "pub", "ch": f"flood.{i}", "data": i})
        world.settle()
    assert len(world.router.channels) <= 50
    assert "kept" in world.router.channels and "@reader" in world.router.channels
    assert len(publisher.ops("ack")) == 500  # idle channels made room: nothing refused
    assert world.router.counters.channels_forgotten >= 450
    # A forgotten channel comes back with its seq (from the log), not at 1.
    publisher.send({"op": "pub", "ch": "flood.3", "data": "again", "id": "again"})
    world.settle()
    (ack,) = [a for a in publisher.ops("ack") if a.get("id") == "again"]
    assert ack["seq"] == 2


def test_node_channel_bound_refuses_when_nothing_is_idle() -> None:
    world = World(history=HistoryLimits(size=10, max_channels=20))
    peers = [world.connect(f"u{i}") for i in range(3)]
    for i in range(30):
        peers[i % 3].send({"op": "sub", "ch": f"busy.{i}", "id": i})
    world.tick()
    refused = [e for p in peers for e in p.ops("error") if e["code"] == "limit_exceeded"]
    assert refused and all("node" in e["reason"] for e in refused)
    assert len(world.router.channels) <= 20 + 3  # inboxes are exempt from the refusal
    assert world.router.counters.channels_refused == len(refused)


def test_user_channel_bound_churns_only_the_users_own_channels() -> None:
    world = World(history=HistoryLimits(size=10, max_channels=1000), max_channels_per_user=5)
    victim = world.connect("victim")
    victim.send({"op": "pub", "ch": "victim.room", "data": "mine"})
    world.settle()
    flooder = world.connect("flooder")
    for i in range(100):
        flooder.send({"op": "pub", "ch": f"f.{i}", "data": i})
        world.settle()
    owned = [ch for ch in world.router.channels.values() if ch.owner == "flooder"]
    assert len(owned) <= 5
    assert "victim.room" in world.router.channels  # another user's channel kept its history
    # With all five of its channels in use, the user's sixth is refused.
    for i in range(5):
        flooder.send({"op": "sub", "ch": f"s.{i}"})
    flooder.send({"op": "sub", "ch": "s.5", "id": "sixth"})
    world.tick()
    (error,) = [e for e in flooder.ops("error") if e.get("id") == "sixth"]
    assert error["code"] == "limit_exceeded" and "user flooder" in error["reason"]


def test_history_is_bounded_in_bytes_per_channel_and_in_total() -> None:
    limits = HistoryLimits(size=1000, channel_bytes=40_000, total_bytes=100_000)
    world = World(history=limits, max_data_bytes=64 * 1024)
    publisher = world.connect("p")
    payload = '"' + "x" * 10_000 + '"'
    for ch in ("a", "b", "c", "d"):
        for _ in range(10):
            publisher.send(b'{"op":"pub","ch":"%s","data":%s}' % (ch.encode(), payload.encode()))
            world.settle()
    router = world.router
    assert router.history_bytes <= limits.total_bytes
    for name in ("a", "b", "c", "d"):
        ch = router.channels[name]
        assert ch.history_bytes <= limits.channel_bytes
        assert ch.history_bytes == sum(entry_bytes(e) for e in ch.history)
        seqs = [e.seq for e in ch.history]
        assert seqs == list(range(seqs[0], 11)) if seqs else True  # consecutive, ending at the head
    assert router.history_bytes == sum(c.history_bytes for c in router.channels.values())
    # Oldest first: "a" (published first) lost everything before "d" lost anything.
    assert len(router.channels["d"].history) >= len(router.channels["a"].history)
    # `since` past what is kept answers recovered:false and replays nothing.
    late = world.connect("late")
    late.send({"op": "sub", "ch": "a", "since": 0})
    world.tick()
    assert late.ops("subscribed")[-1]["recovered"] is False and not late.ops("msg")
    assert world.log.floor == min(e.lsn for c in router.channels.values() for e in c.history)


def test_since_beyond_the_head_is_not_recovered() -> None:
    world = World()
    publisher = world.connect("p")
    for i in range(3):
        publisher.send({"op": "pub", "ch": "r", "data": i})
    world.settle()
    reader = world.connect("r")
    reader.send({"op": "sub", "ch": "r", "since": 41})
    reader.send({"op": "sub", "ch": "r2", "since": 3})
    reader.send({"op": "sub", "ch": "r", "since": 3, "id": "at-head"})
    world.tick()
    subscribed = reader.ops("subscribed")
    epoch = world.router.epoch
    assert subscribed[0] == {
        "op": "subscribed", "ch": "r", "seq": 3, "epoch": epoch, "recovered": False
    }  # fmt: skip
    assert subscribed[1] == {
        "op": "subscribed", "ch": "r2", "seq": 0, "epoch": epoch, "recovered": False
    }  # fmt: skip
    assert subscribed[2]["recovered"] is True and not reader.ops("msg")


def test_replay_is_produced_only_as_the_socket_drains() -> None:
    """A client that subscribes with since=0 and never reads: its outbox holds at most one
    replay page, whatever the history (the transport is paused: nothing drains)."""
    world = World(
        history=HistoryLimits(size=5000, channel_bytes=1 << 30),
        outbox_limit=4 << 20,
        publish_burst=10_000,
    )
    publisher = world.connect("p")
    for _ in range(3000):
        publisher.send({"op": "pub", "ch": "h", "data": "y" * 300})
    world.settle()
    reader = world.connect("r")
    world.tick()
    reader.outbox.pause()  # the kernel buffer is full: pause_writing
    reader.send({"op": "sub", "ch": "h", "since": 0})
    world.tick()
    assert 0 < reader.outbox.size <= 64 * 1024 + 1024
    sent = len(reader.frames())
    reader.outbox.resume()  # it drains: page by page, in order, nothing lost
    for _ in range(200):
        world.tick()
    seqs = [m["seq"] for m in reader.ops("msg")]
    assert sent < len(seqs) and seqs == list(range(1, 3001))
    assert world.router.channels["h"].replayers == 0 and not reader.closes


def test_unsub_during_a_replay_stops_it_and_does_not_resubscribe() -> None:
    world = World(history=HistoryLimits(size=5000, channel_bytes=1 << 30), publish_burst=10_000)
    publisher = world.connect("p")
    for _ in range(2000):
        publisher.send({"op": "pub", "ch": "h", "data": "z" * 200})
    world.settle()
    reader = world.connect("r")
    reader.send({"op": "sub", "ch": "h", "since": 0})
    reader.send({"op": "unsub", "ch": "h"})
    for _ in range(50):
        world.tick()
    replayed = len(reader.ops("msg"))
    assert replayed < 2000 and reader.ops("unsubscribed")
    channel = world.router.channels["h"]
    assert channel.replayers == 0 and reader.outbox not in channel.subs[J]
    publisher.send({"op": "pub", "ch": "h", "data": "after"})
    world.settle()
    assert len(reader.ops("msg")) == replayed  # not delivered: not subscribed


def test_msgpack_unsub_and_disconnect_stop_delivery() -> None:
    world = World()
    a, b = world.connect("a", M), world.connect("b", M)
    for peer in (a, b):
        peer.send({"op": "sub", "ch": "m"})
    publisher = world.connect("p", J)
    publisher.send({"op": "pub", "ch": "m", "data": 1})
    world.settle()
    a.send({"op": "unsub", "ch": "m"})
    b.session.closed()
    channel = world.router.channels["m"]
    assert not channel.subs[M] and world.router.subscription_count == 2  # a's and p's inboxes
    publisher.send({"op": "pub", "ch": "m", "data": 2})
    world.settle()
    assert [m["data"] for m in a.ops("msg")] == [1]
    assert [m["data"] for m in b.ops("msg")] == [1]


def test_stats_walk_only_active_channels() -> None:
    world = World(history=HistoryLimits(size=10, max_channels=100_000), max_subscriptions=5000)
    publisher = world.connect("p")
    for i in range(2000):
        publisher.send({"op": "sub", "ch": f"idle.{i}"})
    publisher.send({"op": "pub", "ch": "hot", "data": 1})
    world.settle()
    active = world.router.take_active()
    assert [(ch.name, n) for ch, n in active] == [("hot", 1)]
    assert world.router.take_active() == []
    assert world.router.subscription_count == 2000 + 1  # + the inbox
