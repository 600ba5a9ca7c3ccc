"""Channels -> subscribers, per-channel seq, history ring, and the durable fan-out.

A publish gets its channel seq here, goes to the `DurableLog`, and is acked and fanned
out only in `on_durable`, once the log says its batch is on disk (DESIGN §2). Fan-out
groups a durable batch by channel, encodes the channel's new `msg` frames ONCE per wire
encoding (joined into one bytes object) and pushes that same object to every
subscriber's outbox: per subscriber the cost is one list append, whatever the batch size.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

import msgspec

from core.errors import TooLarge
from core.log import DurableLog, Encoding, Entry, LogUnavailable, RecoveredState
from core.outbox import Outbox
from core.protocol import ENCODE, Msg, transcode, ws_frame

if TYPE_CHECKING:
    from core.session import Session

SERVER_USER = "ferry"

# Entry.origin as the router sets it: who published, their message id, when it arrived.
Origin = tuple["Session | None", "str | int | None", float]


class Channel:
    __slots__ = ("durable_seq", "history", "history_size", "last_seq", "msg_count", "name", "subs")

    def __init__(self, name: str, history_size: int, last_seq: int = 0) -> None:
        self.name = name
        self.last_seq = last_seq  # last seq handed out (may not be durable yet)
        self.durable_seq = last_seq  # last seq acked and delivered
        # one dict of outboxes per encoding: iteration is the fan-out's inner loop
        self.subs: tuple[dict[Outbox, Session], dict[Outbox, Session]] = ({}, {})
        # The ring is made on the first message: most `@user` inboxes never get one, and
        # an empty deque per connection was a tenth of an idle connection's memory.
        self.history: deque[Entry] | tuple[()] = ()
        self.history_size = history_size
        self.msg_count = 0

    def remember(self, entries: list[Entry]) -> None:
        history = self.history
        if not isinstance(history, deque):
            if not self.history_size:
                return
            history = self.history = deque(maxlen=self.history_size)
        history.extend(entries)

    @property
    def subscriber_count(self) -> int:
        return len(self.subs[0]) + len(self.subs[1])


class Counters:
    """Plain integer counters on the hot path; exported by the metrics collector."""

    __slots__ = ("acks", "deliveries", "msgs_in", "publish_failures")

    def __init__(self) -> None:
        self.msgs_in = 0
        self.deliveries = 0
        self.acks = 0
        self.publish_failures = 0


def frame_for(entry: Entry, encoding: Encoding) -> bytes:
    """One `msg` WebSocket frame for `entry` in `encoding`."""
    data = (
        entry.data
        if entry.encoding == encoding
        else transcode(entry.data, Encoding(entry.encoding), encoding)
    )
    msg = Msg(entry.channel, entry.seq, entry.ts_ms, entry.sender, msgspec.Raw(data))
    return ws_frame(encoding, ENCODE[encoding](msg))


class Router:
    def __init__(
        self,
        log: DurableLog,
        history_size: int,
        ack_observer: Callable[[float], None] | None = None,
    ) -> None:
        self.log = log
        self.history_size = history_size
        self.channels: dict[str, Channel] = {}
        self.counters = Counters()
        self._ack_observer = ack_observer
        self._taps: list[Callable[[list[Entry]], None]] = []
        log.set_handlers(self.on_durable, self.on_failed)

    # --- state -----------------------------------------------------------------------

    def restore(self, state: RecoveredState) -> None:
        """Rebuild seqs and history rings from what the log recovered."""
        for name, head in state.heads.items():
            ch = self.channel(name)
            ch.last_seq = ch.durable_seq = head
        for name, entries in state.history.items():
            self.channel(name).remember(entries)

    def channel(self, name: str) -> Channel:
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel(name, self.history_size)
        return ch

    def add_tap(self, tap: Callable[[list[Entry]], None]) -> None:
        """Observe every durable batch (the sampled $sys.tail uses this)."""
        self._taps.append(tap)

    @property
    def subscription_count(self) -> int:
        return sum(ch.subscriber_count for ch in self.channels.values())

    # --- subscriptions ---------------------------------------------------------------

    def subscribe(
        self, session: Session, name: str, since: int | None
    ) -> tuple[int, bool | None, bool]:
        """Subscribe `session` to `name`.

        Returns (head, recovered, attached). Without `since` (or when nothing was missed)
        the session is attached to the live fan-out at once. With `since` and missed
        messages in the history ring, `attached` is False: the session replays them
        with `replay_page` first and `attach`es when caught up, so a long history is
        paced by the client's socket and never delivered out of order or twice.
        """
        ch = self.channel(name)
        if since is None or since >= ch.durable_seq:
            self.attach(session, ch)
            return ch.durable_seq, None if since is None else True, True
        history = ch.history
        if not history or history[0].seq > since + 1:
            self.attach(session, ch)
            return ch.durable_seq, False, True
        return ch.durable_seq, True, False

    def attach(self, session: Session, ch: Channel) -> None:
        ch.subs[session.encoding][session.outbox] = session

    def replay_page(self, session: Session, name: str, next_seq: int, budget: int) -> int | None:
        """Push history from `next_seq` until `budget` bytes are queued in the session's
        outbox. Returns the next seq to replay, 0 once caught up (then the session is
        attached), or None when the ring no longer holds `next_seq` (overrun)."""
        ch = self.channels.get(name)
        if ch is None:
            return None
        history = ch.history
        if next_seq > ch.durable_seq:
            self.attach(session, ch)
            return 0
        if not history or history[0].seq > next_seq:
            return None
        outbox = session.outbox
        encoding = session.encoding
        for entry in itertools.islice(history, next_seq - history[0].seq, None):
            outbox.push(frame_for(entry, encoding))
            next_seq = entry.seq + 1
            if outbox.size >= budget:
                break
        if next_seq > ch.durable_seq:
            self.attach(session, ch)
            return 0
        return next_seq

    def unsubscribe(self, session: Session, name: str) -> bool:
        ch = self.channels.get(name)
        if ch is None:
            return False
        removed = ch.subs[session.encoding].pop(session.outbox, None) is not None
        if not ch.last_seq and not ch.subscriber_count:
            # Never published to and nobody left: forget it (a channel that has messages
            # keeps its seq). Otherwise every inbox and every name ever subscribed to
            # would stay in memory for good.
            del self.channels[name]
        return removed

    def drop(self, session: Session, names: Iterable[str]) -> None:
        for name in names:
            self.unsubscribe(session, name)

    # --- publish ---------------------------------------------------------------------

    def publish(
        self,
        session: Session | None,
        name: str,
        data: bytes,
        encoding: Encoding,
        msg_id: str | int | None,
        sender: str,
    ) -> None:
        """Hand a publish to the log; ack + fan-out follow in `on_durable`.

        Raises LogUnavailable when the log cannot accept it (nothing is acked).
        """
        ch = self.channel(name)
        ch.last_seq += 1
        entry = Entry(
            name,
            ch.last_seq,
            time.time_ns() // 1_000_000,
            sender,
            None if msg_id is None else str(msg_id),
            encoding,
            data,
            (session, msg_id, time.perf_counter()),
        )
        try:
            self.log.append(entry)
        except LogUnavailable:
            ch.last_seq -= 1
            self.counters.publish_failures += 1
            raise
        except ValueError:
            # the log refuses the record (too large for its format): no seq is used up
            ch.last_seq -= 1
            raise TooLarge("message too large for the log") from None
        self.counters.msgs_in += 1

    def publish_ephemeral(self, name: str, data_json: bytes) -> None:
        """Deliver a server message ($sys.*) without logging it: it is state, not history."""
        ch = self.channel(name)
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
        for entry in entries:
            origin = entry.origin
            if origin is not None:
                session, msg_id, t0 = cast(Origin, origin)
                entry.origin = None
                if session is not None:
                    session.ack(entry.channel, entry.seq, msg_id)
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
            ch = self.channel(name)
            ch.durable_seq = group[-1].seq
            ch.msg_count += len(group)
            ch.remember(group)
            self._deliver(ch, group)
        for tap in self._taps:
            tap(entries)

    def on_failed(self, entries: list[Entry], reason: str) -> None:
        for entry in entries:
            origin = entry.origin
            entry.origin = None
            if origin is not None:
                session, msg_id, _ = cast(Origin, origin)
                if session is not None:
                    session.unavailable(msg_id)
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
