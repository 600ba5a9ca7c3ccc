"""The heads store: every channel's last durable seq, kept outside the segments.

`heads.db` in the WAL directory: stdlib sqlite3, journal_mode=WAL, synchronous=FULL (a
commit is fsync'ed before it returns), `WITHOUT ROWID` tables:

    heads(channel TEXT PRIMARY KEY, seq INTEGER NOT NULL, lsn INTEGER NOT NULL)
    meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)   'version' = 1, 'as_of' = X,
                                                         'epoch' = a random 63-bit id

The store is complete up to `as_of`: every channel with a MESSAGE record at an LSN <= X
has a row with the seq of its last such record, and `lsn` is that record's LSN (0 when the
head came from a version 1 segment header's snapshot, where the record's LSN is unknown).
The `epoch` is made with the store and never changes: it names this incarnation of the
seq space (docs/protocol.md, "Epochs"). A new store (a new or wiped WAL directory, or
`ferry wal repair` setting a damaged one aside, after which channels restart at seq 1)
is a new epoch. Heads and `as_of` change in one transaction, so a crash leaves the old or the new pair.
A row's seq never goes down (`WHERE excluded.seq > heads.seq`): after a repair cut acked
records the store may be ahead of the log, and a channel then continues after a gap
instead of reusing seqs.

Three parts: `HeadsStore` (the writing connection: recovery's thread, then the flush
thread), `HeadsReader` (a second connection, read-only, on the event loop: `head_of`) and
`HeadsTracker` (the loop side: the dirty heads, one flush in flight, `head_of`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from wal.errors import HeadsStoreError
from wal.segment import V1_HEADS, fsync_dir

log = logging.getLogger("ferry.wal")

HEADS_NAME = "heads.db"
STORE_VERSION = 1
# Dirty channels that make the tracker flush without waiting for a rotation.
FLUSH_CHANNELS = 50_000
# Channels per `IN (...)` lookup (SQLite allows 32766 parameters; keep statements small).
_LOOKUP_CHUNK = 500


class Head(Protocol):
    """A channel's last durable MESSAGE record: its seq and LSN. The writer's dirty heads
    are the `common.durability.Entry` objects themselves (one dict store per entry, no allocation);
    recovery makes `StoredHead`s."""

    seq: int
    lsn: int


class StoredHead:
    __slots__ = ("lsn", "seq")

    def __init__(self, seq: int, lsn: int) -> None:
        self.seq = seq
        self.lsn = lsn

    def __repr__(self) -> str:
        return f"StoredHead(seq={self.seq}, lsn={self.lsn})"


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS heads(channel TEXT PRIMARY KEY, seq INTEGER NOT NULL, "
    "lsn INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    f"INSERT OR IGNORE INTO meta(key, value) VALUES ('version', {STORE_VERSION}), ('as_of', 0)",
)
_UPSERT = (
    "INSERT INTO heads(channel, seq, lsn) VALUES (?, ?, ?) ON CONFLICT(channel) DO UPDATE "
    "SET seq = excluded.seq, lsn = excluded.lsn WHERE excluded.seq > heads.seq"
)
# A store made before epochs existed gets one at its next open.
_ADD_EPOCH = "INSERT OR IGNORE INTO meta(key, value) VALUES ('epoch', ?)"
_GET_EPOCH = "SELECT value FROM meta WHERE key = 'epoch'"
_SET_AS_OF = "UPDATE meta SET value = ? WHERE key = 'as_of'"
_GET = "SELECT seq FROM heads WHERE channel = ?"


def heads_path(wal_dir: str) -> str:
    return os.path.join(wal_dir, HEADS_NAME)


def _meta(conn: sqlite3.Connection, path: str) -> tuple[int, int]:
    rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    version, as_of = rows.get("version"), rows.get("as_of")
    if version != STORE_VERSION or not isinstance(as_of, int):
        raise HeadsStoreError(path, f"unknown heads store format (meta {rows!r})")
    return version, as_of


class HeadsStore:
    """The writing connection. Used by one thread at a time (recovery's, then the flush
    thread's); `check_same_thread=False` lets it move between them."""

    def __init__(
        self, path: str, conn: sqlite3.Connection, as_of: int, created: bool, epoch: int = 0
    ) -> None:
        self.path = path
        self.as_of = as_of
        self.epoch = f"{epoch:016x}"  # the store's incarnation, 16 hex digits
        self.created = created  # the file did not exist before `open`
        self._conn = conn

    @classmethod
    def open(cls, wal_dir: str) -> HeadsStore:
        """Open (or create, with as_of 0) `heads.db` in `wal_dir`. Blocking."""
        path = heads_path(wal_dir)
        created = not os.path.exists(path)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise HeadsStoreError(path, f"journal_mode is {mode!r}, not 'wal'")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(_ADD_EPOCH, (secrets.randbits(63),))
            conn.execute("COMMIT")
            _, as_of = _meta(conn, path)
            epoch = conn.execute(_GET_EPOCH).fetchone()[0]
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise HeadsStoreError(path, f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if created:
            fsync_dir(wal_dir)  # the new file's (and its -wal's) directory entries
        return cls(path, conn, as_of, created, epoch)

    def write(self, heads: Mapping[str, Head], as_of: int) -> None:
        """Upsert `heads` and set `as_of`, in one transaction (fsync'ed at commit)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT, _rows(heads))
                conn.execute(_SET_AS_OF, (as_of,))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise HeadsStoreError(self.path, f"{type(exc).__name__}: {exc}") from None
        self.as_of = as_of

    def seqs(self, channels: Iterable[str]) -> dict[str, int]:
        """The stored seq of each of `channels` that has a row."""
        names = list(channels)
        found: dict[str, int] = {}
        try:
            for i in range(0, len(names), _LOOKUP_CHUNK):
                chunk = names[i : i + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT channel, seq FROM heads WHERE channel IN ({marks})"
                found.update(self._conn.execute(query, chunk).fetchall())
        except sqlite3.Error as exc:
            raise HeadsStoreError(self.path, f"{type(exc).__name__}: {exc}") from None
        return found

    def count_from(self, lsn: int) -> int:
        """Rows whose head record is at `lsn` or later."""
        return int(
            self._conn.execute("SELECT count(*) FROM heads WHERE lsn >= ?", (lsn,)).fetchone()[0]
        )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


def _rows(heads: Mapping[str, Head]) -> Iterator[tuple[str, int, int]]:
    for channel, head in heads.items():
        yield channel, head.seq, head.lsn


class HeadsReader:
    """A read-only connection for point lookups on the event loop.

    Measured from the page cache, SQLite 3.40, 200-character names: 5.4 us per hit and
    4.9 us per miss over 300k rows (`tests/wal/test_heads.py::test_head_of_lookup_cost`
    prints it); through `WalLog.head_of`, 100k rows, 5.5 us per hit and 5.8 us per miss
    (`python -m bench.micro.test_wal_micro`). A dirty head answers in ~0.1 us.
    In WAL mode a reader never waits for the flush thread's transaction: it sees the last
    commit. Each lookup's statement is reset when its cursor goes (no snapshot is held).
    `busy_timeout` 1 s: a WAL-mode reader only meets SQLITE_BUSY while another connection
    rebuilds the WAL index (the first open after a crash, before this reader exists).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise HeadsStoreError(path, f"{type(exc).__name__}: {exc}") from None
        conn.execute("PRAGMA busy_timeout=1000")
        self._conn = conn
        self._execute = conn.execute

    def get(self, channel: str) -> int:
        """The stored seq of `channel`, 0 if it has no row."""
        try:
            row = self._execute(_GET, (channel,)).fetchone()
        except sqlite3.Error as exc:
            raise HeadsStoreError(self.path, f"{type(exc).__name__}: {exc}") from None
        return int(row[0]) if row is not None else 0

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


@dataclass(frozen=True, slots=True)
class HeadsSummary:
    """What `ferry wal inspect|verify` show about a directory's heads store."""

    path: str
    as_of: int
    channels: int
    integrity: str  # "ok", or what PRAGMA quick_check found


def read_summary(wal_dir: str, *, check: bool = False) -> HeadsSummary | None:
    """as_of and row count of `wal_dir`'s heads.db (None if there is none). Never writes
    a row (opened read-write, without create, only so that the last connection to close
    cleans up the -wal and -shm files as SQLite does: a read-only one leaves them).

    Raises `HeadsStoreError` when the file is there but unreadable."""
    path = heads_path(wal_dir)
    if not os.path.exists(path):
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
        try:
            _, as_of = _meta(conn, path)
            count = int(conn.execute("SELECT count(*) FROM heads").fetchone()[0])
            integrity = "ok"
            if check:
                rows = conn.execute("PRAGMA quick_check").fetchall()
                integrity = "; ".join(str(r[0]) for r in rows)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise HeadsStoreError(path, f"{type(exc).__name__}: {exc}") from None
    return HeadsSummary(path, as_of, count, integrity)


class HeadsTracker:
    """The loop side of the heads store.

    `dirty` gets every MESSAGE entry of a batch when the batch completes, by channel (the
    writer stores them: one dict store per entry, on the loop; the entry is the head, its
    seq and lsn are read when it is flushed). The entries it holds were all appended since
    the flush before the last one started (at most about two segments' worth, with a
    flush at each rotation), and are mostly the very objects the router's rings hold. A flush moves `dirty` to
    `flushing` and upserts it with as_of = the durable LSN at that moment, in a thread of
    its own (never the fdatasync thread), one flush at a time; a flush asked for meanwhile
    runs when it is done. So at any moment heads.db(as_of) + `flushing` + `dirty` are the
    heads of every durable record, which is what `head_of` reads, newest first.
    """

    def __init__(
        self,
        store: HeadsStore,
        reader: HeadsReader,
        dirty: dict[str, Head],
        *,
        durable_lsn: Callable[[], int],
        on_flushed: Callable[[float], None],
        on_error: Callable[[BaseException], None],
        flush_channels: int = FLUSH_CHANNELS,
    ) -> None:
        self.dirty = dirty
        self.flushing: dict[str, Head] | None = None
        self.as_of = store.as_of
        self.flush_channels = flush_channels
        self.flushes = 0
        self.error: BaseException | None = None
        self._store = store
        self._reader = reader
        self._durable_lsn = durable_lsn
        self._on_flushed = on_flushed
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferry-wal-heads")
        self._inflight: asyncio.Future[float] | None = None
        self._again = False
        self._closed = False

    def head_of(self, channel: str) -> int:
        head = self.dirty.get(channel)
        if head is not None:
            return head.seq
        flushing = self.flushing
        if flushing is not None:
            head = flushing.get(channel)
            if head is not None:
                return head.seq
        if self._closed:
            return 0
        return self._reader.get(channel)

    @property
    def flushing_now(self) -> bool:
        return self._inflight is not None

    def request_flush(self) -> None:
        """Flush now, or as soon as the flush in flight is done."""
        if self.error is not None or self._closed:
            return
        if self._inflight is not None:
            self._again = True
            return
        self._start()

    def _start(self) -> None:
        as_of = self._durable_lsn()
        self._again = False
        if not self.dirty and as_of <= self.as_of:
            return
        heads, self.dirty = self.dirty, {}
        self.flushing = heads
        future = self._loop.run_in_executor(self._executor, self._write, heads, as_of)
        self._inflight = future
        future.add_done_callback(partial(self._done, as_of))

    def _write(self, heads: dict[str, Head], as_of: int) -> float:
        """In the flush thread."""
        start = time.perf_counter()
        self._store.write(heads, as_of)
        return time.perf_counter() - start

    def _done(self, as_of: int, future: asyncio.Future[float]) -> None:
        self._inflight = None
        exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if exc is not None:
            # `flushing` stays: head_of keeps answering from it.
            self.error = exc
            log.error("WAL heads store flush failed (as of LSN %d): %s", as_of, exc)
            self._on_error(exc)
            return
        self.flushing = None
        self.as_of = as_of
        self.flushes += 1
        try:
            self._on_flushed(future.result())
        except Exception as error:  # the owner's bookkeeping: a failure like any other
            self.error = error
            self._on_error(error)
            return
        if not self._closed and (self._again or len(self.dirty) >= self.flush_channels):
            self._start()

    async def wait(self) -> None:
        """Until no flush is in flight (errors are reported through `on_error`)."""
        while self._inflight is not None:
            await asyncio.wait([self._inflight])
            # A done future does not yield when awaited, and `_done` (which clears
            # `_inflight`) runs from the loop's queue: let it.
            await asyncio.sleep(0)

    async def close(self) -> None:
        """Wait for the flush in flight, flush what is dirty, close the connections."""
        if self._closed:
            return
        await self.wait()
        if self.error is None:
            self._start()
            await self.wait()
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown)
        self._reader.close()
        self._store.close()


def heads_behind(as_of: int, oldest_first_lsn: int, oldest_version: int) -> bool:
    """Whether heads.db (complete up to `as_of`) misses heads that no segment can give
    back: the log begins after as_of + 1 and its oldest segment has no heads snapshot
    (version 1 headers carry one: the migration)."""
    return oldest_first_lsn - 1 > as_of and oldest_version != V1_HEADS
