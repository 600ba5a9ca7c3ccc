"""The group-commit writer: many appends, one write + one fdatasync per batch.

    event loop                                        sync thread (owns the segment fd)
    ──────────                                        ────────────────────────────────
    append(): frame the record onto `_buf`  ─┐
    append(): ...                            ├─ batch k+1 grows while batch k syncs
    append(): ...                           ─┘
                                 submit(batch k) ───▶ [rotate] write(buf) fdatasync(fd)
    _completed(batch k) ◀── call_soon_threadsafe ───┘
      submit(batch k+1) first, then on_batch(k): acks + fan-out overlap the next fdatasync

Exactly one batch is in flight. Everything that arrives while it syncs forms the next
batch (capped at `max_batch_bytes`, so that a torn write can only reach that far back
from the end of the newest segment: recovery relies on it). The per-record work on the
loop is one msgpack encode, one CRC, three bytearray appends and a dict store; everything
else (callbacks, metrics, futures) is per batch.

After any error in the thread (write, fdatasync, segment creation) the writer is dead for
good: that batch and everything pending go to `on_failed`, later appends raise
`LogUnavailable`. An fdatasync is never retried: after a failed fsync the kernel may have
dropped the dirty pages, so a retry that "succeeds" would prove nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

from core.log import Entry, LogUnavailable
from wal.record import EVENT, ConnectionEvent, append_frame, append_message, encode_event
from wal.segment import create_segment, encode_header, segment_name, write_all

log = logging.getLogger("ferry.wal")


class Batch:
    """Records written and synced together. Handed to `on_batch` once durable.

    `buf` holds the framed records exactly as written to disk (read-only for listeners:
    a replayer can decode them with `wal.record.decode_frame` instead of reading back).
    """

    __slots__ = (
        "buf",
        "entries",
        "error",
        "failed_op",
        "first_lsn",
        "last_lsn",
        "offset",
        "rotation",
        "segment_first_lsn",
        "sync_s",
        "write_s",
    )

    def __init__(self, buf: bytearray, entries: list[Entry], first_lsn: int, last_lsn: int) -> None:
        self.buf = buf
        self.entries = entries  # MESSAGE entries only, in LSN order
        self.first_lsn = first_lsn
        self.last_lsn = last_lsn
        self.segment_first_lsn = 0  # the segment the batch went to ...
        self.offset = 0  # ... and its file offset there
        self.rotation: Rotation | None = None
        self.write_s = 0.0
        self.sync_s = 0.0
        self.error: BaseException | None = None
        self.failed_op = ""

    @property
    def records(self) -> int:
        return self.last_lsn - self.first_lsn + 1


class Rotation:
    """Start a new segment before writing the batch; `sealed_*` describe the old one."""

    __slots__ = ("header", "heads", "sealed_first_lsn", "sealed_last_seqs", "sealed_size")

    def __init__(
        self,
        header: bytes,
        heads: dict[str, int],
        sealed_first_lsn: int,
        sealed_size: int,
        sealed_last_seqs: dict[str, int],
    ) -> None:
        self.header = header
        self.heads = heads
        self.sealed_first_lsn = sealed_first_lsn
        self.sealed_size = sealed_size
        self.sealed_last_seqs = sealed_last_seqs  # channel -> its last seq in the old segment


BatchHandler = Callable[[Batch], None]
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
        segment_heads: dict[str, int],
        next_lsn: int,
        heads: dict[str, int],
        on_batch: BatchHandler,
        on_failed: FailureHandler,
        sync: bool = True,
        segment_bytes: int = 64 * 1024 * 1024,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_batch_delay_s: float = 0.0,
    ) -> None:
        self._dir = wal_dir
        self._node_id = node_id
        self._sync = sync
        self._segment_bytes = segment_bytes
        self._max_batch_bytes = max_batch_bytes
        self._delay = max_batch_delay_s
        self._on_batch = on_batch
        self._on_failed = on_failed
        self._loop = asyncio.get_running_loop()
        # Active segment, as the loop sees it (the thread owns the fd).
        self._seg_first = segment_first_lsn
        self._seg_size = segment_size
        self._seg_header_size = segment_header_size
        self._seg_heads = segment_heads
        # LSNs: [.. durable_lsn] synced, (durable_lsn .. next_lsn) pending or in flight.
        self._next_lsn = next_lsn
        self.durable_lsn = next_lsn - 1
        self.heads = heads  # channel -> last seq appended (not necessarily durable)
        # Pending records: `_buf`/`_entries` from `_first`, plus full batches in `_sealed`.
        self._first = next_lsn
        self._buf = bytearray()
        self._entries: list[Entry] = []
        self._sealed: collections.deque[Batch] = collections.deque()
        self._inflight: Batch | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._idle: asyncio.Future[None] | None = None
        self.failure: str | None = None
        self.failure_errno = 0
        self._refusal: str | None = None  # why appends raise (failure, or closing)
        self._thread = _SyncThread(wal_dir, fd, sync, self._loop, self._completed)
        self._thread.start()

    # -- appends (hot path) --------------------------------------------------------------

    def append(self, entry: Entry) -> None:
        if self._refusal is not None:
            raise LogUnavailable(self._refusal)
        lsn = self._next_lsn
        buf = self._buf
        append_message(buf, lsn, entry)  # raises before touching anything on bad input
        entry.lsn = lsn
        self._next_lsn = lsn + 1
        self._entries.append(entry)
        self.heads[entry.channel] = entry.seq
        if len(buf) >= self._max_batch_bytes:
            self._seal()
        if self._inflight is None and self._timer is None:
            self._arm()

    def append_event(self, event: ConnectionEvent) -> int:
        if self._refusal is not None:
            raise LogUnavailable(self._refusal)
        lsn = self._next_lsn
        append_frame(self._buf, lsn, EVENT, encode_event(event))
        self._next_lsn = lsn + 1
        if len(self._buf) >= self._max_batch_bytes:
            self._seal()
        if self._inflight is None and self._timer is None:
            self._arm()
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
        self._sealed.append(Batch(self._buf, self._entries, self._first, self._next_lsn - 1))
        self._buf = bytearray()
        self._entries = []
        self._first = self._next_lsn
        if self._delay > 0 and self._inflight is None and self._timer is not None:
            self._timer.cancel()  # a full batch does not wait for the delay
            self._timer = self._loop.call_soon(self._flush)

    # -- batches -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._timer = None
        if self._inflight is not None or self.failure is not None:
            return
        if not self._sealed:
            if not self._buf:
                return
            self._seal()
        batch = self._sealed.popleft()
        size = len(batch.buf)
        if self._seg_size > self._seg_header_size and self._seg_size + size > self._segment_bytes:
            batch.rotation = self._rotation_for(batch)
            self._seg_first = batch.first_lsn
            self._seg_size = self._seg_header_size = len(batch.rotation.header)
            self._seg_heads = batch.rotation.heads
        batch.segment_first_lsn = self._seg_first
        batch.offset = self._seg_size
        self._seg_size += size
        self._inflight = batch
        self._thread.submit(batch)

    def _rotation_for(self, batch: Batch) -> Rotation:
        # Heads as of batch.first_lsn - 1: undo every record appended since, newest first.
        # Within a channel seqs are consecutive, so "the seq before the first one of a
        # channel in these records" is that record's seq - 1.
        snapshot = dict(self.heads)
        unsent = [self._entries, *(b.entries for b in reversed(self._sealed)), batch.entries]
        for entries in unsent:
            for entry in reversed(entries):
                snapshot[entry.channel] = entry.seq - 1
        snapshot = {ch: seq for ch, seq in snapshot.items() if seq > 0}
        base = self._seg_heads
        last_seqs = {ch: seq for ch, seq in snapshot.items() if base.get(ch) != seq}
        header = encode_header(self._node_id, batch.first_lsn, snapshot)
        return Rotation(header, snapshot, self._seg_first, self._seg_size, last_seqs)

    def _completed(self, batch: Batch) -> None:
        """On the loop: the thread is done with `batch`."""
        self._inflight = None
        if batch.error is not None:
            self._fail(batch)
        else:
            self.durable_lsn = batch.last_lsn
            if self._sealed or self._buf:
                if self._delay > 0 and not self._sealed:
                    self._timer = self._loop.call_later(self._delay, self._flush)
                else:
                    self._flush()  # the next batch goes to disk before the callbacks run
            try:
                self._on_batch(batch)
            except Exception:
                log.exception(
                    "WAL batch handler failed (LSN %d..%d)", batch.first_lsn, batch.last_lsn
                )
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _fail(self, batch: Batch) -> None:
        exc = batch.error
        name = segment_name(batch.segment_first_lsn)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        self.failure = f"{batch.failed_op} failed on {name}: {detail}"
        self.failure_errno = (exc.errno or -1) if isinstance(exc, OSError) else -1
        self._refusal = f"WAL unwritable: {self.failure}"
        log.error(
            "WAL is now unwritable, nothing more will be acknowledged: %s (LSN %d..%d lost)",
            self.failure,
            batch.first_lsn,
            self._next_lsn - 1,
        )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending: list[Entry] = []
        for sealed in self._sealed:
            pending.extend(sealed.entries)
        pending.extend(self._entries)
        self._sealed.clear()
        self._buf, self._entries = bytearray(), []
        for entries in (batch.entries, pending):
            if entries:
                try:
                    self._on_failed(entries, self.failure)
                except Exception:
                    log.exception("WAL failure handler failed")

    # -- lifecycle -----------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until every record appended so far is durable or failed."""
        while self.failure is None and (self._inflight or self._sealed or self._buf):
            if self._inflight is None:
                if self._timer is not None:
                    self._timer.cancel()
                self._flush()
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
        done: Callable[[Batch], None],
    ) -> None:
        self._dir = wal_dir
        self._fd = fd
        self._sync = sync
        self._loop = loop
        self._done = done
        self._jobs: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ferry-wal-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        self._jobs.put(batch)

    async def stop(self) -> None:
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            while True:
                batch = self._jobs.get()
                if batch is None:
                    if not self._sync:  # `write` mode: at least a clean shutdown is durable
                        with contextlib.suppress(OSError):
                            os.fdatasync(self._fd)
                    return
                self._write(batch)
                try:
                    self._loop.call_soon_threadsafe(self._done, batch)
                except RuntimeError:  # the loop is gone: nobody is waiting any more
                    return
                if batch.error is not None:
                    return  # dead for good: never write or sync again
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _write(self, batch: Batch) -> None:
        op = "write"
        try:
            if batch.rotation is not None:
                if not self._sync:
                    op = "fdatasync"
                    os.fdatasync(self._fd)  # a sealed segment is durable even in `write` mode
                op = "segment creation"
                fd = create_segment(self._dir, batch.first_lsn, batch.rotation.header)
                os.close(self._fd)
                self._fd = fd
            op = "write"
            start = time.perf_counter()
            write_all(self._fd, batch.buf)
            written = time.perf_counter()
            if self._sync:
                op = "fdatasync"
                os.fdatasync(self._fd)
            batch.write_s = written - start
            batch.sync_s = time.perf_counter() - written
        except Exception as exc:
            batch.error = exc
            batch.failed_op = op
