"""Presence (core/presence.py, docs/protocol.md "Presence") driven through sessions in
the sans-I/O world: the `presence` answer, `join` / `leave` events, permissions, paging;
and the per-user counts the router keeps on attach and detach."""

from __future__ import annotations

from typing import Any

from common.durability import Encoding
from tests.core.world import Peer, World
from tests.helpers import Client, StartRelay


def _presence(world: World, peer: Peer, ch: str, **extra: Any) -> dict[str, Any]:
    peer.new_frames()
    peer.send({"op": "presence", "ch": ch, "id": "p", **extra})
    world.tick()
    (answer,) = [f for f in peer.new_frames() if f["op"] in ("presence", "error")]
    return answer


def _events(peer: Peer) -> list[tuple[str, str, str]]:
    return [
        (f["op"], f["ch"], f["user"]) for f in peer.new_frames() if f["op"] in ("join", "leave")
    ]


def test_presence_equals_the_subscribers_at_that_moment() -> None:
    world = World()
    alice1, alice2, bob = world.connect("alice"), world.connect("alice"), world.connect("bob")
    for peer in (alice1, alice2, bob):
        peer.send({"op": "sub", "ch": "room.1"})
    carol = world.connect("carol")  # asks without being subscribed
    world.tick()
    answer = _presence(world, carol, "room.1")
    assert answer == {
        "op": "presence",
        "ch": "room.1",
        "users": 2,
        "connections": 3,
        "members": [{"user": "alice", "conns": 2}, {"user": "bob", "conns": 1}],
        "next": None,
        "id": "p",
    }
    alice2.send({"op": "unsub", "ch": "room.1"})
    bob.session.closed()  # the socket went away
    world.tick()
    answer = _presence(world, carol, "room.1")
    assert (answer["users"], answer["connections"]) == (1, 1)
    assert answer["members"] == [{"user": "alice", "conns": 1}]
    alice1.session.closed()
    answer = _presence(world, carol, "room.1")
    assert (answer["users"], answer["connections"], answer["members"]) == (0, 0, [])
    room = world.router.get("room.1")
    assert room is None or room.users is None


def test_join_and_leave_arrive_once_per_user_transition_in_order() -> None:
    world = World()
    watcher = world.connect("watcher", Encoding.MSGPACK)
    watcher.send({"op": "sub", "ch": "room.1", "presence": True})
    world.tick()
    assert watcher.ops("subscribed") and not _events(watcher)  # not its own join
    alice1 = world.connect("alice")
    alice1.send({"op": "sub", "ch": "room.1"})
    alice2 = world.connect("alice")
    alice2.send({"op": "sub", "ch": "room.1"})  # a second connection: no transition
    bob = world.connect("bob")
    bob.send({"op": "sub", "ch": "room.1"})
    alice1.send({"op": "sub", "ch": "room.1"})  # a repeated sub: no leave + join
    alice1.send({"op": "unsub", "ch": "room.1"})  # alice still has alice2
    bob.send({"op": "unsub", "ch": "room.1"})
    alice2.session.closed()
    bob.send({"op": "sub", "ch": "room.1"})
    world.tick()
    assert _events(watcher) == [
        ("join", "room.1", "alice"),
        ("join", "room.1", "bob"),
        ("leave", "room.1", "bob"),
        ("leave", "room.1", "alice"),
        ("join", "room.1", "bob"),
    ]
    # a subscriber that did not ask hears nothing; unsubscribing stops the events
    assert not [f for f in bob.frames() if f["op"] in ("join", "leave")]
    watcher.send({"op": "unsub", "ch": "room.1"})
    bob.send({"op": "unsub", "ch": "room.1"})
    world.tick()
    assert _events(watcher) == []


def test_a_repeated_sub_without_presence_stops_the_events() -> None:
    world = World()
    watcher = world.connect("watcher")
    watcher.send({"op": "sub", "ch": "room.1", "presence": True})
    world.connect("a").send({"op": "sub", "ch": "room.1"})
    world.tick()
    assert _events(watcher) == [("join", "room.1", "a")]
    watcher.send({"op": "sub", "ch": "room.1"})
    world.connect("b").send({"op": "sub", "ch": "room.1"})
    world.tick()
    assert _events(watcher) == []


def test_events_and_messages_keep_the_order_they_happened_in() -> None:
    world = World()
    watcher = world.connect("w")
    watcher.send({"op": "sub", "ch": "room.1", "presence": True})
    alice = world.connect("alice")
    alice.send({"op": "pub", "ch": "room.1", "data": 1})
    world.settle()  # seq 1 is delivered before alice joins
    alice.send({"op": "sub", "ch": "room.1"})
    alice.send({"op": "pub", "ch": "room.1", "data": 2})
    world.settle()
    seen = [
        (f["op"], f.get("seq", f.get("user")))
        for f in watcher.frames()
        if f["op"] in ("msg", "join", "leave")
    ]
    assert seen == [("msg", 1), ("join", "alice"), ("msg", 2)]


def test_presence_needs_the_right_to_subscribe() -> None:
    world = World()
    world.connect("alice").send({"op": "sub", "ch": "room.secret"})
    world.tick()
    outsider = world.connect("eve", sub=("public.*",))
    answer = _presence(world, outsider, "room.secret")
    assert (answer["op"], answer["code"], answer["id"]) == ("error", "forbidden", "p")
    outsider.send({"op": "sub", "ch": "room.secret", "presence": True})
    world.tick()
    assert [f["code"] for f in outsider.new_frames() if f["op"] == "error"] == ["forbidden"]
    # $sys.* is the admin's, as for sub
    assert _presence(world, world.connect("bob"), "$sys.stats")["code"] == "forbidden"
    admin = world.connect("root", admin=True)
    assert _presence(world, admin, "$sys.stats")["op"] == "presence"
    # bad input gets a documented error code, never a close
    for bad in ({"ch": "no spaces"}, {"ch": "room.1", "limit": 0}, {"ch": "r", "limit": 1001}):
        assert _presence(world, outsider, **bad)["code"] == "bad_request"
    assert outsider.session.is_open


def test_a_large_channel_answers_a_count_and_pages_in_user_order() -> None:
    world = World()
    n = 2500
    for i in range(n):
        world.connect(f"u{i:05d}").send({"op": "sub", "ch": "big"})
    asker = world.connect("asker")
    world.tick()
    first = _presence(world, asker, "big")
    assert (first["users"], first["connections"]) == (n, n)
    assert len(first["members"]) == 100 and first["members"][0]["user"] == "u00000"
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        extra: dict[str, Any] = {"limit": 1000}
        if cursor is not None:
            extra["after"] = cursor
        page = _presence(world, asker, "big", **extra)
        assert len(page["members"]) <= 1000
        seen += [m["user"] for m in page["members"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
        assert cursor == seen[-1]
    assert pages == 3 and seen == [f"u{i:05d}" for i in range(n)]


def test_an_inbox_is_computed_from_its_connections() -> None:
    world = World()
    bob1, _bob2 = world.connect("bob"), world.connect("bob")
    world.tick()
    answer = _presence(world, bob1, "@bob")
    assert answer["members"] == [{"user": "bob", "conns": 2}] and answer["connections"] == 2
    inbox = world.router.get("@bob")
    assert inbox is not None and inbox.users is None  # no per-connection dict for inboxes


def test_a_replaying_subscriber_joins_once_it_is_attached() -> None:
    world = World()
    pub = world.connect("p")
    for i in range(3):
        pub.send({"op": "pub", "ch": "room.1", "data": i})
    world.settle()
    watcher = world.connect("w")
    watcher.send({"op": "sub", "ch": "room.1", "presence": True})
    late = world.connect("late")
    late.send({"op": "sub", "ch": "room.1", "since": 0})
    world.settle()
    assert [f["seq"] for f in late.ops("msg")] == [1, 2, 3]
    assert _events(watcher) == [("join", "room.1", "late")]
    assert _presence(world, watcher, "room.1")["users"] == 2


async def test_join_leave_and_presence_over_a_real_socket(start_relay: StartRelay) -> None:
    relay = await start_relay()
    watcher = await Client.connect(relay.url, msgpack=True, user="watcher")
    await watcher.sub("room.live", presence=True)
    ann = await Client.connect(relay.url, user="ann")
    await ann.sub("room.live")
    assert await watcher.recv() == {"op": "join", "ch": "room.live", "user": "ann"}
    await watcher.send({"op": "presence", "ch": "room.live", "id": 1})
    answer = await watcher.expect("presence")
    assert answer["members"] == [{"user": "ann", "conns": 1}, {"user": "watcher", "conns": 1}]
    await ann.close()  # the socket goes: a leave, once
    assert await watcher.recv() == {"op": "leave", "ch": "room.live", "user": "ann"}
    await watcher.assert_silent()
    await watcher.close()
