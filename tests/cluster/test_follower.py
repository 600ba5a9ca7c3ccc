"""Following an owner's feed, with no NATS: an owner's router and a following node's
router (tests/core/world.py), the owner's `FeedPublisher` and `Answers`, and a wire the
test controls, so a feed message can be dropped, a heartbeat sent, the owner made
unreachable. Gaps are backfilled in order, never twice; a gap the owner's history no
longer holds closes the subscribers with 4409."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from cluster import wire
from cluster.bus import NoResponders
from cluster.feed import FeedPublisher, Follower
from cluster.history import Answers
from cluster.slots import SlotMap, slot_of
from common.durability import HistoryLimits
from core.dedupe import Publisher
from core.remote import Forwarded, Ready
from tests.core.world import Peer, World
from tests.helpers import UNIT, wait_for

NODES = ("a", "b")
SLOTS = SlotMap(NODES)
CHANNEL = next(f"room.{i}" for i in range(1000) if SLOTS.owner_of(f"room.{i}") == "a")
SLOT = slot_of(CHANNEL)


class Wire:
    """What the owner put on NATS, and the follower's requests to it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.answers: Answers | None = None
        self.reachable = True
        self.requests = 0

    def publish(self, subject: str, payload: bytes) -> None:
        self.sent.append((subject, payload))

    async def control(self, owner: str, payload: bytes) -> bytes:
        self.requests += 1
        if not self.reachable:
            raise NoResponders("the owner is down")
        assert self.answers is not None
        request = wire.CONTROL.decode(payload)
        if isinstance(request, wire.Sync):
            return wire.ENCODE(self.answers.sync(request))
        return wire.ENCODE(wire.HistoryReply(await self.answers.history(request)))

    def feeds(self) -> list[wire.Feed]:
        return [wire.FEED.decode(p) for s, p in self.sent if s == f"t.feed.{SLOT}"]


class Edge:
    """`core.remote.Remote` of the following node (ClusterNode without NATS)."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower

    def elsewhere(self, channel: str) -> bool:
        return SLOTS.owner_of(channel) != "b"

    def publish(self, publisher: Publisher | None, request: Forwarded) -> None:
        raise AssertionError("nothing is published on the following node here")

    def ready(self, channel: str) -> bool:
        return not self.elsewhere(channel) or self.follower.ready(channel)

    def epoch_of(self, channel: str) -> str | None:
        return None

    def follow(self, channel: str, then: Ready | None) -> None:
        self.follower.follow(channel, then)

    def owner_of(self, channel: str) -> str:
        return SLOTS.owner_of(channel)


class Pair:
    def __init__(self, history: int = 100) -> None:
        self.owner = World(history=HistoryLimits(size=history))
        self.edge = World()
        tasks: set[asyncio.Task[None]] = set()

        def spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
            task = asyncio.get_running_loop().create_task(work)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return task

        self.wire = Wire()
        self.feed = FeedPublisher(self.wire.publish, "t", "a", "inc-1")
        self.owner.router.add_tap(self.feed.tap)
        self.wire.answers = Answers(
            self.owner.router, self.owner.log, self.feed.counters, "inc-1", None, spawn
        )
        self.follower = Follower(
            self.edge.router, SLOTS.owners.__getitem__, self.wire.control, self._subscribe,
            spawn, lambda: 0,
        )  # fmt: skip
        self.edge.router.remote = Edge(self.follower)
        self.publisher = self.owner.connect("p")
        self.published = 0

    async def _subscribe(self, slot: int) -> None:
        assert slot == SLOT

    def pub(self, n: int = 1) -> None:
        """n messages on the owner, each its own durable batch (and feed message)."""
        for _ in range(n):
            self.published += 1
            self.publisher.send({"op": "pub", "ch": CHANNEL, "data": self.published})
            self.owner.settle()

    async def subscribe(self, **extra: Any) -> Peer:
        peer = self.edge.connect("s")
        peer.send({"op": "sub", "ch": CHANNEL, **extra})
        await self.until(lambda: bool(peer.ops("subscribed") or peer.ops("error")), "the answer")
        return peer

    async def until(self, predicate: Any, what: str) -> None:
        def check() -> bool:
            self.edge.tick()
            return bool(predicate())

        await wait_for(check, UNIT, what)

    def deliver(self, feeds: list[wire.Feed]) -> None:
        for feed in feeds:
            self.follower.on_feed(SLOT, feed)
        self.edge.tick()


def seqs(peer: Peer) -> list[int]:
    return [m["seq"] for m in peer.ops("msg")]


async def test_a_sub_waits_for_the_owners_head_then_follows_the_feed() -> None:
    pair = Pair()
    pair.pub(3)
    peer = await pair.subscribe()
    assert peer.ops("subscribed")[0]["seq"] == 3
    before = len(pair.wire.feeds())
    pair.pub(2)
    pair.deliver(pair.wire.feeds()[before:])
    assert seqs(peer) == [4, 5]
    assert pair.wire.requests == 1  # one sync, nothing else


async def test_a_dropped_feed_message_is_backfilled_in_order_never_twice() -> None:
    pair = Pair()
    peer = await pair.subscribe()
    pair.pub(4)
    feeds = pair.wire.feeds()
    pair.deliver([feeds[0], feeds[2], feeds[3]])  # the second one never arrived
    await pair.until(lambda: seqs(peer) == [1, 2, 3, 4], "the backfill")
    before = len(pair.wire.feeds())
    pair.pub(1)
    pair.deliver(pair.wire.feeds()[before:] + feeds)  # late duplicates are ignored
    assert seqs(peer) == [1, 2, 3, 4, 5]
    assert pair.follower.backfilled >= 1


async def test_the_last_message_of_a_burst_lost_shows_in_the_second_heartbeat() -> None:
    pair = Pair()
    peer = await pair.subscribe()
    pair.pub(3)
    pair.deliver(pair.wire.feeds()[:2])  # the third is lost, and nothing comes after it
    assert seqs(peer) == [1, 2]
    heartbeat = wire.Heartbeat("a", "inc-1", list(pair.feed.counters))
    pair.follower.on_heartbeat(heartbeat)  # may be a feed message still queued: wait
    pair.edge.tick()
    assert seqs(peer) == [1, 2]
    pair.follower.on_heartbeat(heartbeat)  # still behind: it was lost
    await pair.until(lambda: seqs(peer) == [1, 2, 3], "the resync")


async def test_a_restarted_owner_is_resynced_from_its_heads() -> None:
    pair = Pair()
    peer = await pair.subscribe()
    pair.pub(2)
    pair.deliver(pair.wire.feeds())
    pair.pub(2)  # made durable, its feed lost with the owner's process
    pair.follower.on_heartbeat(wire.Heartbeat("a", "inc-2", [0] * 256))  # a new incarnation
    await pair.until(lambda: seqs(peer) == [1, 2, 3, 4], "the resync")


async def test_a_gap_the_owner_no_longer_holds_closes_with_4409() -> None:
    pair = Pair(history=5)
    peer = await pair.subscribe()
    pair.pub(1)
    feeds = pair.wire.feeds()
    pair.deliver(feeds)
    pair.pub(20)  # all lost on the way; the owner's ring keeps the last 5
    pair.deliver(pair.wire.feeds()[-1:])
    await pair.until(lambda: bool(peer.closes), "the close")
    assert peer.closes[0][0] == 4409  # CloseCode.RESYNC_REQUIRED
    assert seqs(peer) == [1]  # nothing out of order, nothing past the hole
    again = await pair.subscribe(since=1)
    subscribed = again.ops("subscribed")[0]
    assert subscribed["seq"] == 21 and subscribed["recovered"] is False


async def test_a_sub_answers_unavailable_when_the_owner_cannot_be_reached() -> None:
    pair = Pair()
    pair.wire.reachable = False
    peer = await pair.subscribe()
    (error,) = peer.ops("error")
    assert error["code"] == "unavailable" and not peer.ops("subscribed")
    pair.wire.reachable = True
    pair.pub(1)
    later = await pair.subscribe()
    assert later.ops("subscribed")[0]["seq"] == 1
