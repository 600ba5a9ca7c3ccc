"""`MemoryLog`: the in-memory `DurableLog` (`ferry serve --durability memory`, tests).

"Durable" once the next loop iteration runs; nothing survives a restart.
"""

from __future__ import annotations

from time import perf_counter

from common.durability import (
    DurableHandler,
    Entry,
    FailedHandler,
    HistoryLimits,
    LogUnavailable,
    RecoveredState,
)
from common.latency import Stages
from core.scheduling import Soon, soon_in_running_loop


class MemoryLog:
    """In-memory stand-in for the WAL: "durable" once the next loop iteration runs.

    Nothing survives a restart. Useful for tests of the relay alone and for
    `ferry serve --durability memory` when durability is explicitly not wanted. `call_soon`
    reaches the next iteration (a test's hand-run queue runs it without a loop).
    """

    def __init__(self, call_soon: Soon = soon_in_running_loop) -> None:
        self._call_soon = call_soon
        self._next_lsn = 1
        self._batch: list[Entry] = []
        self._on_durable: DurableHandler | None = None
        self._on_failed: FailedHandler | None = None
        self._closed = False
        self._scheduled = False
        self._heads: dict[str, int] = {}
        self.appended = 0
        self.stages = Stages()  # only `deliver` (and the relay's `flush`): no disk stages

    async def open(self, limits: HistoryLimits) -> RecoveredState:
        return RecoveredState(next_lsn=self._next_lsn)

    def set_handlers(self, on_durable: DurableHandler, on_failed: FailedHandler) -> None:
        self._on_durable = on_durable
        self._on_failed = on_failed

    def append(self, entry: Entry) -> None:
        if self._closed:
            raise LogUnavailable("log is closed")
        entry.lsn = self._next_lsn
        self._next_lsn += 1
        self._batch.append(entry)
        self.appended += 1
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._batch = self._batch, []
        heads = self._heads
        for entry in batch:
            heads[entry.channel] = entry.seq
        if batch and self._on_durable is not None:
            start = perf_counter()
            self._on_durable(batch)
            self.stages.hists["deliver"].observe(perf_counter() - start)

    def head_of(self, channel: str) -> int:
        return self._heads.get(channel, 0)

    def set_history_floor(self, lsn: int) -> None:
        pass  # nothing to retain: the memory log keeps nothing

    @property
    def writable(self) -> bool:
        return not self._closed

    @property
    def failure(self) -> str | None:
        return "closed" if self._closed else None

    def stats(self) -> dict[str, float]:
        return {"head_lsn": float(self._next_lsn - 1), "appends": float(self.appended)}

    async def close(self) -> None:
        if self._closed:
            return
        self._flush()
        self._closed = True
