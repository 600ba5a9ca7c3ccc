"""`WalLog`: the write-ahead log behind the durability seam (`common.durability.DurableLog`).

WalLog.open()      recovery (thread) ─▶ RecoveredState; heads store + GroupCommitWriter
WalLog.append()    ─▶ GroupCommitWriter.append (frame the record, assign the LSN)
batch durable      ─▶ heads into the dirty set, metrics, on_durable(entries), durable
                      listeners; at a rotation a heads flush (thread), then retention
head_of()          ─▶ dirty heads ─▶ the heads being flushed ─▶ heads.db (point lookup)
set_checkpoint()   ─▶ retention: delete old segments (off the loop)
set_history_floor()─▶ retention too
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from common.durability import (
    DurableHandler,
    Entry,
    FailedHandler,
    HistoryLimits,
    LogUnavailable,
    RecoveredState,
)
from common.latency import RecentQuantiles, Stages
from wal.errors import HeadsStoreError
from wal.heads import FLUSH_CHANNELS, HeadsReader, HeadsTracker
from wal.lockfile import writer_lock
from wal.metrics import WalMetrics
from wal.pipeline import SegmentPipeline
from wal.record import ConnectionEvent
from wal.recovery import DEFAULT_MAX_BATCH_BYTES, SegmentMeta, recover, tail_window
from wal.segment import PREALLOCATE_MODES, node_id_bytes, open_for_writing, segment_name
from wal.writer import CommitBatch, GroupCommitWriter

log = logging.getLogger("ferry.wal")

DurableListener = Callable[[CommitBatch], None]
_RECENT = 1024  # batches behind records_per_fsync in stats()
FSYNC_WINDOW_S = 10.0  # the fsync p50/p99 in stats() cover the last 5-10 s


class WalLog:
    """The WAL in a directory, opened by `open()`; one writer per directory (a lock file).

    Parameters beyond `core.config.Config` (`max_batch_bytes`, `history_max_bytes`,
    `heads_flush_channels`) are for tests and tuning; `core.compose.wal_log` is how the server
    builds one. `preallocate` (`wal_preallocate`): how new segments reserve their
    `segment_bytes` (`fallocate`, `zero`, or `off`: segments as builds before
    preallocation wrote them, see `wal.segment`).
    """

    def __init__(
        self,
        wal_dir: str | os.PathLike[str],
        *,
        node_id: str,
        sync: str = "fsync",
        segment_bytes: int = 64 * 1024 * 1024,
        max_batch_delay_ms: float = 0.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        history_max_bytes: int = 1024 * 1024 * 1024,
        heads_flush_channels: int = FLUSH_CHANNELS,
        registry: CollectorRegistry | None = None,
        stages: Stages | None = None,
        keep_recent_s: float = 0.0,
        preallocate: str = "fallocate",
    ) -> None:
        if sync not in ("fsync", "write"):
            raise ValueError(f"sync must be 'fsync' or 'write', got {sync!r}")
        if preallocate not in PREALLOCATE_MODES:
            raise ValueError(f"preallocate must be one of {PREALLOCATE_MODES}, got {preallocate!r}")
        self.preallocate = preallocate
        self._pipeline: SegmentPipeline | None = None
        node_id_bytes(node_id)  # validate now, not at the first rotation
        self.wal_dir = os.fspath(wal_dir)
        self.node_id = node_id
        self.sync = sync
        self.segment_bytes = segment_bytes
        self.max_batch_delay_ms = max_batch_delay_ms
        self.max_batch_bytes = max_batch_bytes
        self.history_max_bytes = history_max_bytes
        self.heads_flush_channels = heads_flush_channels
        # segments written within this many seconds are kept: recovery reads the publish
        # mids of the dedupe window back from them (RecoveredState.mids)
        self.keep_recent_s = keep_recent_s
        self.tail_window = tail_window(max_batch_bytes)
        # The log's own registry unless one is passed; the server merges it into its own.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = WalMetrics(self.registry)
        self._writer: GroupCommitWriter | None = None
        self._heads: HeadsTracker | None = None
        self._lock = writer_lock(self.wal_dir)
        self._on_durable: DurableHandler | None = None
        self._on_failed: FailedHandler | None = None
        self._listeners: list[DurableListener] = []
        self._segments: list[SegmentMeta] = []
        self._bytes = 0
        self._checkpoint = 0
        self._history_floor = 0
        self._failure_reported = False
        self._opened_next_lsn = 1
        self._deleting: set[asyncio.Future[None]] = set()
        self._first_lsn = 1
        self._closed = False
        self.stages = stages if stages is not None else Stages()
        # the writer observes each batch's fdatasync into the `fsync` stage: one histogram
        # behind the stage breakdown and the WAL's own fsync p50/p99
        self.fsync_latency = self.stages.hists["fsync"]
        self._fsync_recent = RecentQuantiles(self.fsync_latency, FSYNC_WINDOW_S, time.monotonic)
        self._batch_records: collections.deque[int] = collections.deque(maxlen=_RECENT)
        self._batches = 0

    # -- DurableLog ----------------------------------------------------------------------

    async def open(self, limits: HistoryLimits) -> RecoveredState:
        """Recover the directory (see the package docstring) and start the writer.

        The state holds at most `limits.max_channels` channels, the rings within `limits`.
        Raises `wal.errors.CorruptLog`, `NodeIdMismatch` or `WalLocked` when it cannot.
        """
        if self._writer is not None or self._closed:
            raise RuntimeError("WalLog.open() may be called once")
        os.makedirs(self.wal_dir, exist_ok=True)
        self._lock.acquire()
        try:
            rec = await asyncio.to_thread(
                recover,
                self.wal_dir,
                self.node_id,
                limits,
                self.tail_window,
                flush_channels=self.heads_flush_channels,
                preallocate=self.preallocate,
                segment_bytes=self.segment_bytes,
            )
            try:
                reader = HeadsReader(rec.store.path)
                active = rec.segments[-1]
                fd = open_for_writing(active.path)
            except BaseException:
                rec.store.close()
                raise
        except BaseException:
            self._lock.release()
            raise
        if self.preallocate != "off":
            self._pipeline = SegmentPipeline(self.wal_dir, self.segment_bytes, self.preallocate)
            self._pipeline.start()
        self._segments = rec.segments
        self._bytes = sum(seg.size for seg in rec.segments)
        self._first_lsn = rec.segments[0].first_lsn
        # Until the router sets it: the rings it rebuilds from the state hold from the
        # oldest recovered entry on, and (history on) everything appended from now.
        history = limits.size > 0 and limits.max_channels > 0
        self._history_floor = rec.history_floor or (rec.state.next_lsn if history else 0)
        state = rec.state
        self._opened_next_lsn = state.next_lsn
        self._heads = HeadsTracker(
            rec.store,
            reader,
            rec.dirty,
            durable_lsn=lambda: self.durable_lsn,
            on_flushed=self._heads_flushed,
            on_error=self._heads_failed,
            flush_channels=self.heads_flush_channels,
        )
        self._writer = GroupCommitWriter(
            self.wal_dir,
            self.node_id,
            fd=fd,
            segment_first_lsn=active.first_lsn,
            segment_size=active.size,
            segment_header_size=rec.active_header.size,
            next_lsn=state.next_lsn,
            heads=self._heads,
            on_batch=self._batch_done,
            on_failed=self._batch_failed,
            on_dead=self._writer_died,
            sync=self.sync == "fsync",
            segment_bytes=self.segment_bytes,
            max_batch_bytes=self.max_batch_bytes,
            max_batch_delay_s=self.max_batch_delay_ms / 1000.0,
            stages=self.stages,
            pipeline=self._pipeline,
        )
        m = self.metrics
        m.writable.set(1)
        m.segments.set(len(self._segments))
        m.size_bytes.set(self._bytes)
        m.durable_lsn.set(state.next_lsn - 1)
        m.recovery_seconds.set(rec.seconds)
        m.truncated_bytes.set(rec.truncation.dropped_bytes if rec.truncation else 0)
        m.heads_as_of.set(rec.store.as_of)
        m.heads_dirty.set(len(rec.dirty))
        lsns = (
            f"LSN {self._first_lsn}..{state.next_lsn - 1}"
            if state.next_lsn > self._first_lsn
            else f"empty, next LSN {state.next_lsn}"
        )
        log.info(
            "WAL %s: %d segments, %s, %d records; %d channels held, %d heads to store, "
            "heads.db as of LSN %d; recovered in %.2fs%s",
            self.wal_dir,
            len(self._segments),
            lsns,
            rec.records,
            len(state.heads),
            len(rec.dirty),
            rec.store.as_of,
            rec.seconds,
            "" if self.sync == "fsync" else " (wal_sync=write: NOT safe on power loss)",
        )
        return state

    def set_handlers(self, on_durable: DurableHandler, on_failed: FailedHandler) -> None:
        self._on_durable = on_durable
        self._on_failed = on_failed

    def append(self, entry: Entry) -> None:
        """Frame `entry` as a record, give it the next LSN; `on_durable` reports it once it is synced."""
        writer = self._writer
        if writer is None:
            raise LogUnavailable("WAL is closed" if self._closed else "WAL is not open")
        writer.append(entry)

    def append_event(self, event: ConnectionEvent) -> int:
        """Log a connection event (for `ferry_events`); returns its LSN. No callback: events
        are durable with the batch they share, visible to `iter_records` and listeners."""
        writer = self._writer
        if writer is None:
            raise LogUnavailable("WAL is closed" if self._closed else "WAL is not open")
        return writer.append_event(event)

    @property
    def writable(self) -> bool:
        writer = self._writer
        return writer is not None and writer.failure is None and not self._closed

    @property
    def failure(self) -> str | None:
        writer = self._writer
        if writer is not None and writer.failure is not None:
            return writer.failure
        if self._closed:
            return "closed"
        return None if writer is not None else "not open"

    def head_of(self, channel: str) -> int:
        """The channel's last durable seq (0 if the log never held one, or it is not open).

        Synchronous, on the loop: the dirty heads, then those being flushed, then a point
        lookup in heads.db (~5 us hit or miss from the page cache, see `HeadsReader`).
        Raises `LogUnavailable` if heads.db cannot be read (never a wrong 0)."""
        heads = self._heads
        if heads is None:
            return 0
        try:
            return heads.head_of(channel)
        except HeadsStoreError as exc:
            raise LogUnavailable(f"WAL heads store unreadable: {exc}") from None

    def set_history_floor(self, lsn: int) -> None:
        """The oldest LSN any in-memory history ring holds (0: none). Retention keeps the
        segments from the one holding it on (up to `history_max_bytes`)."""
        raised = lsn > self._history_floor or (lsn == 0 and self._history_floor != 0)
        self._history_floor = lsn
        if raised and self._writer is not None:
            self._apply_retention()

    @property
    def durable_lsn(self) -> int:
        """Every record up to this LSN is on disk (synced, with wal_sync=fsync)."""
        writer = self._writer
        return writer.durable_lsn if writer is not None else 0

    @property
    def head_lsn(self) -> int:
        """The last LSN handed out (durable or not)."""
        writer = self._writer
        return writer.next_lsn - 1 if writer is not None else 0

    def stats(self) -> dict[str, float]:
        writer = self._writer
        counts = self._batch_records
        return {
            "head_lsn": float(self.head_lsn),
            "durable_lsn": float(self.durable_lsn),
            "first_lsn": float(self._first_lsn),
            "checkpoint_lsn": float(self._checkpoint),
            "bytes": float(self._bytes),
            "segments": float(len(self._segments)),
            "fsync_p50_ms": (self._fsync_recent.quantile(0.50) or 0.0) * 1000.0,
            "fsync_p99_ms": (self._fsync_recent.quantile(0.99) or 0.0) * 1000.0,
            "records_per_fsync": sum(counts) / len(counts) if counts else 0.0,
            "batches": float(self._batches),
            "appends": float(writer.next_lsn - self._opened_next_lsn) if writer else 0.0,
            "writable": 1.0 if self.writable else 0.0,
            "last_fsync_error": float(writer.failure_errno) if writer else 0.0,
            "heads_as_of": float(self._heads.as_of) if self._heads else 0.0,
            "heads_dirty": float(len(self._heads.dirty)) if self._heads else 0.0,
            "heads_flushes": float(self._heads.flushes) if self._heads else 0.0,
            "history_floor": float(self._history_floor),
            "segments_preallocated": float(self._pipeline.taken) if self._pipeline else 0.0,
            "preallocation_failures": float(self._pipeline.failures) if self._pipeline else 0.0,
        }

    async def close(self) -> None:
        """Finish every appended record (durable or failed callbacks fire), stop, unlock."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None:
            await writer.close()
        if self._pipeline is not None:
            await asyncio.to_thread(self._pipeline.close)  # the unused file goes too
        if self._heads is not None:
            await self._heads.close()  # the last flush: as of the last durable LSN
            self.metrics.heads_as_of.set(self._heads.as_of)
        await self.wait_deletions()
        self._lock.release()
        self.metrics.writable.set(0)

    # -- beyond the seam: replayer and events -------------------------------------------

    def add_durable_listener(self, listener: DurableListener) -> None:
        """Call `listener(batch)` on the loop for each durable batch, after `on_durable`.

        `batch.buf` holds the framed records as written (decode with `wal.record`); the
        in-process replayer can take them from here instead of reading the file back.
        """
        self._listeners.append(listener)

    def set_checkpoint(self, lsn: int) -> None:
        """The replayer committed everything up to `lsn`: old segments may go.

        A segment is deleted when all of these hold: it is not the active one, every older
        segment is deleted too (the log stays gap-free), its last LSN is <= the checkpoint
        (the database has it), <= heads.db's as_of (no head is lost), it was last written
        more than `keep_recent_s` ago (the dedupe window's mids) and < the history
        floor (`set_history_floor`: no in-memory ring reaches into it) -- the last rule
        unless the WAL is over `history_max_bytes`, where history alone keeps no segment.
        """
        if lsn <= self._checkpoint:
            return
        self._checkpoint = lsn
        self.metrics.checkpoint_lsn.set(lsn)
        self._apply_retention()

    async def flush_heads(self) -> None:
        """Store the dirty heads in heads.db now and wait until it is done (and until the
        retention that may follow has started). For tests and tools: the log flushes by
        itself at rotations, at `heads_flush_channels` dirty channels and at close."""
        heads = self._heads
        if heads is None:
            return
        await heads.wait()
        heads.request_flush()
        await heads.wait()

    async def wait_deletions(self) -> None:
        """Wait until the segment deletions retention has started are done (they run off
        the loop; `set_checkpoint` only decides)."""
        while self._deleting:
            await asyncio.gather(*self._deleting, return_exceptions=True)

    @property
    def pipeline(self) -> SegmentPipeline | None:
        """The thread that keeps the next segment's file ready (None: preallocate off)."""
        return self._pipeline

    def segment_for(self, lsn: int) -> str | None:
        """Path of the segment that holds `lsn` (None if it was deleted or not written)."""
        if not self._segments or lsn < self._segments[0].first_lsn or lsn > self.head_lsn:
            return None
        firsts = [seg.first_lsn for seg in self._segments]
        return self._segments[bisect.bisect_right(firsts, lsn) - 1].path

    # -- internals -----------------------------------------------------------------------

    def _batch_done(self, batch: CommitBatch) -> None:
        """The writer's completion of a durable batch. Bookkeeping first: an exception
        there fails this batch (the writer's failure path); then delivery, whose handlers'
        exceptions are logged; then what follows from it (heads flush, retention), whose
        exceptions fail the writer but not this batch, already delivered."""
        if batch.rotation is not None:
            self._rotated(batch)
        records = batch.records
        size = len(batch.buf)
        self._bytes += size
        self._segments[-1].size += size
        self._batches += 1
        self._batch_records.append(records)
        m = self.metrics
        m.appends.inc(records)
        m.bytes.inc(size)
        m.batches.inc()
        if self.sync == "fsync":
            m.fsync_seconds.observe(batch.sync_s)
        m.batch_records.observe(records)
        m.durable_lsn.set(batch.last_lsn)
        m.size_bytes.set(self._bytes)
        if batch.entries and self._on_durable is not None:
            try:
                self._on_durable(batch.entries)
            except Exception:
                log.exception("on_durable failed (LSN %d..%d)", batch.first_lsn, batch.last_lsn)
        for listener in self._listeners:
            try:
                listener(batch)
            except Exception:
                log.exception("WAL durable listener failed")
        try:
            heads = self._heads
            assert heads is not None
            m.heads_dirty.set(len(heads.dirty))
            if batch.rotation is not None:
                heads.request_flush()  # the sealed segment's heads: it may go once stored
                self._apply_retention()
        except Exception as exc:
            writer = self._writer
            if writer is not None:
                writer.fail(exc, "batch completion")

    def _rotated(self, batch: CommitBatch) -> None:
        rotation = batch.rotation
        assert rotation is not None
        sealed = self._segments[-1]
        sealed.last_lsn = batch.first_lsn - 1
        sealed.written_at = time.time()
        path = os.path.join(self.wal_dir, segment_name(batch.first_lsn))
        header_size = len(rotation.header)
        self._segments.append(SegmentMeta(batch.first_lsn, path, header_size))
        self._bytes += header_size
        self.metrics.segments.set(len(self._segments))

    def _heads_flushed(self, seconds: float) -> None:
        heads = self._heads
        assert heads is not None
        m = self.metrics
        m.heads_as_of.set(heads.as_of)
        m.heads_flushes.inc()
        m.heads_flush_seconds.observe(seconds)
        m.heads_dirty.set(len(heads.dirty))
        self._apply_retention()  # as_of moved: segments up to it may go

    def _heads_failed(self, exc: BaseException) -> None:
        writer = self._writer
        if writer is not None:
            writer.fail(exc, "heads store flush")
        else:
            self._writer_died()

    def _writer_died(self) -> None:
        """Once, when the writer turns unwritable (whatever the cause)."""
        if self._failure_reported:
            return
        self._failure_reported = True
        m = self.metrics
        m.writable.set(0)
        m.errors.inc()
        writer = self._writer
        m.last_error_errno.set(writer.failure_errno if writer else -1)

    def _batch_failed(self, entries: list[Entry], reason: str) -> None:
        self._writer_died()  # (already called by the writer; harmless)
        if self._on_failed is not None:
            self._on_failed(entries, reason)

    def _apply_retention(self) -> None:
        segments = self._segments
        if self._closed or len(segments) < 2:
            return
        heads = self._heads
        limit = min(self._checkpoint, heads.as_of if heads is not None else 0)
        if segments[0].last_lsn > limit:
            return
        floor = self._history_floor
        recent = time.time() - self.keep_recent_s if self.keep_recent_s > 0 else None
        doomed: list[SegmentMeta] = []
        remaining = self._bytes
        for seg in segments[:-1]:
            if seg.last_lsn > limit:
                break
            if recent is not None and seg.written_at > recent:
                break  # within the dedupe window: a restart reads its mids back
            if floor and seg.last_lsn >= floor and remaining <= self.history_max_bytes:
                break  # an in-memory ring still reaches into it
            doomed.append(seg)
            remaining -= seg.size
        if not doomed:
            return
        del segments[: len(doomed)]
        self._bytes = remaining
        self._first_lsn = segments[0].first_lsn
        self.metrics.segments.set(len(segments))
        self.metrics.size_bytes.set(self._bytes)
        log.info(
            "WAL retention: deleting %d segments up to LSN %d (checkpoint %d, heads as of %d)",
            len(doomed),
            doomed[-1].last_lsn,
            self._checkpoint,
            limit if heads is None else heads.as_of,
        )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, _delete, [seg.path for seg in doomed])
        self._deleting.add(future)
        future.add_done_callback(self._deleting.discard)


def _delete(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("WAL retention: cannot delete %s: %s", path, exc)
