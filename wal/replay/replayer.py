"""The replayer: drains the WAL into a database sink, exactly once, through outages.

    checkpoint (from the sink) ─▶ read records (checkpoint, durable head] ─▶ batch
        ─▶ sink.write(rows + new checkpoint, ONE transaction) ─▶ repeat

Exactly once: rows are inserted idempotently on (node, lsn) and the checkpoint moves in
the same transaction, so a crash anywhere leaves the database either before or after
the whole batch; the next start resumes after the committed checkpoint.

It never reads past the durable head it is given (`durable_lsn`), so a row can never
reach the database ahead of its fdatasync. A lock file (`wal.lockfile.replay_lock`) keeps
two replayers off one WAL.

Database states, all in one table:

    up ──error──▶ down ──write ok──▶ recovering ──caught up──▶ up
                   ▲                      │
                   └────────error─────────┘

While down it retries with exponential backoff and jitter; the relay keeps acking, the
WAL holds the backlog, and a backlog drains in large batches when the database returns.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from common.durability import RecordType
from wal.errors import SinkError
from wal.reader import LogFollower
from wal.record import ConnectionEvent, MessagePayload
from wal.sinks.base import EventRow, MessageRow, RowBatch, Sink, redact_url

log = logging.getLogger("ferry.replayer")


class DbState(enum.StrEnum):
    STARTING = "starting"
    UP = "up"
    DOWN = "down"
    RECOVERING = "recovering"


TRANSITIONS: dict[DbState, frozenset[DbState]] = {
    DbState.STARTING: frozenset({DbState.UP, DbState.DOWN}),
    DbState.UP: frozenset({DbState.DOWN}),
    DbState.DOWN: frozenset({DbState.RECOVERING, DbState.UP}),
    DbState.RECOVERING: frozenset({DbState.UP, DbState.DOWN}),
}


@dataclass
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog's 'full jitter')."""

    base: float = 0.2
    cap: float = 5.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = random.uniform(0, min(self.cap, self.base * (2**self.attempt)))
        self.attempt += 1
        return max(delay, self.base / 2)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class ReplayStatus:
    state: DbState = DbState.STARTING
    last_error: str | None = None
    checkpoint: int = 0
    durable_lsn: int = 0
    rows: int = 0
    batches: int = 0
    lag_seconds: float = 0.0
    since: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "last_error": self.last_error,
            "checkpoint": self.checkpoint,
            "durable_lsn": self.durable_lsn,
            "rows": self.rows,
            "batches": self.batches,
            "lag_records": max(0, self.durable_lsn - self.checkpoint),
            "lag_seconds": round(self.lag_seconds, 3),
        }


Fault = Callable[[str], None]


def _no_fault(point: str) -> None:
    return None


class Replayer:
    """Moves WAL records into `sink`. Drive it with `run()` (follow) or `drain()`."""

    def __init__(
        self,
        wal_dir: str,
        sink: Sink,
        node_id: str,
        *,
        batch_rows: int = 20_000,
        min_batch_interval: float = 0.25,  # caught up: commit at most ~4x/s (fewer fsyncs)
        from_lsn: int | None = None,
        on_status: Callable[[ReplayStatus], None] | None = None,
        fault: Fault = _no_fault,
    ) -> None:
        self.wal_dir = wal_dir
        self.sink = sink
        self.node_id = node_id
        self.batch_rows = batch_rows
        self.min_batch_interval = min_batch_interval
        self.from_lsn = from_lsn
        self.status = ReplayStatus()
        self._on_status = on_status
        self._fault = fault
        sink.fault = fault
        self._durable_known = False  # False: read whatever is on disk (standalone tool)
        self._wake = asyncio.Event()
        self._stopping = False
        self._next_lsn = 1
        self._follower: LogFollower | None = None
        self._prefetch: tuple[int, asyncio.Future[RowBatch]] | None = None
        self._pending_since = 0.0  # unix time of the oldest record of a batch not yet written
        self._backoff = Backoff()

    # --- inputs --------------------------------------------------------------------------

    def set_durable(self, lsn: int) -> None:
        """The writer's durable head: nothing past it is read."""
        self._durable_known = True
        if lsn > self.status.durable_lsn:
            self.status.durable_lsn = lsn
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # --- state ---------------------------------------------------------------------------

    def _move(self, new: DbState, error: str | None = None) -> None:
        old = self.status.state
        self.status.last_error = error
        if old == new:
            return
        if new not in TRANSITIONS[old]:
            raise RuntimeError(f"replayer: {old} -> {new}")
        self.status.state = new
        self.status.since = time.monotonic()
        level = logging.WARNING if new == DbState.DOWN else logging.INFO
        log.log(
            level,
            "database %s -> %s%s",
            old,
            new,
            f": {error}" if error else "",
            extra={"db": redact_url(self.sink.url)},
        )
        self._report()

    def _report(self) -> None:
        if self._on_status is not None:
            self._on_status(self.status)

    async def _retry(self, what: str, work: Callable[[], Any]) -> Any:
        """Run `work` until it succeeds (or stop is asked: returns None)."""
        while not self._stopping:
            try:
                result = await work()
            except SinkError as exc:
                if self._pending_since:
                    # the batch in hand is waiting: the lag grows while the database is away
                    self.status.lag_seconds = max(0.0, time.time() - self._pending_since)
                self._move(DbState.DOWN, str(exc))
                self._report()
                delay = self._backoff.next_delay()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                self._wake.clear()
                continue
            self._backoff.reset()
            return result
        return None

    # --- the loop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the sink and find where to resume (retries while the database is down)."""
        await self._retry("open", self.sink.open)
        if self._stopping:
            return
        checkpoint = await self._retry("checkpoint", lambda: self.sink.checkpoint(self.node_id))
        if checkpoint is None:
            return
        self.status.checkpoint = int(checkpoint)
        self._next_lsn = self.from_lsn if self.from_lsn is not None else int(checkpoint) + 1
        if self.status.state == DbState.STARTING:
            self._move(DbState.UP)
        elif self.status.state == DbState.DOWN:
            self._move(DbState.RECOVERING)
        log.info("replaying from LSN %d", self._next_lsn, extra={"db": redact_url(self.sink.url)})

    def _read_batch(self, start: int) -> RowBatch:
        """Up to `batch_rows` records from `start`, never past the durable head."""
        batch = RowBatch(self.node_id)
        limit = self.status.durable_lsn if self._durable_known else None
        if limit is not None and limit < start:
            return batch
        if limit is not None:
            limit = min(limit, start + self.batch_rows - 1)
        node = self.node_id
        messages = batch.messages
        events = batch.events
        first_ts = 0
        follower = self._follower
        if follower is None or follower.next_lsn != start:
            # (re)position: at start, or after a batch that was read but not committed
            if follower is not None:
                follower.close()
            follower = self._follower = LogFollower(self.wal_dir, start)
        message_type = RecordType.MESSAGE
        new_row = tuple.__new__  # a MessageRow built from a plain tuple: no Python-level __new__
        for count, record in enumerate(follower.records(limit, self.batch_rows), start=1):
            body = record.body
            if record.type == message_type:
                m = cast(MessagePayload, body)
                ts = m.ts_ms
                messages.append(
                    new_row(
                        MessageRow,
                        (
                            node,
                            record.lsn,
                            m.channel,
                            m.seq,
                            ts,
                            m.sender,
                            # the message id when the publisher gave one, else the
                            # correlation id (docs/protocol.md, "Idempotent publish")
                            m.client_msg_id if m.mid is None else m.mid,
                            m.encoding,
                            m.data,
                        ),
                    )
                )
            else:
                e = cast(ConnectionEvent, body)
                ts = e.ts_ms
                events.append(
                    EventRow(
                        node,
                        record.lsn,
                        ts,
                        e.kind,
                        e.conn_id,
                        e.user,
                        e.remote,
                        e.close_code,
                        e.duration_ms,
                    )
                )
            if not first_ts:
                first_ts = ts
            batch.last_lsn = record.lsn
            if count >= self.batch_rows:
                break
        batch.first_ts_ms = first_ts
        return batch

    async def step(self) -> int:
        """Replay one batch; returns rows written (0: nothing to do, or stopping).

        While a full batch is being written, the next one is already being read (a
        backlog drains at the speed of the slower of the two, not of their sum).
        """
        loop = asyncio.get_running_loop()
        prefetched, self._prefetch = self._prefetch, None
        if prefetched is not None and prefetched[0] == self._next_lsn:
            batch = await prefetched[1]
        else:
            if prefetched is not None:
                await asyncio.wait([prefetched[1]])  # let it finish before repositioning
            batch = await loop.run_in_executor(None, self._read_batch, self._next_lsn)
        if not len(batch):
            self.status.lag_seconds = 0.0
            return 0
        if len(batch) >= self.batch_rows:
            start = batch.last_lsn + 1
            self._prefetch = (start, loop.run_in_executor(None, self._read_batch, start))
        self._fault("before_write")
        self._pending_since = batch.first_ts_ms / 1000.0
        written = await self._retry("write", lambda: self.sink.write(batch))
        self._pending_since = 0.0
        if self._stopping and written is None and self.status.checkpoint < batch.last_lsn:
            return 0
        self._fault("after_commit")
        self.status.checkpoint = batch.last_lsn
        self.status.rows += len(batch)
        self.status.batches += 1
        self._next_lsn = batch.last_lsn + 1
        behind = self._durable_known and self.status.durable_lsn > self.status.checkpoint
        self.status.lag_seconds = (
            max(0.0, time.time() - batch.first_ts_ms / 1000.0) if behind else 0.0
        )
        if self.status.state == DbState.DOWN:
            self._move(DbState.RECOVERING)
        if self.status.state == DbState.RECOVERING and not behind:
            self._move(DbState.UP)
        self._report()
        return len(batch)

    async def run(self) -> None:
        """Follow the log until `stop()`; commits what it holds before returning."""
        await self.start()
        while not self._stopping:
            written = await self.step()
            if written >= self.batch_rows:
                continue  # backlog: go again at once, in large batches
            self._wake.clear()
            if self._stopping:
                break
            try:
                await asyncio.wait_for(
                    self._wake.wait(), 0.5 if written == 0 else self.min_batch_interval
                )
            except TimeoutError:
                pass
            if written and self.min_batch_interval:
                # Let a few more records gather: bigger, cheaper transactions.
                await asyncio.sleep(self.min_batch_interval)
        # Final drain of what is durable (graceful shutdown: let the replayer commit).
        self._stopping = False
        try:
            while self.status.state != DbState.DOWN:
                if not await asyncio.wait_for(self.step(), 5.0):
                    break
        except TimeoutError:
            log.warning("final replay drain timed out; the next start resumes from the checkpoint")
        self._stopping = True

    async def drain(self) -> None:
        """Replay everything readable now, then return (the standalone tool without --follow)."""
        await self.start()
        while not self._stopping and await self.step():
            pass
