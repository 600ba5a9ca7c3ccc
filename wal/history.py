"""Deep history: a channel's messages from before its in-memory ring, read back from the
database log and, for what the replayer has not written yet, from the WAL.

`DeepHistory.read(channel, after, before, limit)` is the `common.durability.HistoryStore`
behind `sub … since` reaching past the ring and the HTTP API's message pages:

    ferry_messages (channel, seq) index ── rows with after < seq < before, oldest first
        └─ short of what was asked (the replayer lags): the WAL from the database's
           checkpoint on, up to its durable LSN (a thread; records only, never a torn tail)

Every record the WAL deleted is in the database (retention waits for the checkpoint),
so between the two nothing durable is missing: a gap in what comes back means the data is
really gone (a `ferry wal repair` cut it, or the database was emptied).

The database is read on its own connection, never the replayer's: SQLite read-only in
one worker thread, MySQL through one aiomysql connection with the sink's deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiomysql
import pymysql

from common.durability import Entry
from wal.errors import HistoryUnavailable
from wal.reader import iter_records
from wal.record import MESSAGE, MessagePayload
from wal.sinks.mysql import parse_mysql_url
from wal.sinks.sqlite import sqlite_path

log = logging.getLogger("ferry.history")

_QUERY = (
    "SELECT seq, ts_ms, sender, client_msg_id, encoding, payload, lsn FROM ferry_messages "
    "WHERE channel = {p} AND node = {p} AND seq > {p} AND seq < {p} ORDER BY seq LIMIT {p}"
)
_CHECKPOINT = "SELECT lsn FROM ferry_checkpoints WHERE node = {p}"
Row = tuple[int, int, str, str | None, int, bytes, int]


class DeepHistory:
    """A `common.durability.HistoryStore`, and a `common.service.Service` (its stop closes
    the database connection)."""

    name = "history"

    def __init__(
        self, db_url: str, node_id: str, wal_dir: str, durable_lsn: Callable[[], int]
    ) -> None:
        self.db_url = db_url
        self.node_id = node_id
        self.wal_dir = wal_dir
        self._durable_lsn = durable_lsn
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferry-history")
        self._sqlite: sqlite3.Connection | None = None
        self._mysql: aiomysql.Connection | None = None
        self._mysql_lock = asyncio.Lock()
        self.reads = 0
        self.wal_reads = 0
        self.failures = 0

    async def read(self, channel: str, after: int, before: int, limit: int) -> list[Entry]:
        """Up to `limit` messages of `channel` with after < seq < before, oldest first."""
        self.reads += 1
        want = min(before - 1, after + limit)
        if want <= after:
            return []
        try:
            rows, checkpoint = await self._db_rows(channel, after, before, limit)
        except (sqlite3.Error, pymysql.MySQLError, OSError, TimeoutError) as exc:
            self.failures += 1
            raise HistoryUnavailable(f"database: {exc}") from None
        entries = [_entry(channel, row) for row in rows]
        last = entries[-1].seq if entries else after
        if last < want:
            # the replayer has not written the rest yet: it is in the WAL after the checkpoint
            self.wal_reads += 1
            more = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._wal_entries, channel, last, before, limit - len(entries),
                checkpoint,
            )  # fmt: skip
            entries.extend(more)
        return entries

    async def _db_rows(
        self, channel: str, after: int, before: int, limit: int
    ) -> tuple[list[Row], int]:
        args = (channel, self.node_id, after, before, limit)
        if self.db_url.startswith("sqlite:"):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._sqlite_rows, args)
        return await self._mysql_rows(args)

    def _sqlite_rows(self, args: tuple[Any, ...]) -> tuple[list[Row], int]:
        if self._sqlite is None:
            path = sqlite_path(self.db_url)
            if not os.path.exists(path):
                return [], 0  # the replayer has not made it yet
            self._sqlite = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, check_same_thread=False
            )
            self._sqlite.execute("PRAGMA busy_timeout=5000")
        db = self._sqlite
        try:
            rows = db.execute(_QUERY.format(p="?"), args).fetchall()
            found = db.execute(_CHECKPOINT.format(p="?"), (self.node_id,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return [], 0
            raise
        return rows, int(found[0]) if found else 0

    async def _mysql_rows(self, args: tuple[Any, ...]) -> tuple[list[Row], int]:
        params = parse_mysql_url(self.db_url)
        timeout = params.pop("statement_timeout")
        async with self._mysql_lock:
            try:
                if self._mysql is None or self._mysql.closed:
                    self._mysql = await asyncio.wait_for(
                        aiomysql.connect(autocommit=True, charset="utf8mb4", **params),
                        params["connect_timeout"] + 1,
                    )
                conn: aiomysql.Connection = self._mysql
                async with conn.cursor() as cur:
                    await asyncio.wait_for(cur.execute(_QUERY.format(p="%s"), args), timeout)
                    rows = list(await cur.fetchall())
                    await asyncio.wait_for(
                        cur.execute(_CHECKPOINT.format(p="%s"), (self.node_id,)), timeout
                    )
                    found = await cur.fetchone()
            except BaseException:
                if self._mysql is not None:
                    self._mysql.close()
                    self._mysql = None
                raise
        return [tuple(r) for r in rows], int(found[0]) if found else 0

    def _wal_entries(
        self, channel: str, after: int, before: int, limit: int, checkpoint: int
    ) -> list[Entry]:
        out: list[Entry] = []
        if limit <= 0:
            return out
        try:
            for record in iter_records(self.wal_dir, checkpoint + 1, self._durable_lsn()):
                if record.type != MESSAGE:
                    continue
                body = record.body
                assert isinstance(body, MessagePayload)
                if body.channel != channel or not after < body.seq < before:
                    continue
                out.append(body.to_entry(record.lsn))
                if len(out) >= limit:
                    break
        except FileNotFoundError:
            pass  # retention deleted a segment under us: those records are in the database
        return out

    def stats(self) -> dict[str, int]:
        return {"reads": self.reads, "wal_reads": self.wal_reads, "failures": self.failures}

    async def start(self) -> None:
        pass  # connects on the first read

    async def stop(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self._mysql is not None:
            self._mysql.close()
            self._mysql = None
        if self._sqlite is not None:
            db, self._sqlite = self._sqlite, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=False)


def _entry(channel: str, row: Row) -> Entry:
    seq, ts_ms, sender, client_msg_id, encoding, payload, lsn = row
    return Entry(channel, seq, ts_ms, sender, client_msg_id, encoding, bytes(payload), lsn=lsn)
