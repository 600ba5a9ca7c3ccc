"""Bounded per-connection outboxes, flushed as ONE socket write per event-loop iteration.

Fan-out appends already-framed bytes (shared by every subscriber) to each outbox; the
first append in an iteration registers the outbox with the `Flusher`, which runs once
at the next iteration and hands each dirty outbox's chunks to its transport in a single
`writelines` call (one writev). Many messages per tick therefore cost one syscall per
connection, not one per message.

Slow-consumer policy: while the transport says `pause_writing` (its buffer passed the
high-water mark) nothing is written and chunks accumulate here. When the unsent bytes
pass `limit`, the outbox drops its chunks, discards whatever else is pushed and calls
`on_overflow` exactly once; the connection is then closed with 4408 (its session lets
the acks it still owes through first: `accept_again`). Other connections are unaffected:
their outboxes, and the shared frames they reference, are independent.

Isolation: an exception while one outbox flushes or refills (a paced producer that
fails) is that outbox's alone: the `Flusher` goes on with the others and the outbox
reports it through `on_fault` (the connection is closed with 1011).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Protocol

from common.latency import LatencyHistogram
from common.logsetup import Throttle
from core.scheduling import Soon, soon_in_running_loop

log = logging.getLogger("ferry.outbox")
_faults = Throttle(log, 10.0)


class Writer(Protocol):
    def writelines(self, chunks: Sequence[bytes]) -> None: ...


class Flusher:
    """Runs every dirty outbox's flush once per loop iteration.

    `call_soon` is how the next iteration is reached: the loop's `call_soon` in the
    server, a hand-run queue in the sans-I/O tests (tests/core/world.py)."""

    __slots__ = (
        "_call_soon", "_pending", "_scheduled", "_timed_from", "bytes_out", "flush_stage",
        "writes",
    )  # fmt: skip

    def __init__(
        self, call_soon: Soon = soon_in_running_loop, flush_stage: LatencyHistogram | None = None
    ) -> None:
        self._call_soon = call_soon
        self._pending: list[Outbox] = []
        self._scheduled = False
        self.bytes_out = 0
        self.writes = 0
        # the `flush` stage (common.latency.PUBLISH_STAGES): from time_next_flush() to the
        # end of the flush after it
        self.flush_stage = flush_stage
        self._timed_from = 0.0

    def time_next_flush(self) -> None:
        """A batch was delivered now: time until the flush it scheduled has written it
        (nothing to time if it queued nothing)."""
        if self._scheduled and not self._timed_from and self.flush_stage is not None:
            self._timed_from = perf_counter()

    def mark(self, outbox: Outbox) -> None:
        self._pending.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for outbox in pending:
            outbox.dirty = False
            try:
                sent = outbox.flush()
            except Exception as exc:
                outbox.fault(exc)
                continue
            if sent:
                self.bytes_out += sent
                self.writes += 1
        if self._timed_from:
            assert self.flush_stage is not None
            self.flush_stage.observe(perf_counter() - self._timed_from)
            self._timed_from = 0.0


class Outbox:
    __slots__ = (
        "_flusher",
        "_writer",
        "chunks",
        "closed",
        "dirty",
        "discarding",
        "limit",
        "on_fault",
        "on_overflow",
        "paused",
        "refill",
        "size",
    )

    def __init__(
        self,
        writer: Writer,
        flusher: Flusher,
        limit: int,
        on_overflow: Callable[[], None],
        on_fault: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._writer = writer
        self._flusher = flusher
        self.limit = limit
        self.on_overflow = on_overflow
        self.on_fault = on_fault
        self.chunks: list[bytes] = []
        self.size = 0
        self.dirty = False
        self.paused = False
        self.closed = False
        self.discarding = False  # overflowed: pushes are dropped until `accept_again`
        # Called after a flush while set: a paced producer (history replay) adds the
        # next page only once the previous one went to the socket.
        self.refill: Callable[[], None] | None = None

    def push(self, data: bytes) -> None:
        if self.closed or self.discarding:
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size > self.limit:
            self._overflow()
        elif not self.dirty:
            self.dirty = True
            self._flusher.mark(self)

    def _overflow(self) -> None:
        self.chunks = []
        self.size = 0
        self.discarding = True
        self.refill = None
        self.on_overflow()

    def accept_again(self) -> None:
        """After an overflow: take frames again (the closing session's last acks)."""
        self.discarding = False

    def fault(self, exc: BaseException) -> None:
        """Flushing or refilling this outbox raised: drop it, tell the connection."""
        _faults.exception("outbox flush failed; closing that connection")
        self.chunks = []
        self.size = 0
        self.refill = None
        self.discarding = True
        if self.on_fault is not None:
            self.on_fault(exc)

    def flush(self) -> int:
        """Write everything queued in one call; returns bytes written (0 when paused)."""
        if self.paused or not self.chunks or self.closed:
            return 0
        chunks, size = self.chunks, self.size
        self.chunks = []
        self.size = 0
        self._writer.writelines(chunks)
        if self.refill is not None and not self.paused:
            self.refill()
        return size

    def flush_now(self) -> int:
        """Flush outside the per-tick cycle (before a close frame, at shutdown)."""
        if self.paused:
            self.paused = False  # closing: hand the transport what we have, it buffers it
        return self.flush()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        if self.closed or self.dirty:
            return
        if self.chunks:
            self.dirty = True
            self._flusher.mark(self)
        elif self.refill is not None:
            try:
                self.refill()
            except Exception as exc:
                self.fault(exc)

    def close(self) -> None:
        self.closed = True
        self.chunks = []
        self.size = 0
