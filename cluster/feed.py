"""Per-slot feeds: the owner publishes its durable batches, followers deliver them
(docs/cluster.md, "Feeds").

Owner (`FeedPublisher`): after each durable batch (a router tap, called after the acks
and the local fan-out) one `Feed` per slot touched — its incarnation and the slot's next
counter — and a `Heartbeat` with every slot's counter each second.

Follower (`Follower`), per slot, all transitions here:

    IDLE ──follow()──▶ SYNCING ──sync reply + backfill + buffered feeds applied──▶ LIVE
                          ▲                                                          │
                          └─ counter gap, other incarnation, a heartbeat ahead twice,┘
                             a channel joining

While SYNCING, feed messages are buffered (at most `MAX_BUFFERED`; past it the slot's
subscribers are closed with 4409). A gap the owner's history cannot fill closes that
channel's subscribers with 4409 and continues from the owner's head.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cluster import wire
from cluster.bus import Unreachable
from cluster.slots import SLOTS, slot_of
from common.durability import Entry
from core.errors import OwnerUnreachable, ResyncRequired
from core.remote import Ready
from core.router import Router

log = logging.getLogger("ferry.cluster")

FEED_BYTES = 512 * 1024  # per feed message (NATS' default max_payload is 1 MiB)
MAX_BUFFERED = 10_000  # feed messages held while a slot resyncs
HISTORY_PAGE = 500  # messages per history request
RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)  # between sync attempts while the owner is away


def record_of(entry: Entry) -> wire.Record:
    return wire.Record(
        entry.channel, entry.seq, entry.ts_ms, entry.sender, entry.encoding, entry.data
    )


def entry_of(record: wire.Record, lsn: int) -> Entry:
    return Entry(
        record.channel, record.seq, record.ts_ms, record.sender, None, record.encoding,
        record.data, lsn=lsn,
    )  # fmt: skip


class FeedPublisher:
    def __init__(
        self, publish: Callable[[str, bytes], None], cluster_id: str, node: str, incarnation: str
    ) -> None:
        self._publish = publish  # Bus.publish
        self._prefix = f"{cluster_id}.feed."
        self._hb_subject = f"{cluster_id}.hb.{node}"
        self.node = node
        self.incarnation = incarnation
        self.counters = [0] * SLOTS
        self.published = 0

    def tap(self, entries: list[Entry]) -> None:
        """One durable batch: a feed message per slot it touched (split past FEED_BYTES)."""
        by_slot: dict[int, list[wire.Record]] = {}
        for entry in entries:
            slot = slot_of(entry.channel)
            records = by_slot.get(slot)
            if records is None:
                records = by_slot[slot] = []
            records.append(record_of(entry))
        for slot, records in by_slot.items():
            start, size = 0, 0
            for i, record in enumerate(records):
                size += len(record.data) + 64
                if size >= FEED_BYTES and i > start:
                    self._send(slot, records[start:i])
                    start, size = i, len(record.data) + 64
            self._send(slot, records[start:])

    def _send(self, slot: int, records: list[wire.Record]) -> None:
        self.counters[slot] += 1
        self.published += 1
        feed = wire.Feed(self.incarnation, self.counters[slot], records)
        self._publish(f"{self._prefix}{slot}", wire.ENCODE(feed))

    def heartbeat(self) -> None:
        hb = wire.Heartbeat(self.node, self.incarnation, self.counters)
        self._publish(self._hb_subject, wire.ENCODE(hb))


class Phase(enum.Enum):
    IDLE = "idle"
    SYNCING = "syncing"
    LIVE = "live"


class SlotState:
    __slots__ = (
        "buffer", "channels", "counter", "incarnation", "joining", "phase", "slot",
        "subscribed", "suspect", "task",
    )  # fmt: skip

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.phase = Phase.IDLE
        self.incarnation = ""
        self.counter = 0
        self.channels: set[str] = set()  # held here and in step with the owner
        self.joining: dict[str, list[Ready]] = {}
        self.buffer: list[wire.Feed] = []
        self.subscribed = False
        self.suspect = 0  # a heartbeat's counter above ours, confirmed by the next one
        self.task: object | None = None


Control = Callable[[str, bytes], Awaitable[bytes]]  # (owner, request) -> reply (Unreachable)


class Follower:
    def __init__(
        self,
        router: Router,
        owner_of_slot: Callable[[int], str],
        control: Control,
        subscribe_feed: Callable[[int], Awaitable[None]],
        spawn: Callable[[Any], object],
        lsn_now: Callable[[], int],
    ) -> None:
        self._router = router
        self._owner_of_slot = owner_of_slot
        self._control = control
        self._subscribe_feed = subscribe_feed
        self._spawn = spawn
        # The LSN remote entries carry in the rings: the local log's next one, so the
        # router's FIFO stays in LSN order and the history floor it reports holds.
        self._lsn_now = lsn_now
        self.slots = [SlotState(slot) for slot in range(SLOTS)]
        self.epochs: dict[str, str] = {}  # owner -> its log's epoch (from its sync replies)
        self.applied = 0
        self.resyncs = 0
        self.resync_closes = 0
        self.backfilled = 0

    # --- the relay's questions (core/remote.py) --------------------------------------

    def ready(self, channel: str) -> bool:
        state = self.slots[slot_of(channel)]
        return (
            state.phase is Phase.LIVE
            and channel in state.channels
            and self._router.get(channel) is not None
        )

    def follow(self, channel: str, then: Ready | None) -> None:
        state = self.slots[slot_of(channel)]
        waiters = state.joining.get(channel)
        if waiters is None:
            waiters = state.joining[channel] = []
        if then is not None:
            waiters.append(then)
        self._resync(state)

    # --- feeds and heartbeats --------------------------------------------------------

    def on_feed(self, slot: int, feed: wire.Feed) -> None:
        state = self.slots[slot]
        if state.phase is Phase.IDLE:
            return
        if state.phase is Phase.SYNCING:
            state.buffer.append(feed)
            if len(state.buffer) > MAX_BUFFERED:
                log.warning("cluster: slot %d: too many feed messages while resyncing", slot)
                for name in list(state.channels):
                    self._close_subscribers(name)
                state.channels.clear()
                state.buffer.clear()
            return
        if feed.incarnation == state.incarnation:
            if feed.counter <= state.counter:
                return  # already applied (or reflected in a sync)
            if feed.counter == state.counter + 1 and self._apply(state, feed):
                state.counter += 1
                return
        self._resync(state)

    def on_heartbeat(self, hb: wire.Heartbeat) -> None:
        for state in self.slots:
            if state.phase is not Phase.LIVE or self._owner_of_slot(state.slot) != hb.node:
                continue
            if hb.incarnation != state.incarnation:
                self._resync(state)
                continue
            ahead = hb.counters[state.slot] if state.slot < len(hb.counters) else 0
            # Heartbeats and feeds arrive on different subscriptions: a counter ahead of
            # ours may be a feed message still queued. Only a second heartbeat that still
            # shows it means one was lost (the last of a burst).
            if state.suspect and state.counter < state.suspect:
                self._resync(state)
            state.suspect = ahead if ahead > state.counter else 0

    def _apply(self, state: SlotState, feed: wire.Feed) -> bool:
        """Deliver a feed message's records of the channels held here; False on a gap."""
        groups: dict[str, list[Entry]] = {}
        lsn = self._lsn_now()
        for record in feed.records:
            if record.channel in state.channels:
                group = groups.get(record.channel)
                if group is None:
                    group = groups[record.channel] = []
                group.append(entry_of(record, lsn))
        router = self._router
        ok = True
        for name, entries in groups.items():
            if router.get(name) is None:
                state.channels.discard(name)  # forgotten here: a new sub syncs it again
            elif router.apply_remote(name, entries):
                self.applied += len(entries)
            else:
                ok = False
        return ok

    # --- resync ----------------------------------------------------------------------

    def _resync(self, state: SlotState) -> None:
        if state.phase is Phase.LIVE:
            state.phase = Phase.SYNCING
        if state.task is None:
            state.task = self._spawn(self._sync(state))

    async def _sync(self, state: SlotState) -> None:
        try:
            await self._sync_rounds(state)
        finally:
            state.task = None

    async def _sync_rounds(self, state: SlotState) -> None:
        router = self._router
        attempt = 0
        while True:
            owner = self._owner_of_slot(state.slot)
            state.phase = Phase.SYNCING
            state.buffer = []
            joining, state.joining = state.joining, {}
            held = [name for name in state.channels if router.get(name) is not None]
            state.channels = set(held)
            names = held + [name for name in joining if name not in state.channels]
            self.resyncs += 1
            try:
                if not state.subscribed:
                    await self._subscribe_feed(state.slot)  # before the sync: nothing missed
                    state.subscribed = True
                reply = wire.SYNC_REPLY.decode(
                    await self._control(owner, wire.ENCODE(wire.Sync(state.slot, names)))
                )
                for name, head in zip(names, reply.heads, strict=True):
                    await self._catch_up(state, owner, name, head)
            except Exception as exc:  # Unreachable, or a bug: either way, try again
                if not isinstance(exc, Unreachable):
                    log.exception("cluster: slot %d: sync failed", state.slot)
                for waiters in joining.values():
                    for then in waiters:
                        then(OwnerUnreachable("the channel's owner cannot be reached"))
                if not state.channels and not state.joining:
                    state.phase = Phase.IDLE
                    return
                await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1
                continue
            attempt = 0
            self.epochs[owner] = reply.epoch
            state.incarnation, state.counter = reply.incarnation, reply.counter
            state.suspect = 0
            if not self._drain(state):
                for name, waiters in joining.items():
                    state.joining.setdefault(name, []).extend(waiters)
                continue
            state.phase = Phase.LIVE
            for waiters in joining.values():
                for then in waiters:
                    then(None)
            if not state.joining:
                return

    async def _catch_up(self, state: SlotState, owner: str, name: str, head: int) -> None:
        router = self._router
        ch = router.get(name)
        if ch is None or name not in state.channels:
            router.reset_remote(name, head)  # a first sync: it continues from the head
            state.channels.add(name)
            return
        if head == ch.durable_seq:
            return
        if head > ch.durable_seq and await self._backfill(owner, name, ch.durable_seq, head):
            return
        # the owner no longer has what this node missed (or its seq went backwards)
        self._close_subscribers(name)
        router.reset_remote(name, head)

    async def _backfill(self, owner: str, name: str, have: int, head: int) -> bool:
        """Fetch and deliver `have+1 .. head` from the owner; False if it is gone."""
        while have < head:
            request = wire.HistoryRequest(name, have, head + 1, HISTORY_PAGE)
            reply = wire.HISTORY_REPLY.decode(await self._control(owner, wire.ENCODE(request)))
            records = reply.records
            if not records or records[0].seq != have + 1:
                return False
            lsn = self._lsn_now()
            if not self._router.apply_remote(name, [entry_of(r, lsn) for r in records]):
                return False
            self.backfilled += len(records)
            have = records[-1].seq
            ch = self._router.get(name)
            if ch is None:
                return True  # forgotten meanwhile: nothing left to deliver to
        return True

    def _drain(self, state: SlotState) -> bool:
        """Apply what was buffered during the sync, past the sync's counter, in order."""
        buffered, state.buffer = sorted(state.buffer, key=lambda f: f.counter), []
        for feed in buffered:
            if feed.incarnation != state.incarnation or feed.counter <= state.counter:
                continue  # reflected in the sync (or from before a restart: the heads are)
            if feed.counter != state.counter + 1 or not self._apply(state, feed):
                return False
            state.counter += 1
        return True

    def _close_subscribers(self, name: str) -> None:
        ch = self._router.get(name)
        if ch is None:
            return
        for subs in ch.subs:
            for session in list(subs.values()):
                self.resync_closes += 1
                session.fail(
                    ResyncRequired(
                        f"missed messages of {name} are gone from its owner: "
                        "reconnect and subscribe with since"
                    )
                )

    def stats(self) -> dict[str, int]:
        return {
            "slots_followed": sum(1 for s in self.slots if s.phase is not Phase.IDLE),
            "applied": self.applied,
            "backfilled": self.backfilled,
            "resyncs": self.resyncs,
            "resync_closes": self.resync_closes,
        }
