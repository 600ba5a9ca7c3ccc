"""`$sys.flow` (core/flow.py): the builder over a sans-I/O world (edges, folding into
"others", channel and connection details, database position, build cost against idle
channels), then the service on a real relay (admin only, a document per interval)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cluster import wire
from cluster.forward import Intake
from common.durability import Encoding, Entry, HistoryLimits
from common.stats_doc import Flow
from core.dedupe import Publisher
from core.flow import SUBSCRIBERS_SHOWN, TOP_CHANNELS, FlowBuilder
from core.remote import Forwarded, Ready
from tests.core.world import World
from tests.helpers import UNIT, Client, StartRelay

ADMIN = "admin-token-that-is-long-enough-0123456789"


def _flow(_world: World, builder: FlowBuilder, checkpoint: int | None = None) -> dict[str, Any]:
    doc = builder.build(1.0, checkpoint, 1)
    out: dict[str, Any] = msgspec.to_builtins(doc)
    return out


def _edges(doc: dict[str, Any]) -> dict[tuple[str, str], tuple[float, int]]:
    return {(e["src"], e["dst"]): (e["rate"], e["count"]) for e in doc["edges"]}


def test_publisher_channel_subscriber_edges_with_rates_and_details() -> None:
    world = World()
    builder = FlowBuilder(world.router, "n1")
    world.router.add_tap(builder.observe)
    alice = world.connect("alice")
    bob = world.connect("bob", Encoding.MSGPACK)
    bob.send({"op": "sub", "ch": "room.1"})
    bob.send({"op": "sub", "ch": "room.2"})
    for i in range(5):
        alice.send({"op": "pub", "ch": "room.1", "data": i})
    alice.send({"op": "pub", "ch": "room.2", "data": 0})
    alice.send({"op": "pub", "ch": "bad name", "data": 0})  # an error frame for alice
    world.settle()
    doc = _flow(world, builder)
    edges = _edges(doc)
    bob_id = bob.session.conn_id
    assert edges[("p:alice", "c:room.1")] == (5.0, 1)
    assert edges[("p:alice", "c:room.2")] == (1.0, 1)
    assert edges[("c:room.1", "s:" + bob_id)] == (5.0, 1)
    assert (doc["msgs_per_s"], doc["active_channels"]) == (6.0, 2)
    assert doc["publishers"] == [{"user": "alice", "rate": 6.0}]
    room1 = next(c for c in doc["channels"] if c["ch"] == "room.1")
    assert room1 == {
        "ch": "room.1",
        "rate": 5.0,
        "head": 5,
        "subscribers": 1,
        "users": 1,
        "shown": [
            {
                "client": bob_id,
                "user": "bob",
                "encoding": "msgpack",
                "outbox_bytes": 0,
                "state": "ok",
            }
        ],
        "history_first": 1,
        "history_last": 5,
        "logged_seq": None,
        "owner": "n1",
    }
    assert {e["hop"] for e in doc["edges"]} == {None}  # one node: nothing crosses
    (conn,) = doc["connections"]
    assert conn["client"] == bob_id and conn["channels"] == ["@bob", "room.1", "room.2"]
    assert (conn["subscriptions"], conn["delivery_rate"], conn["state"]) == (3, 6.0, "ok")
    # the next interval starts from nothing: no traffic, no edges
    quiet = _flow(world, builder)
    assert quiet["edges"] == [] and quiet["channels"] == [] and quiet["msgs_per_s"] == 0.0


class FakeRemote:
    """`core.remote.Remote` of node "a" in a two-node cluster: `far.*` is "b"'s."""

    def __init__(self) -> None:
        self.forwarded: list[Forwarded] = []

    def owner_of(self, channel: str) -> str:
        return "b" if channel.startswith("far.") else "a"

    def elsewhere(self, channel: str) -> bool:
        return self.owner_of(channel) != "a"

    def publish(self, publisher: Publisher | None, request: Forwarded) -> None:
        self.forwarded.append(request)

    def ready(self, channel: str) -> bool:
        return True  # followed and in sync: the `sub` runs as on the owner

    def epoch_of(self, channel: str) -> str | None:
        return None

    def follow(self, channel: str, then: Ready | None) -> None:
        raise AssertionError("every channel is ready here")


def _hops(doc: dict[str, Any]) -> dict[tuple[str, str], tuple[float, str | None]]:
    return {(e["src"], e["dst"]): (e["rate"], e["hop"]) for e in doc["edges"]}


def test_in_a_cluster_channels_say_their_owner_and_edges_how_they_crossed() -> None:
    """Node "a": ann publishes to b's `far.1` (forwarded), whose feed brings it back with
    bo's messages to ann's subscriber; cy's publishes to a's `room.1` come in from b's
    forward, dee publishes to it here."""
    world = World()
    remote = FakeRemote()
    world.router.remote = remote
    builder = FlowBuilder(world.router, "a")
    world.router.add_tap(builder.observe)
    world.router.hops = builder
    ann = world.connect("ann")
    dee = world.connect("dee")
    ann.send({"op": "sub", "ch": "far.1"})
    ann.send({"op": "sub", "ch": "room.1"})
    for i in range(2):
        ann.send({"op": "pub", "ch": "far.1", "data": i})
    dee.send({"op": "pub", "ch": "far.2", "data": 0})  # nobody here follows far.2
    world.settle()
    assert [f.sender for f in remote.forwarded] == ["ann", "ann", "dee"]
    fed = [
        Entry("far.1", seq, 1, user, None, Encoding.JSON, b"0")
        for seq, user in enumerate(["ann", "bo", "ann", "bo", "bo"], 1)
    ]
    assert world.router.apply_remote("far.1", fed)
    intake = Intake(world.router, "d", lambda ch: remote.owner_of(ch) == "a")
    replies: list[bytes] = []
    items = [wire.Item("room.1", b"1", Encoding.JSON, "cy", None, None, i) for i in range(3)]
    intake.handle(wire.ENCODE(wire.Forward("d", items)), replies.append)
    dee.send({"op": "pub", "ch": "room.1", "data": 1})
    world.settle()
    assert len(replies) == 1  # every forwarded item durable: answered
    doc = _flow(world, builder)
    owners = {c["ch"]: c["owner"] for c in doc["channels"]}
    assert owners == {"far.1": "b", "room.1": "a", "far.2": "b"}
    hops = _hops(doc)
    ann_id = ann.session.conn_id
    assert hops[("p:ann", "c:far.1")] == (2.0, "forward")  # forwarded to b
    assert hops[("c:far.1", "s:" + ann_id)] == (5.0, "feed")  # the feed: ann's and bo's
    assert ("p:bo", "c:far.1") not in hops  # bo publishes on b: only the feed says so
    assert hops[("p:cy", "c:room.1")] == (3.0, "forward")  # come in from b
    assert hops[("p:dee", "c:room.1")] == (1.0, None)
    assert hops[("c:room.1", "s:" + ann_id)] == (4.0, None)
    far = next(c for c in doc["channels"] if c["ch"] == "far.1")
    assert (far["rate"], far["head"]) == (5.0, 5)
    unheld = next(c for c in doc["channels"] if c["ch"] == "far.2")
    assert (unheld["head"], unheld["subscribers"], unheld["shown"]) == (0, 0, [])
    assert hops[("p:dee", "c:far.2")] == (1.0, "forward")
    assert (
        doc["msgs_per_s"] == 10.0
    )  # far.1's five (ann's two among them), room.1's four, far.2's one
    # received in one interval, durable in the next: still come in by a forward
    intake.handle(wire.ENCODE(wire.Forward("d", items[:1])), replies.append)
    assert _flow(world, builder)["edges"] == []  # not durable yet: nothing to show
    world.settle()
    assert _hops(_flow(world, builder)) == {
        ("p:cy", "c:room.1"): (1.0, "forward"),
        ("c:room.1", "s:" + ann_id): (1.0, None),
    }
    quiet = _flow(world, builder)
    assert quiet["edges"] == [] and quiet["channels"] == []


def test_connection_counters_and_a_close_with_its_code() -> None:
    world = World()
    builder = FlowBuilder(world.router, "n1")
    world.router.add_tap(builder.observe)
    pub = world.connect("pub")
    pub.send({"op": "sub", "ch": "r"})
    for i in range(3):
        pub.send({"op": "pub", "ch": "r", "data": i})
    pub.send({"op": "unsub", "ch": "nope"})  # not_subscribed: one error frame
    world.settle()
    (conn,) = _flow(world, builder)["connections"]
    assert (conn["published"], conn["errors"]) == (3, 1)
    pub.send({"op": "pub", "ch": "r", "data": 9})
    world.settle()
    (conn,) = _flow(world, builder)["connections"]
    assert (conn["published"], conn["publish_rate"]) == (4, 1.0)
    builder.closed(pub.session.conn_id, "pub", 4408, 123)
    assert _flow(world, builder)["closed"] == [
        {"client": pub.session.conn_id, "user": "pub", "code": 4408, "ts_ms": 123}
    ]
    assert _flow(world, builder)["closed"] == []  # told once


def test_top_n_with_the_rest_folded_into_others() -> None:
    world = World()
    builder = FlowBuilder(world.router, "n1")
    world.router.add_tap(builder.observe)
    n_channels = TOP_CHANNELS + 6
    for c in range(n_channels):
        peer = world.connect(f"user{c}")
        for _ in range(c + 1):  # channel c gets c + 1 messages
            peer.send({"op": "pub", "ch": f"ch.{c}", "data": 0})
    subscribers = [world.connect(f"s{i}") for i in range(SUBSCRIBERS_SHOWN + 3)]
    for peer in subscribers:
        peer.send({"op": "sub", "ch": f"ch.{n_channels - 1}"})
    world.settle()
    doc = _flow(world, builder)
    shown = [c["ch"] for c in doc["channels"]]
    assert shown == [f"ch.{c}" for c in range(n_channels - 1, n_channels - 1 - TOP_CHANNELS, -1)]
    assert doc["others"]["channels"] == 6
    assert doc["others"]["rate"] == float(sum(range(1, 7)))
    edges = _edges(doc)
    assert edges[("p:*", "c:*")] == (float(sum(range(1, 7))), 6)
    busiest = doc["channels"][0]
    assert len(busiest["shown"]) == SUBSCRIBERS_SHOWN and busiest["subscribers"] == 11
    assert edges[("c:" + busiest["ch"], "s:*" + busiest["ch"])][1] == 3
    assert len(doc["connections"]) == SUBSCRIBERS_SHOWN
    assert msgspec.convert(doc, Flow).others.publishers == n_channels - TOP_CHANNELS


def test_the_database_position_of_a_channel_comes_from_the_checkpoint() -> None:
    world = World()
    builder = FlowBuilder(world.router, "n1")
    world.router.add_tap(builder.observe)
    peer = world.connect("p")
    peer.send({"op": "pub", "ch": "other", "data": 0})  # LSN 1
    for i in range(4):
        peer.send({"op": "pub", "ch": "r", "data": i})  # LSNs 2..5, seqs 1..4
    world.settle()
    ring = world.router.get("r")
    assert ring is not None and [e.lsn for e in ring.history] == [2, 3, 4, 5]

    def logged(checkpoint: int | None) -> int | None:
        builder.observe(list(ring.history)[:1])  # "r" is active in this interval
        channels = {c["ch"]: c for c in _flow(world, builder, checkpoint)["channels"]}
        value: int | None = channels["r"]["logged_seq"]
        return value

    assert logged(None) is None  # no replayer
    assert logged(1) is None  # below the ring
    assert logged(3) == 2
    assert logged(5) == 4
    assert logged(10_000) == 4


def test_a_build_visits_only_the_active_channels_however_many_idle_ones() -> None:
    """The cost check of issue 17: 100k idle channels (in memory, one subscriber on a
    thousand of them) change nothing about what a build looks at or says."""

    def run(idle: int) -> tuple[int, dict[str, Any]]:
        world = World(history=HistoryLimits(size=10, max_channels=idle + 100))
        builder = FlowBuilder(world.router, "n1")
        world.router.add_tap(builder.observe)
        for i in range(idle):
            world.router.open_channel(f"idle.{i}", None)
        watcher = world.connect("w")
        for i in range(min(idle, 1000)):
            watcher.send({"op": "sub", "ch": f"idle.{i}"})
        world.settle()
        builder.build(1.0, None, 1)  # the interval of the set-up
        pub = world.connect("p")
        for ch in ("hot.1", "hot.2", "hot.3"):
            pub.send({"op": "pub", "ch": ch, "data": 1})
        world.settle()
        doc = _flow(world, builder)
        return builder.visited, doc

    visited_none, doc_none = run(0)
    visited_many, doc_many = run(100_000)
    assert visited_none == visited_many == 3
    assert doc_many["channels"] == doc_none["channels"]
    assert doc_many["edges"] == doc_none["edges"]


@pytest.mark.parametrize("admin", [True, False])
async def test_the_service_publishes_to_admins_only(start_relay: StartRelay, admin: bool) -> None:
    relay = await start_relay(admin_token=ADMIN)
    watcher = await Client.connect(relay.url, token=ADMIN if admin else None)
    await watcher.send({"op": "sub", "ch": "$sys.flow"})
    answer = await watcher.recv()
    if not admin:
        assert (answer["op"], answer["code"]) == ("error", "forbidden")
        return
    assert answer["op"] == "subscribed"
    sub = await Client.connect(relay.url, user="sam")
    await sub.sub("room.f")
    pub = await Client.connect(relay.url, user="pat")
    edge = None
    for i in range(int(10 * UNIT)):
        await pub.pub("room.f", i)
        assert (await pub.expect("ack"))["seq"] == i + 1
        frame = await watcher.recv(timeout=UNIT)
        if frame["op"] != "msg":
            continue
        doc = frame["data"]
        edges = {(e["src"], e["dst"]) for e in doc["edges"]}
        if ("p:pat", "c:room.f") in edges:
            edge = doc
            break
    assert edge is not None, "no flow document with the pat -> room.f edge"
    assert ("c:room.f", "s:" + sub.welcome["client"]) in {
        (e["src"], e["dst"]) for e in edge["edges"]
    }
    for client in (watcher, sub, pub):
        await client.close()
