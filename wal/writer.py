"""The group-commit writer: many appends, one write + one fdatasync per batch.

    event loop                                        sync thread (owns the segment fd)
    ──────────                                        ────────────────────────────────
    append(): frame the record onto `_buf`  ─┐
    append(): ...                            ├─ batch k+1 grows while batch k syncs
    append(): ...                           ─┘
                                 submit(batch k) ───▶ [rotate] pwrite(buf) fdatasync(fd)
                                 submit(batch k+1) ─▶ (queued: written once k is synced)
    _completed(batch k) ◀── call_soon_threadsafe ───┘
      submit(batch k+2), then on_batch(k): acks + fan-out overlap the next fdatasync

A rotation takes the next segment's file from `wal.pipeline`, made and preallocated
ahead of time by a thread of its own: the sync thread writes the header and the batch
into it, fdatasyncs, renames and fsyncs the directory (no file creation on the way).
Records are written with pwrite at the offset the loop assigned (`CommitBatch.offset`),
not appended: a preallocated file already has its final size.

Up to two batches are in flight (`MAX_IN_FLIGHT`): one the thread writes and syncs, one
queued behind it, so the thread goes from one fdatasync straight to the next write
without waiting for the loop to hand it a batch (that hand-off waited ~1 ms for the GIL
and a core while the loop was fanning out). The thread writes a batch only after the one
before it is synced, so at most one batch is written and not yet synced: a torn write
can only reach one batch (capped at `max_batch_bytes`) back from the end of the newest
segment, which recovery relies on. Everything that arrives while both are out forms the
next batch. The per-record work on the
loop is one msgpack encode, one CRC and three bytearray appends in `append`, and one dict
store (the entry, as its channel's head, into `HeadsTracker.dirty`) when its batch
completes; everything
else (callbacks, metrics, futures) is per batch.

After any error in the writer path the writer is dead for good: in the thread (write,
fdatasync, segment creation) or on the loop (`_flush`, rotation and header encoding,
`_seal`, the completion's own bookkeeping, the owner's `fail()`: the heads store). The
batch it happened to (if any) and everything pending go to `on_failed`, each entry
exactly once (a batch still in the thread goes there when it comes back), `on_dead` runs
once, later appends raise `LogUnavailable`. An fdatasync is never retried: after a failed
fsync the kernel may have dropped the dirty pages, so a retry that "succeeds" would prove
nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from time import perf_counter

from common.durability import Entry, LogUnavailable
from common.latency import Stages
from wal.heads import HeadsTracker
from wal.pipeline import SegmentPipeline
from wal.record import EVENT, ConnectionEvent, append_message, append_record, encode_event
from wal.segment import (
    PREALLOC_VERSION,
    create_segment,
    discard,
    encode_header,
    install_segment,
    pwrite_all,
    segment_name,
)

log = logging.getLogger("ferry.wal")

MAX_IN_FLIGHT = 2  # batches handed to the sync thread and not yet back (module docstring)


class CommitBatch:
    """Records written and synced together. Handed to `on_batch` once durable.

    `buf` holds the framed records exactly as written to disk (read-only for listeners:
    a replayer can decode them with `wal.record.decode_record` instead of reading back).
    """

    __slots__ = (
        "buf",
        "done_at",
        "entries",
        "error",
        "failed_op",
        "first_lsn",
        "last_lsn",
        "offset",
        "opened_at",
        "picked_at",
        "ready_at",
        "rotation",
        "segment_first_lsn",
        "submitted_at",
        "sync_s",
        "write_s",
    )

    def __init__(
        self,
        buf: bytearray,
        entries: list[Entry],
        first_lsn: int,
        last_lsn: int,
        opened_at: float = 0.0,
    ) -> None:
        self.buf = buf
        self.entries = entries  # MESSAGE entries only, in LSN order
        self.first_lsn = first_lsn
        self.last_lsn = last_lsn
        self.segment_first_lsn = 0  # the segment the batch went to ...
        self.offset = 0  # ... and its file offset there
        self.rotation: Rotation | None = None
        self.write_s = 0.0
        self.sync_s = 0.0
        # when the thread was free for it: handed over, or the batch ahead of it synced
        self.ready_at = 0.0
        # perf_counter stamps of its way through the stages (common.latency.PUBLISH_STAGES)
        self.opened_at = opened_at  # its first record was appended
        self.submitted_at = 0.0  # handed to the sync thread
        self.picked_at = 0.0  # the thread started on it
        self.done_at = 0.0  # the thread finished it
        self.error: BaseException | None = None
        self.failed_op = ""

    @property
    def records(self) -> int:
        return self.last_lsn - self.first_lsn + 1


class Rotation:
    """Start a new segment (with `header`, or its version 3 twin when the sync thread
    gets a preallocated file: same size) before writing the batch; `sealed_*` describe
    the old one."""

    __slots__ = ("header", "sealed_first_lsn", "sealed_size")

    def __init__(self, header: bytes, sealed_first_lsn: int, sealed_size: int) -> None:
        self.header = header
        self.sealed_first_lsn = sealed_first_lsn
        self.sealed_size = sealed_size


BatchHandler = Callable[[CommitBatch], None]
FailureHandler = Callable[[list[Entry], str], None]


class GroupCommitWriter:
    """Loop side of the writer; see the module docstring for the whole picture."""

    def __init__(
        self,
        wal_dir: str,
        node_id: str,
        *,
        fd: int,
        segment_first_lsn: int,
        segment_size: int,
        segment_header_size: int,
        next_lsn: int,
        heads: HeadsTracker,
        on_batch: BatchHandler,
        on_failed: FailureHandler,
        on_dead: Callable[[], None] | None = None,
        sync: bool = True,
        segment_bytes: int = 64 * 1024 * 1024,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_batch_delay_s: float = 0.0,
        stages: Stages | None = None,
        pipeline: SegmentPipeline | None = None,
    ) -> None:
        self._dir = wal_dir
        self._stages = stages or Stages()
        self._opened_at = 0.0  # when the first pending record was appended
        self._node_id = node_id
        self._sync = sync
        self._segment_bytes = segment_bytes
        self._max_batch_bytes = max_batch_bytes
        self._delay = max_batch_delay_s
        self._on_batch = on_batch
        self._on_failed = on_failed
        self._on_dead = on_dead
        self._heads = heads
        self._loop = asyncio.get_running_loop()
        # Active segment, as the loop sees it (the thread owns the fd).
        self._seg_first = segment_first_lsn
        self._seg_size = segment_size
        self._seg_header_size = segment_header_size
        # LSNs: [.. durable_lsn] synced, (durable_lsn .. next_lsn) pending or in flight.
        self._next_lsn = next_lsn
        self.durable_lsn = next_lsn - 1
        # Pending records: `_buf`/`_entries` from `_first`, plus full batches in `_sealed`.
        self._first = next_lsn
        self._buf = bytearray()
        self._entries: list[Entry] = []
        self._sealed: collections.deque[CommitBatch] = collections.deque()
        self._inflight: collections.deque[CommitBatch] = collections.deque()  # in order
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._idle: asyncio.Future[None] | None = None
        self.failure: str | None = None
        self.failure_errno = 0
        self._refusal: str | None = None  # why appends raise (failure, or closing)
        self._thread = _SyncThread(
            wal_dir, fd, sync, self._loop, self._completed, node_id=node_id, pipeline=pipeline
        )
        self._thread.start()

    # -- appends (hot path) --------------------------------------------------------------

    def append(self, entry: Entry) -> None:
        if self._refusal is not None:
            raise LogUnavailable(self._refusal)
        lsn = self._next_lsn
        buf = self._buf
        if not buf:
            self._opened_at = perf_counter()
        append_message(buf, lsn, entry)  # raises before touching anything on bad input
        entry.lsn = lsn
        self._next_lsn = lsn + 1
        self._entries.append(entry)
        try:
            if len(buf) >= self._max_batch_bytes:
                self._seal()
            if len(self._inflight) < MAX_IN_FLIGHT and self._timer is None:
                self._arm()
        except Exception as exc:  # the entry is taken: it fails with everything pending
            self._die(exc, "append", None, deferred=True)

    def append_event(self, event: ConnectionEvent) -> int:
        if self._refusal is not None:
            raise LogUnavailable(self._refusal)
        lsn = self._next_lsn
        if not self._buf:
            self._opened_at = perf_counter()
        append_record(self._buf, lsn, EVENT, encode_event(event))
        self._next_lsn = lsn + 1
        try:
            if len(self._buf) >= self._max_batch_bytes:
                self._seal()
            if len(self._inflight) < MAX_IN_FLIGHT and self._timer is None:
                self._arm()
        except Exception as exc:
            self._die(exc, "append", None, deferred=True)
        return lsn

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    def _arm(self) -> None:
        if self._delay > 0 and not self._sealed:
            self._timer = self._loop.call_later(self._delay, self._flush)
        else:
            self._timer = self._loop.call_soon(self._flush)

    def _seal(self) -> None:
        """Close the pending records into a batch of their own (the batch-size cap)."""
        batch = CommitBatch(
            self._buf, self._entries, self._first, self._next_lsn - 1, self._opened_at
        )
        buf: bytearray = bytearray()
        entries: list[Entry] = []
        # Nothing above changed any state: an entry is in `_sealed` or `_entries`, never both.
        self._sealed.append(batch)
        self._buf, self._entries, self._first = buf, entries, self._next_lsn
        if self._delay > 0 and len(self._inflight) < MAX_IN_FLIGHT and self._timer is not None:
            self._timer.cancel()  # a full batch does not wait for the delay
            self._timer = self._loop.call_soon(self._flush)

    # -- batches -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._timer = None
        if len(self._inflight) >= MAX_IN_FLIGHT or self.failure is not None:
            return
        batch: CommitBatch | None = None
        try:
            if not self._sealed:
                if not self._buf:
                    return
                self._seal()
            batch = self._sealed.popleft()
            size = len(batch.buf)
            if (
                self._seg_size > self._seg_header_size
                and self._seg_size + size > self._segment_bytes
            ):
                # A new segment: its header is always the same 96 bytes (no heads).
                header = encode_header(self._node_id, batch.first_lsn)
                batch.rotation = Rotation(header, self._seg_first, self._seg_size)
                self._seg_first = batch.first_lsn
                self._seg_size = self._seg_header_size = len(header)
            batch.segment_first_lsn = self._seg_first
            batch.offset = self._seg_size
            self._seg_size += size
            batch.submitted_at = perf_counter()
            self._thread.submit(batch)
            self._inflight.append(batch)
        except Exception as exc:
            self._die(exc, "batch preparation", batch)

    def _completed(self, batch: CommitBatch) -> None:
        """On the loop: the thread is done with `batch`."""
        woke = perf_counter()
        assert self._inflight and self._inflight[0] is batch, "completions come in order"
        self._inflight.popleft()
        if batch.error is not None or self.failure is not None:
            if self.failure is None:
                assert batch.error is not None
                # the thread stops at its first error: a batch queued behind this one is
                # never written, so it fails here with the pending ones
                self._die(batch.error, batch.failed_op, batch, stranded=True)
            else:  # died while the batch was in the thread: it fails like the pending ones
                self._report(batch.entries)
                if batch.error is not None:  # and the thread stopped: nothing else comes back
                    while self._inflight:
                        self._report(self._inflight.popleft().entries)
        else:
            try:
                heads = self._heads
                dirty = heads.dirty
                for entry in batch.entries:
                    dirty[entry.channel] = entry  # the head: its seq and lsn
                self.durable_lsn = batch.last_lsn
                if len(dirty) >= heads.flush_channels:
                    heads.request_flush()
            except Exception as exc:
                self._die(exc, "batch completion", batch)
            else:
                if self._sealed or self._buf:
                    if self._delay > 0 and not self._sealed:
                        self._timer = self._loop.call_later(self._delay, self._flush)
                    else:
                        self._flush()  # the next batch goes to disk before the callbacks run
                try:
                    self._on_batch(batch)
                except Exception as exc:  # the owner's bookkeeping before any delivery
                    if self.failure is None:
                        self._die(exc, "batch completion", batch)
                self._observe(batch, woke)
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _observe(self, batch: CommitBatch, woke: float) -> None:
        """The batch's time in each stage (per batch: a few adds, not per record)."""
        hists = self._stages.hists
        hists["queue"].observe(batch.ready_at - batch.opened_at)
        hists["handoff"].observe(batch.picked_at - batch.ready_at)
        hists["write"].observe(batch.write_s)
        if self._sync:
            hists["fsync"].observe(batch.sync_s)
        hists["wake"].observe(woke - batch.done_at)
        hists["deliver"].observe(perf_counter() - woke)

    def fail(self, exc: BaseException, op: str) -> None:
        """Make the writer unwritable for good from the loop side (e.g. the heads store
        could not be written): everything pending fails, later appends raise."""
        if self.failure is None:
            self._die(exc, op, None)

    def _die(
        self,
        exc: BaseException,
        op: str,
        batch: CommitBatch | None,
        *,
        deferred: bool = False,
        stranded: bool = False,
    ) -> None:
        """The writer is dead: `batch` (if any) and everything pending go to `on_failed`.
        `deferred`: from inside `append`, so the callbacks run on the next loop iteration
        rather than before the caller's append returns. `stranded`: the thread has stopped,
        so the batches still in flight will never come back: they fail now too (otherwise
        each fails when the thread hands it back)."""
        if self.failure is not None:
            if batch is not None:
                self._report(batch.entries)
            return
        where = batch.segment_first_lsn if batch is not None and batch.segment_first_lsn else 0
        name = segment_name(where or self._seg_first)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        self.failure = f"{op} failed on {name}: {detail}"
        self.failure_errno = (exc.errno or -1) if isinstance(exc, OSError) else -1
        self._refusal = f"WAL unwritable: {self.failure}"
        first = batch.first_lsn if batch is not None else self.durable_lsn + 1
        log.error(
            "WAL is now unwritable, nothing more will be acknowledged: %s (LSN %d..%d lost)",
            self.failure,
            first,
            self._next_lsn - 1,
            exc_info=exc if not isinstance(exc, OSError) else None,
        )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending: list[Entry] = []
        if stranded:
            for queued in self._inflight:
                pending.extend(queued.entries)
            self._inflight.clear()
        for sealed in self._sealed:
            pending.extend(sealed.entries)
        pending.extend(self._entries)
        self._sealed.clear()
        self._buf, self._entries = bytearray(), []
        failed = [batch.entries if batch is not None else [], pending]
        if deferred:
            self._loop.call_soon(self._deliver_death, failed)
        else:
            self._deliver_death(failed)

    def _deliver_death(self, failed: list[list[Entry]]) -> None:
        if self._on_dead is not None:
            try:
                self._on_dead()
            except Exception:
                log.exception("WAL failure hook failed")
        for entries in failed:
            self._report(entries)
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _report(self, entries: list[Entry]) -> None:
        if entries:
            try:
                self._on_failed(entries, self.failure or "WAL unwritable")
            except Exception:
                log.exception("WAL failure handler failed")

    # -- lifecycle -----------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until every record appended so far is durable or failed."""
        while self._inflight or (self.failure is None and (self._sealed or self._buf)):
            if len(self._inflight) < MAX_IN_FLIGHT and (self._sealed or self._buf):
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._flush()
                if not self._inflight:
                    continue  # nothing went out (the writer died): the loop condition ends it
            self._idle = self._loop.create_future()
            await self._idle

    async def close(self) -> None:
        """Refuse appends, drain, stop the thread (which closes the segment fd)."""
        if self._refusal is None:
            self._refusal = "WAL is closed"
        await self.drain()
        await self._thread.stop()


class _SyncThread:
    """The only code that writes to, syncs or closes the active segment's fd."""

    def __init__(
        self,
        wal_dir: str,
        fd: int,
        sync: bool,
        loop: asyncio.AbstractEventLoop,
        done: Callable[[CommitBatch], None],
        *,
        node_id: str = "",
        pipeline: SegmentPipeline | None = None,
    ) -> None:
        self._dir = wal_dir
        self._node_id = node_id
        self._pipeline = pipeline
        self._fd = fd
        self._sync = sync
        self._loop = loop
        self._done = done
        self._jobs: queue.SimpleQueue[CommitBatch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ferry-wal-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, batch: CommitBatch) -> None:
        self._jobs.put(batch)

    async def stop(self) -> None:
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        free_at = 0.0  # when the thread finished its last batch
        try:
            while True:
                batch = self._jobs.get()
                if batch is not None:
                    batch.ready_at = max(batch.submitted_at, free_at)
                if batch is None:
                    if not self._sync:  # `write` mode: at least a clean shutdown is durable
                        with contextlib.suppress(OSError):
                            os.fdatasync(self._fd)
                    return
                self._write(batch)
                free_at = perf_counter()
                try:
                    self._loop.call_soon_threadsafe(self._done, batch)
                except RuntimeError:  # the loop is gone: nobody is waiting any more
                    return
                if batch.error is not None:
                    return  # dead for good: never write or sync again
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _write(self, batch: CommitBatch) -> None:
        op = "write"
        batch.picked_at = perf_counter()
        try:
            if batch.rotation is not None:
                if not self._sync:
                    op = "fdatasync"
                    os.fdatasync(self._fd)  # a sealed segment is durable even in `write` mode
                op = "segment creation"
                if self._rotate(batch):
                    return  # the batch went in with the header, synced
            op = "write"
            start = perf_counter()
            pwrite_all(self._fd, batch.offset, batch.buf)
            written = perf_counter()
            if self._sync:
                op = "fdatasync"
                os.fdatasync(self._fd)
            batch.done_at = perf_counter()
            batch.write_s = written - start
            batch.sync_s = batch.done_at - written
        except Exception as exc:
            batch.error = exc
            batch.failed_op = op

    def _rotate(self, batch: CommitBatch) -> bool:
        """Make the batch's segment the active one. With a preallocated file from the
        pipeline and wal_sync=fsync the batch is written and synced with the header (one
        pwritev, one fdatasync, then rename and directory fsync): returns True, the batch
        is done. Otherwise (`write` mode, or no file ready: a plain segment created here)
        returns False and the batch is written as any other."""
        rotation = batch.rotation
        assert rotation is not None
        ready = self._pipeline.take() if self._pipeline is not None else None
        if ready is None:
            fd = create_segment(self._dir, batch.first_lsn, rotation.header)
            os.close(self._fd)
            self._fd = fd
            return False
        fd, tmp = ready
        header = encode_header(self._node_id, batch.first_lsn, PREALLOC_VERSION)
        start = perf_counter()
        try:
            install_segment(
                self._dir, fd, tmp, batch.first_lsn, header, batch.buf if self._sync else b""
            )
        except BaseException:
            discard(fd, tmp)  # (after the rename there is no tmp: the fd is closed)
            raise
        os.close(self._fd)
        self._fd = fd
        if not self._sync:
            return False
        batch.done_at = perf_counter()
        batch.sync_s = batch.done_at - start  # header + batch write, fdatasync, rename
        return True
