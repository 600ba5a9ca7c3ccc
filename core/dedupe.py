"""Idempotent publish: which `mid`s were accepted lately, and with what seq.

A `pub` may carry a `mid`, a message id its publisher makes unique; a retry of the same
(user, channel, mid) within the window is a duplicate: it is acked with the original
seq and `dup: true`, and nothing is logged or delivered (docs/protocol.md, "Idempotent
publish"). The index is what makes that decision, with no I/O:

    publish with mid ──lookup──▶ unknown: remember it (pending) and publish
                          │      durable: ack dup with its seq at once
                          └────▶ pending: wait; ack dup when the original is durable,
                                 `unavailable` when its write fails (then forget it)

Entries are kept in arrival order, so the oldest is always first: expiry by time and
the entry cap both drop from the front, O(1) per entry. An entry evicted by the cap
before its window ran out is counted (`evictions`): a retry of it would be a new message.

At start-up the log hands back the mids it holds from within the window
(`RecoveredState.mids`); `restore` puts them back, so a crash between the fdatasync and
the ack does not turn the client's retry into a second message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

Key = tuple[str, str, str]  # (sender, channel, mid)
MsgId = str | int | None


class Publisher(Protocol):
    """Whoever is owed the answer to a publish: a WebSocket session, an HTTP request."""

    def ack(self, channel: str, seq: int, ts_ms: int, msg_id: MsgId, dup: bool = False) -> None:
        """The message is durable (`dup`: an earlier publish of its mid was)."""
        ...

    def unavailable(self, msg_id: MsgId, error: BaseException | None = None) -> None:
        """The log could not take it: nothing was accepted (`error`, when given, says
        otherwise: a cluster's owner unreachable, or the outcome unknown)."""
        ...


class Seen:
    __slots__ = ("at", "seq", "ts_ms", "waiters")

    def __init__(self, seq: int, ts_ms: int, at: float, durable: bool) -> None:
        self.seq = seq
        self.ts_ms = ts_ms  # the original's `ts`
        self.at = at  # when it was accepted, on the index's clock (the window runs from it)
        # None once durable; while pending, the duplicates waiting for it
        self.waiters: list[tuple[Publisher, MsgId]] | None = None if durable else []


class DedupeIndex:
    """(sender, channel, mid) -> the seq it got, for `window_s` seconds, at most
    `max_entries` entries. `clock` is wall time in seconds (recovered entries carry the
    WAL's `ts_ms`)."""

    def __init__(self, window_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[Key, Seen] = {}  # insertion order = arrival order
        self.evictions = 0  # dropped by the cap before their window ran out
        self.expired = 0

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def enabled(self) -> bool:
        return self.window_s > 0 and self.max_entries > 0

    def lookup(self, key: Key) -> Seen | None:
        """The entry for `key` if it is within the window (a duplicate), else None."""
        seen = self._seen.get(key)
        if seen is None:
            return None
        if seen.at < self._clock() - self.window_s:
            self._expire(self._clock())
            return None
        return seen

    def add(self, key: Key, seq: int, ts_ms: int) -> Seen:
        """Remember a new publish (pending until `durable`)."""
        now = self._clock()
        self._expire(now)
        seen = self._seen[key] = Seen(seq, ts_ms, now, durable=False)
        if len(self._seen) > self.max_entries:
            self._evict()
        return seen

    def durable(self, key: Key) -> None:
        """The original is on disk: its waiting duplicates get their ack (dup)."""
        seen = self._seen.get(key)
        if seen is None or seen.waiters is None:
            return
        waiters, seen.waiters = seen.waiters, None
        for publisher, msg_id in waiters:
            publisher.ack(key[1], seen.seq, seen.ts_ms, msg_id, True)
        if len(self._seen) > self.max_entries:  # pending ones held it over the cap
            self._evict()

    def failed(self, key: Key) -> None:
        """The original's write failed: forget it; its waiting duplicates fail too."""
        seen = self._seen.pop(key, None)
        if seen is None or not seen.waiters:
            return
        for publisher, msg_id in seen.waiters:
            publisher.unavailable(msg_id)

    def restore(self, entries: Iterable[tuple[str, str, str, int, int]]) -> int:
        """Put back recovered (sender, channel, mid, seq, ts_ms), oldest first; the ones
        outside the window are skipped. Returns how many were restored."""
        floor = self._clock() - self.window_s
        seen = self._seen
        n = 0
        for sender, channel, mid, seq, ts_ms in entries:
            at = ts_ms / 1000.0
            if at < floor:
                continue
            key = (sender, channel, mid)
            seen.pop(key, None)  # keep arrival order: a later record is the newer one
            seen[key] = Seen(seq, ts_ms, at, durable=True)
            n += 1
        while len(seen) > self.max_entries:
            self._evict()
        return n

    def _expire(self, now: float) -> None:
        floor = now - self.window_s
        seen = self._seen
        while seen:
            key = next(iter(seen))
            entry = seen[key]
            if entry.at >= floor or entry.waiters:  # a pending one waits for its answer
                break
            del seen[key]
            self.expired += 1

    def _evict(self) -> None:
        """Drop the oldest entry to keep within the cap, unless it is still pending (its
        retries must keep finding it; pending entries are bounded by what is in flight)."""
        seen = self._seen
        key = next(iter(seen))
        if seen[key].waiters is not None:
            return
        del seen[key]
        self.evictions += 1
