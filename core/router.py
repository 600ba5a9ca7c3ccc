"""Channels -> subscribers, per-channel seq, history rings, and the durable fan-out.

A publish gets its channel seq here, goes to the `DurableLog`, and is acked and fanned
out only in `on_durable`, once the log says its batch is on disk (docs/design.md §2). Fan-out
groups a durable batch by channel, encodes the channel's new `msg` frames ONCE per wire
encoding (joined into one bytes object) and pushes that same object to every
subscriber's outbox: per subscriber the cost is one list append, whatever the batch size.

Bounded state (docs/protocol.md, "Limits"):

* Channels in memory: at most `HistoryLimits.max_channels`, and `max_channels_per_user`
  created by one user. Past a bound, the least recently used *idle* channel (no
  subscriber, nothing in flight, nobody replaying it) is forgotten to make room — the
  user's own first when it is the user's bound. Only if none is idle is the new channel
  refused (`limit_exceeded`). A forgotten channel's seq continues when it comes back
  (`DurableLog.head_of`); its in-memory history is gone (`since` then answers
  `recovered: false`). `self.channels` is ordered least recently used first.
* History: per channel at most `size` messages and `channel_bytes`; over all channels
  `total_bytes`, the globally oldest message dropped first. A ring always holds
  consecutive seqs ending at the channel's durable head, so `since` replay can never
  skip a message inside it.

Occupancy (`Router.occupancy`, the application webhooks' seam, core/hooks.py): called with
(channel, True) when a channel goes from no subscriber to one and (channel, False) when
its last one leaves, never in between. A subscriber counts from its `sub` on: attached to
the live fan-out, or still replaying its `since` history. `$sys.*` channels and `@user`
inboxes never report (every connection's own inbox subscription would otherwise be a
channel event per connection; a user's presence is `user.online`/`user.offline`). Only
idle channels are ever forgotten, so forgetting one is never a transition. Unset (None),
it costs one attribute check per subscribe and unsubscribe.

Failure isolation: every channel group of a durable batch is fanned out on its own, so
one failure can't stop the acks, seqs, history or delivery of the others; a value that
can't be encoded for a subscriber (possible only for messages logged before `pub`
checked values) reaches it as an `UntranscodableMsg`, never as an exception.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, cast

import msgspec

from common.durability import (
    ENTRY_OVERHEAD_BYTES,
    DurableLog,
    Encoding,
    Entry,
    HistoryLimits,
    HistoryStore,
    LogUnavailable,
    RecoveredState,
)
from common.errors import RecordRefused
from common.logsetup import Throttle
from core import presence
from core.dedupe import DedupeIndex, MsgId, Publisher
from core.errors import LimitExceeded
from core.outbox import Outbox
from core.protocol import ENCODE, SYS_PREFIX, Msg, UntranscodableMsg, transcode, ws_frame
from core.remote import Forwarded

if TYPE_CHECKING:
    from core.remote import Hops, Remote
    from core.session import Session

logger = logging.getLogger("ferry.router")

SERVER_USER = "ferry"
# How many least-recently-used channels one attempt to make room looks at. Channels in use
# that it passes are moved to the recent end, so the front stays mostly idle ones.
FORGET_SCAN = 64

# Entry.origin as the router sets it: who is owed the answer, their correlation id, when it
# arrived, and the connection the fan-out skips (an HTTP publish's `exclude_client`).
Origin = tuple["Publisher | None", MsgId, float, "Outbox | None"]


class Channel:
    __slots__ = (
        "bytes_end", "durable_seq", "forgotten", "history", "history_bytes", "last_seq",
        "msg_count", "name", "owner", "replayers", "stale", "starts", "stats_mark", "subs",
        "users", "watchers",
    )  # fmt: skip

    def __init__(self, name: str, last_seq: int = 0, owner: str | None = None) -> None:
        self.name = name
        self.last_seq = last_seq  # last seq handed out (may not be durable yet)
        self.durable_seq = last_seq  # last seq acked and delivered
        # one dict of outboxes per encoding: iteration is the fan-out's inner loop
        self.subs: tuple[dict[Outbox, Session], dict[Outbox, Session]] = ({}, {})
        # The ring is made on the first message: most `@user` inboxes never get one, and
        # an empty deque per connection was a tenth of an idle connection's memory.
        self.history: deque[Entry] | tuple[()] = ()
        # Byte accounting without per-entry work when the ring drops by count (maxlen, in
        # C): `starts` holds each entry's start offset in a running byte count that ends at
        # `bytes_end`, so the ring's bytes are `bytes_end - starts[0]` (see _resync).
        self.starts: deque[int] | tuple[()] = ()
        self.bytes_end = 0
        self.history_bytes = 0
        self.stale = 0  # entries of its runs in the router's FIFO that are already gone
        self.msg_count = 0
        self.stats_mark = 0  # msg_count at the last stats snapshot
        self.replayers = 0  # sessions replaying its history (subscribed, not yet attached)
        self.owner = owner  # the user whose pub/sub created it (None: exempt from user limits)
        self.forgotten = False
        # Presence (core/presence.py): attached subscribers per user, kept on attach and
        # detach; None until the first (and never for `@user` inboxes: computed on demand).
        self.users: dict[str, int] | None = None
        # subscribers that asked for `join` / `leave` (`sub … presence: true`)
        self.watchers: dict[Outbox, Encoding] | None = None

    @property
    def subscriber_count(self) -> int:
        return len(self.subs[0]) + len(self.subs[1])

    @property
    def occupants(self) -> int:
        """Subscribers attached or still replaying (what `Router.occupancy` counts)."""
        return len(self.subs[0]) + len(self.subs[1]) + self.replayers

    @property
    def idle(self) -> bool:
        """Nothing would notice if it were forgotten (its head lives on in the log)."""
        return (
            not self.subs[0]
            and not self.subs[1]
            and not self.replayers
            and self.last_seq == self.durable_seq
            and not self.name.startswith(SYS_PREFIX)  # their seq lives only in memory
        )

    def first_index(self, seq: int) -> int:
        """Index of `seq` in the ring (which must hold it)."""
        history = self.history
        assert isinstance(history, deque)
        index = seq - history[0].seq
        if 0 <= index < len(history) and history[index].seq == seq:
            return index
        return bisect.bisect_left(history, seq, key=lambda e: e.seq)  # never expected


class Replay:
    """A session catching up on a channel's history (`sub` with `since`)."""

    __slots__ = ("channel", "deep", "done", "fetching", "next_seq")

    def __init__(self, channel: Channel, next_seq: int, deep: bool = False) -> None:
        self.channel = channel
        self.next_seq = next_seq
        self.done = False
        # below the ring: read from the deep history store (the session drives it)
        self.deep = deep
        self.fetching = False


class Counters:
    """Plain integer counters on the hot path; exported by the metrics collector."""

    __slots__ = (
        "acks", "channels_forgotten", "channels_refused", "deliveries", "duplicates",
        "fanout_faults", "history_dropped", "msgs_in", "publish_failures",
    )  # fmt: skip

    def __init__(self) -> None:
        self.msgs_in = 0
        self.deliveries = 0
        self.acks = 0
        self.publish_failures = 0
        self.fanout_faults = 0
        self.channels_forgotten = 0
        self.channels_refused = 0
        self.history_dropped = 0
        self.duplicates = 0  # publishes answered as duplicates of an earlier mid


_untranscodable = Throttle(logger, 10.0)


def frame_for(entry: Entry, encoding: Encoding) -> bytes:
    """One `msg` WebSocket frame for `entry` in `encoding`. Never raises for a value it
    cannot transcode: that subscriber gets an `UntranscodableMsg` (same seq, no data)."""
    if entry.encoding == encoding:
        msg = Msg(entry.channel, entry.seq, entry.ts_ms, entry.sender, msgspec.Raw(entry.data))
        return ws_frame(encoding, ENCODE[encoding](msg))
    try:
        data = transcode(entry.data, Encoding(entry.encoding), encoding)
    except (msgspec.MsgspecError, TypeError, ValueError, UnicodeError, RecursionError):
        _untranscodable.warning(
            "message %s#%d (LSN %d) cannot be transcoded: its subscribers get it without data",
            entry.channel,
            entry.seq,
            entry.lsn,
        )
        bad = UntranscodableMsg(entry.channel, entry.seq, entry.ts_ms, entry.sender)
        return ws_frame(encoding, ENCODE[encoding](bad))
    msg = Msg(entry.channel, entry.seq, entry.ts_ms, entry.sender, msgspec.Raw(data))
    return ws_frame(encoding, ENCODE[encoding](msg))


class Router:
    def __init__(
        self,
        log: DurableLog,
        history: HistoryLimits | None = None,
        ack_observer: Callable[[float], None] | None = None,
        max_channels_per_user: int = 10_000,
        dedupe: DedupeIndex | None = None,
    ) -> None:
        self.log = log
        # idempotent publish (`pub` with `mid`); off unless given one
        self.dedupe = dedupe if dedupe is not None else DedupeIndex(0, 0, time.time)
        # Epochs (docs/protocol.md): the log's incarnation, from `restore`; `$sys.*`
        # channels, whose seq lives in memory only, are this process's own.
        self.boot_epoch = secrets.token_hex(8)
        # The server is shutting down (Server.shutdown sets it before the log closes): a
        # WebSocket publish read from now on is left unanswered, not refused, and the
        # client resends it (same `mid`) to the server that comes next (docs/protocol.md).
        self.draining = False
        self.epoch = self.boot_epoch
        # Deep history (a `sub … since` below the ring): the store, and how to run its
        # reads (loop.create_task); set by the composition root when there is a database.
        self.deep: HistoryStore | None = None
        self.spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None
        self.history = history if history is not None else HistoryLimits()
        self.max_channels_per_user = max_channels_per_user
        self.channels: dict[str, Channel] = {}  # least recently used first
        self.counters = Counters()
        self._ack_observer = ack_observer
        self._taps: list[Callable[[list[Entry]], None]] = []
        self._owned: dict[str, dict[str, None]] = {}  # user -> channels created, oldest first
        self._subscriptions = 0
        self.internal_channels = 0  # `$sys.*` and `@user` inboxes among self.channels
        # Runs of history entries in LSN order, one [channel, count] per channel group of a
        # durable batch: the globally oldest entry is the first live one (`_trim_history`).
        # Per group, not per entry: the bookkeeping costs one append per channel per batch.
        self._fifo: deque[list[Any]] = deque()
        self.history_bytes = 0
        self._floor = 0
        self._active: dict[Channel, None] = {}  # channels with messages since `take_active`
        self._faults = Throttle(logger, 10.0)
        # Told (channel, True) on 0 -> 1 occupants and (channel, False) on 1 -> 0; never
        # for `$sys.*` or `@user` inboxes (see the module's docstring).
        self.occupancy: Callable[[str, bool], None] | None = None
        # Channels owned by another node of a cluster (core/remote.py); None: one node.
        self.remote: Remote | None = None
        # Told of publishes and deliveries that cross nodes (the flow view); None: unwatched.
        self.hops: Hops | None = None
        log.set_handlers(self.on_durable, self.on_failed)

    # --- state -----------------------------------------------------------------------

    def restore(self, state: RecoveredState) -> None:
        """Rebuild seqs, history rings and the dedupe index from what the log recovered."""
        if state.epoch:
            self.epoch = state.epoch
        if self.dedupe.enabled:
            self.dedupe.restore(state.mids)
        for name, head in state.heads.items():
            ch = self.channels.get(name)
            if ch is None:
                ch = self._add(Channel(name, head))
            ch.last_seq = ch.durable_seq = head
        for name, entries in state.history.items():
            ch = self.channels.get(name) or self.open_channel(name, None)
            self._remember(ch, entries)
        self._trim_history()

    def get(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def epoch_of(self, name: str) -> str:
        """The incarnation of the channel's seq (`subscribed.epoch`): in a cluster, its
        owner's (core/remote.py)."""
        if name.startswith(SYS_PREFIX):
            return self.boot_epoch
        remote = self.remote
        if remote is not None:
            return remote.epoch_of(name) or self.epoch
        return self.epoch

    def open_channel(self, name: str, owner: str | None) -> Channel:
        """The channel `name`, brought into memory if needed (its seq from the log).

        `owner` is the user on whose behalf it is created, for the per-user bound; None
        (the server, an inbox, the admin) is exempt from refusals. Raises `LimitExceeded`.
        """
        ch = self.channels.get(name)
        if ch is not None:
            return ch
        self._make_room(owner)
        ch = self._add(Channel(name, self.log.head_of(name), owner))
        if owner is not None:
            owned = self._owned.get(owner)
            if owned is None:
                owned = self._owned[owner] = {}
            owned[name] = None
        return ch

    def _add(self, ch: Channel) -> Channel:
        self.channels[ch.name] = ch
        if ch.name[0] in "$@":
            self.internal_channels += 1
        return ch

    def _make_room(self, owner: str | None) -> None:
        if owner is not None:
            owned = self._owned.get(owner)
            if (
                owned is not None
                and len(owned) >= self.max_channels_per_user
                and not self._forget_one(owned)
            ):
                self.counters.channels_refused += 1
                raise LimitExceeded(
                    f"user {owner} holds {len(owned)} channels, the most one user may "
                    "create, and none is idle"
                )
        if (
            len(self.channels) >= self.history.max_channels
            and not self._forget_one(self.channels)
            and owner is not None
        ):
            self.counters.channels_refused += 1
            raise LimitExceeded(
                f"this node holds {len(self.channels)} channels, its most, and none is "
                "idle; try again later"
            )

    def _forget_one(self, order: dict[str, None] | dict[str, Channel]) -> bool:
        for name in list(itertools.islice(order, FORGET_SCAN)):
            ch = self.channels[name]
            if ch.idle:
                self._forget(ch)
                return True
            del order[name]  # in use: to the recent end, so the scan finds idle ones
            order[name] = ch if order is self.channels else None  # type: ignore[assignment]
        return False

    def _forget(self, ch: Channel) -> None:
        name = ch.name
        del self.channels[name]
        if name[0] in "$@":
            self.internal_channels -= 1
        ch.forgotten = True
        if ch.owner is not None:
            owned = self._owned.get(ch.owner)
            if owned is not None:
                owned.pop(name, None)
                if not owned:
                    del self._owned[ch.owner]
        if ch.history:
            self.history_bytes -= ch.history_bytes
        ch.history = ch.starts = ()
        ch.history_bytes = 0
        self._active.pop(ch, None)
        self.counters.channels_forgotten += 1

    def _touch(self, ch: Channel) -> None:
        channels = self.channels
        del channels[ch.name]
        channels[ch.name] = ch

    def add_tap(self, tap: Callable[[list[Entry]], None]) -> None:
        """Observe every durable batch (the sampled $sys.tail uses this)."""
        self._taps.append(tap)

    @property
    def subscription_count(self) -> int:
        return self._subscriptions

    def take_active(self) -> list[tuple[Channel, int]]:
        """Channels that got messages since the last call, with how many: O(active)."""
        out = []
        for ch in self._active:
            out.append((ch, ch.msg_count - ch.stats_mark))
            ch.stats_mark = ch.msg_count
        self._active = {}
        return out

    # --- history ---------------------------------------------------------------------

    def _remember(self, ch: Channel, entries: list[Entry]) -> None:
        limits = self.history
        if not limits.size or ch.forgotten:
            return
        history = ch.history
        if not isinstance(history, deque):
            history = ch.history = deque(maxlen=limits.size)
            ch.starts = deque(maxlen=limits.size)
        elif history and entries[0].seq != history[-1].seq + 1:
            # Never expected: a ring must stay gapless, so start it over rather than let a
            # `since` replay skip a seq.
            self._drop_oldest(ch, len(history))
        starts = ch.starts
        assert isinstance(starts, deque)
        n = len(entries)
        sizes = [len(e.data) + ENTRY_OVERHEAD_BYTES for e in entries]  # entry_bytes()
        before = len(history)
        starts.extend(itertools.islice(itertools.accumulate(sizes, initial=ch.bytes_end), n))
        ch.bytes_end += sum(sizes)
        history.extend(entries)  # past `size`, the deque drops the oldest itself
        self._fifo.append([ch, n])
        dropped = before + n - len(history)
        if dropped:
            ch.stale += dropped  # their FIFO entries go when they reach the front
            self.counters.history_dropped += dropped
        self._resync(ch)
        while ch.history_bytes > limits.channel_bytes and history:
            self._drop_oldest(ch, 1)

    def _resync(self, ch: Channel) -> None:
        """Recompute the ring's bytes from its ends; keep the total in step."""
        starts = ch.starts
        now = ch.bytes_end - starts[0] if starts else 0
        self.history_bytes += now - ch.history_bytes
        ch.history_bytes = now

    def _drop_oldest(self, ch: Channel, n: int) -> None:
        history, starts = ch.history, ch.starts
        assert isinstance(history, deque) and isinstance(starts, deque)
        for _ in range(n):
            history.popleft()
            starts.popleft()
        ch.stale += n
        self.counters.history_dropped += n
        self._resync(ch)

    def _trim_history(self) -> None:
        """Drop the globally oldest entries while over `total_bytes`; report the floor."""
        fifo = self._fifo
        total = self.history.total_bytes
        while fifo:
            run = fifo[0]
            ch: Channel = run[0]
            if ch.forgotten:
                fifo.popleft()
                continue
            if ch.stale:
                # The channel's first run holds its oldest entries: the stale ones.
                k = min(ch.stale, run[1])
                ch.stale -= k
                run[1] -= k
            elif self.history_bytes > total:
                history, starts = ch.history, ch.starts
                assert isinstance(history, deque) and isinstance(starts, deque)
                while run[1] and self.history_bytes > total:
                    history.popleft()
                    starts.popleft()
                    self._resync(ch)
                    self.counters.history_dropped += 1
                    run[1] -= 1
            else:
                break
            if not run[1]:
                fifo.popleft()
        floor = 0
        if fifo:
            oldest = fifo[0][0].history
            assert isinstance(oldest, deque)
            floor = oldest[0].lsn
        if floor != self._floor:
            self._floor = floor
            self.log.set_history_floor(floor)

    # --- subscriptions ---------------------------------------------------------------

    def subscribe(
        self,
        session: Session,
        name: str,
        since: int | None,
        owner: str | None,
        epoch: str | None = None,
    ) -> tuple[int, bool | None, Replay | None]:
        """Subscribe `session` to `name`.

        Returns (head, recovered, replay). Without `since` (or when nothing was missed, or
        nothing can be recovered) the session is attached to the live fan-out at once.
        With `since` and missed messages in the history ring, a `Replay` comes back: the
        session pages through it with `replay_page` and is attached when caught up, so a
        long history is paced by the client's socket and never delivered out of order or
        twice. `since` beyond the head means the client saw a stream this node no longer
        has (the seq went backwards): `recovered` is False. So is an `epoch` other than the
        channel's: the client's seq belongs to another incarnation of the stream.
        """
        remote = self.remote
        if remote is not None and not remote.ready(name):
            remote.follow(name, None)  # the inbox at start-up: its head comes later
        ch = self.open_channel(name, owner)
        self._touch(ch)
        head = ch.durable_seq
        if since is None:
            self.attach(session, ch)
            return head, None, None
        if epoch is not None and epoch != self.epoch_of(name):
            self.attach(session, ch)
            return head, False, None
        if since >= head:
            self.attach(session, ch)
            return head, since == head, None
        history = ch.history
        if not history or history[0].seq > since + 1:
            if self.deep is not None and not name.startswith(SYS_PREFIX):
                # older than the ring: the session reads it from the deep store first, and
                # says `recovered` once it knows
                ch.replayers += 1
                return head, None, Replay(ch, since + 1, deep=True)
            self.attach(session, ch)
            return head, False, None
        ch.replayers += 1
        if self.occupancy is not None and ch.occupants == 1:
            self._occupancy(ch, True)
        return head, True, Replay(ch, since + 1)

    def attach(self, session: Session, ch: Channel) -> None:
        subs = ch.subs[session.encoding]
        if session.outbox not in subs:
            subs[session.outbox] = session
            self._subscriptions += 1
            if self.occupancy is not None and ch.occupants == 1:
                self._occupancy(ch, True)
            if ch.name[0] != "@":
                presence.joined(ch, session.user)

    def _occupancy(self, ch: Channel, occupied: bool) -> None:
        observer = self.occupancy
        if observer is None or ch.name[0] in "$@":
            return
        try:
            observer(ch.name, occupied)
        except Exception:  # an observer's fault must not cost the subscriber anything
            self._faults.exception("occupancy observer failed for channel %s", ch.name)

    def replay_page(self, session: Session, replay: Replay, budget: int) -> bool | None:
        """Push history from `replay.next_seq` until `budget` bytes are queued in the
        session's outbox, moving `next_seq` past each entry pushed. Returns True once
        caught up (the session is then attached), False while more is left, None when the
        ring no longer holds `next_seq` (the client fell behind: overrun)."""
        ch = replay.channel
        if ch.forgotten:
            self.end_replay(replay)
            return None
        if replay.next_seq > ch.durable_seq:
            self._finish_replay(session, replay)
            return True
        history = ch.history
        if not history or history[0].seq > replay.next_seq:
            self.end_replay(replay)
            return None
        outbox = session.outbox
        encoding = session.encoding
        for entry in itertools.islice(history, ch.first_index(replay.next_seq), None):
            outbox.push(frame_for(entry, encoding))
            replay.next_seq = entry.seq + 1
            if outbox.size >= budget:
                break
        if replay.next_seq > ch.durable_seq:
            self._finish_replay(session, replay)
            return True
        return False

    def _finish_replay(self, session: Session, replay: Replay) -> None:
        # attached before the replay ends: the channel's occupants never pass through 0
        self.attach(session, replay.channel)
        self.end_replay(replay)

    def end_replay(self, replay: Replay) -> None:
        """The session stops replaying (caught up, overrun, unsub or gone)."""
        if not replay.done:
            replay.done = True
            ch = replay.channel
            ch.replayers -= 1
            if self.occupancy is not None and not ch.occupants:
                self._occupancy(ch, False)

    def unsubscribe(self, session: Session, name: str) -> bool:
        ch = self.channels.get(name)
        if ch is None:
            return False
        if ch.watchers is not None:
            presence.unwatch(ch, session.outbox)
        removed = ch.subs[session.encoding].pop(session.outbox, None) is not None
        if removed:
            self._subscriptions -= 1
            if ch.users is not None:
                presence.left(ch, session.user)
            if self.occupancy is not None and not ch.occupants:
                self._occupancy(ch, False)
        if not ch.history and ch.idle:
            # Nobody left and no history to keep: forget it now (its head stays in the
            # log). Otherwise every inbox and every name ever subscribed to would stay.
            self._forget(ch)
        return removed

    def drop(self, session: Session, names: Iterable[str]) -> None:
        for name in names:
            self.unsubscribe(session, name)

    # --- publish ---------------------------------------------------------------------

    def publish(
        self,
        session: Publisher | None,
        name: str,
        data: bytes,
        encoding: Encoding,
        msg_id: MsgId,
        sender: str,
        owner: str | None = None,
        mid: str | None = None,
        exclude: Outbox | None = None,
    ) -> None:
        """Hand a publish to the log; ack + fan-out follow in `on_durable`.

        With a `mid` the dedupe index is asked first: a duplicate is acked (`dup`) with
        the original's seq, now if it is durable or when it becomes so, and nothing is
        logged. Raises LogUnavailable when the log cannot accept it (nothing is acked) and
        LimitExceeded when the channel would be one too many.
        """
        remote = self.remote
        if remote is not None and remote.elsewhere(name):
            # the owner assigns the seq, dedupes the mid and answers the publisher
            remote.publish(session, Forwarded(name, data, encoding, msg_id, sender, owner, mid))
            if self.hops is not None:
                self.hops.forwarded(sender, name)
            return
        dedupe = self.dedupe
        if mid is not None and dedupe.enabled:
            key = (sender, name, mid)
            seen = dedupe.lookup(key)
            if seen is not None:
                self.counters.duplicates += 1
                if session is not None:
                    if seen.waiters is None:  # the original is durable
                        session.ack(name, seen.seq, seen.ts_ms, msg_id, True)
                    else:
                        seen.waiters.append((session, msg_id))
                return
        ch = self.open_channel(name, owner)
        ch.last_seq += 1
        entry = Entry(
            name,
            ch.last_seq,
            time.time_ns() // 1_000_000,
            sender,
            None if msg_id is None else str(msg_id),
            encoding,
            data,
            (session, msg_id, time.perf_counter(), exclude),
            mid=mid,
        )
        try:
            self.log.append(entry)
        except LogUnavailable:
            ch.last_seq -= 1
            self.counters.publish_failures += 1
            raise
        except RecordRefused:
            # the log refuses the record (too large for its format): no seq is used up;
            # the session answers too_large (core.errors.ANSWERS)
            ch.last_seq -= 1
            raise
        self.counters.msgs_in += 1
        if mid is not None and dedupe.enabled:
            dedupe.add((sender, name, mid), ch.last_seq, entry.ts_ms)

    def publish_ephemeral(self, name: str, data_json: bytes) -> None:
        """Deliver a server message ($sys.*) without logging it: it is state, not history."""
        ch = self.open_channel(name, None)
        ch.last_seq += 1
        entry = Entry(
            name,
            ch.last_seq,
            time.time_ns() // 1_000_000,
            SERVER_USER,
            None,
            Encoding.JSON,
            data_json,
        )
        ch.durable_seq = ch.last_seq
        self._deliver(ch, [entry])

    # --- log callbacks ---------------------------------------------------------------

    def on_durable(self, entries: list[Entry]) -> None:
        groups: dict[str, list[Entry]] = {}
        now = time.perf_counter()
        observe = self._ack_observer
        acks = 0
        dedupe = self.dedupe
        excluded: dict[Entry, Outbox] | None = None
        for entry in entries:
            if entry.mid is not None:
                dedupe.durable((entry.sender, entry.channel, entry.mid))
            origin = entry.origin
            if origin is not None:
                session, msg_id, t0, exclude = cast(Origin, origin)
                entry.origin = None
                if exclude is not None:
                    if excluded is None:
                        excluded = {}
                    excluded[entry] = exclude
                if session is not None:
                    try:
                        session.ack(entry.channel, entry.seq, entry.ts_ms, msg_id)
                    except Exception:
                        self._fault(entry.channel)
                    acks += 1
                    if observe is not None:
                        observe(now - t0)
            group = groups.get(entry.channel)
            if group is None:
                groups[entry.channel] = [entry]
            else:
                group.append(entry)
        self.counters.acks += acks
        for name, group in groups.items():
            # Each channel on its own: one failure must not cost the others their
            # delivery, seq or history.
            try:
                ch = self.channels.get(name)
                if ch is None:  # never expected: a channel with appends in flight is kept
                    ch = self.open_channel(name, None)
                else:
                    self._touch(ch)
                ch.durable_seq = group[-1].seq
                ch.msg_count += len(group)
                self._active[ch] = None
                self._remember(ch, group)
                if excluded is None:
                    self._deliver(ch, group)
                else:
                    self._deliver_excluding(ch, group, excluded)
            except Exception:
                self._fault(name)
        self._trim_history()
        for tap in self._taps:
            try:
                tap(entries)
            except Exception:
                self._fault("(tap)")

    # --- cluster: channels owned by another node (core/remote.py, docs/cluster.md) ------

    def apply_remote(self, name: str, entries: list[Entry]) -> bool:
        """Durable messages of a channel its owner made durable, in seq order (a feed
        message or a resync's history): the ones past the channel's head go into its ring
        and to its subscribers. Those at or below the head are skipped (never delivered
        twice). False on a gap: the caller resyncs. A channel not held here is ignored."""
        ch = self.channels.get(name)
        if ch is None:
            return True
        head = ch.durable_seq
        fresh = [e for e in entries if e.seq > head]
        if not fresh:
            return True
        if fresh[-1].seq - fresh[0].seq != len(fresh) - 1 or fresh[0].seq != head + 1:
            return False
        ch.last_seq = ch.durable_seq = fresh[-1].seq
        ch.msg_count += len(fresh)
        self._active[ch] = None
        if self.hops is not None:
            self.hops.fed(name, len(fresh))
        try:
            self._remember(ch, fresh)
            self._deliver(ch, fresh)
        except Exception:
            self._fault(name)
        self._trim_history()
        return True

    def reset_remote(self, name: str, head: int) -> None:
        """The owner says the channel's head is `head` (a first sync, or a gap nobody can
        fill): the channel continues from there, its ring starts over."""
        ch = self.channels.get(name) or self.open_channel(name, None)
        if ch.durable_seq == head:
            return
        if ch.history:
            self._drop_oldest(ch, len(ch.history))
            self._resync(ch)
        ch.last_seq = ch.durable_seq = head

    def _fault(self, name: str) -> None:
        self.counters.fanout_faults += 1
        self._faults.exception("fan-out failed for channel %s", name)

    def on_failed(self, entries: list[Entry], reason: str) -> None:
        for entry in entries:
            if entry.mid is not None:
                self.dedupe.failed((entry.sender, entry.channel, entry.mid))
            origin = entry.origin
            entry.origin = None
            if origin is not None:
                session, msg_id, _, _ = cast(Origin, origin)
                if session is not None:
                    session.unavailable(msg_id)
            ch = self.channels.get(entry.channel)
            if ch is not None and ch.last_seq >= entry.seq:
                # Nothing after a failure is ever acked: the seqs handed out are void.
                ch.last_seq = min(ch.last_seq, entry.seq - 1)
        self.counters.publish_failures += len(entries)

    def _deliver(self, ch: Channel, entries: list[Entry]) -> None:
        delivered = 0
        for encoding in (Encoding.JSON, Encoding.MSGPACK):
            subs = ch.subs[encoding]
            if not subs:
                continue
            if len(entries) == 1:
                frames = frame_for(entries[0], encoding)
            else:
                frames = b"".join([frame_for(e, encoding) for e in entries])
            # The inner loop of the whole relay: same bytes object to every outbox.
            for outbox in subs:
                outbox.push(frames)
            delivered += len(subs)
        self.counters.deliveries += delivered * len(entries)

    def _deliver_excluding(
        self, ch: Channel, entries: list[Entry], excluded: dict[Entry, Outbox]
    ) -> None:
        """A batch holding messages published with `exclude_client`: each of those goes to
        every subscriber but that one connection, the rest as usual (in seq order)."""
        run: list[Entry] = []
        for entry in entries:
            skip = excluded.get(entry)
            if skip is None:
                run.append(entry)
                continue
            if run:
                self._deliver(ch, run)
                run = []
            delivered = 0
            for encoding in (Encoding.JSON, Encoding.MSGPACK):
                subs = ch.subs[encoding]
                if subs:
                    frame = frame_for(entry, encoding)
                    for outbox in subs:
                        if outbox is not skip:
                            outbox.push(frame)
                            delivered += 1
            self.counters.deliveries += delivered
        if run:
            self._deliver(ch, run)
