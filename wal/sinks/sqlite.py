"""SQLite sink: the embedded default. The standard library's sqlite3 in ONE worker
thread (a connection belongs to its thread), journal_mode=WAL, synchronous=FULL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wal.errors import SinkError
from wal.sinks.base import SCHEMA_VERSION, RowBatch

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ferry_messages (
        node TEXT NOT NULL, lsn INTEGER NOT NULL, channel TEXT NOT NULL, seq INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL, sender TEXT NOT NULL, client_msg_id TEXT, encoding INTEGER NOT NULL,
        payload BLOB NOT NULL, PRIMARY KEY (node, lsn)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS ferry_messages_channel_seq ON ferry_messages (channel, seq)",
    """CREATE TABLE IF NOT EXISTS ferry_events (
        node TEXT NOT NULL, lsn INTEGER NOT NULL, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL,
        conn_id TEXT NOT NULL, user TEXT NOT NULL, remote TEXT NOT NULL, close_code INTEGER,
        duration_ms INTEGER, PRIMARY KEY (node, lsn)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ferry_checkpoints (
        node TEXT PRIMARY KEY, lsn INTEGER NOT NULL, updated_at INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ferry_schema (
        id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)""",
]


def sqlite_path(url: str) -> str:
    """sqlite:///relative/path, sqlite:////absolute/path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"SQLite URL must look like sqlite:///path/ferry.db, got {url!r}")
    return url[len("sqlite:///") :]


def _migrate_v1_schema_table(db: sqlite3.Connection) -> None:
    """Schema v1's `ferry_schema (version)` had no key: rebuild it keyed by `id`, keeping
    the version (inside the caller's transaction; SQLite's DDL is transactional)."""
    columns = [r[1] for r in db.execute("PRAGMA table_info(ferry_schema)")]
    if "id" in columns:
        return
    (version,) = db.execute("SELECT MAX(version) FROM ferry_schema").fetchone()
    db.execute("DROP TABLE ferry_schema")
    db.execute(SCHEMA[-1])
    if version is not None:
        db.execute("INSERT INTO ferry_schema (id, version) VALUES (1, ?)", (version,))


class SqliteSink:
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferry-sqlite")
        self._db: sqlite3.Connection | None = None
        self.fault: Callable[[str], None] = lambda point: None

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise SinkError(f"sqlite: {exc}") from exc

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self._db is not None:
            return
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA:
                db.execute(statement)
            _migrate_v1_schema_table(db)
            row = db.execute("SELECT version FROM ferry_schema WHERE id = 1").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO ferry_schema (id, version) VALUES (1, ?)", (SCHEMA_VERSION,)
                )
            elif row[0] > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"database schema v{row[0]} is newer than this ferry (v{SCHEMA_VERSION})"
                )
            elif row[0] < SCHEMA_VERSION:
                db.execute("UPDATE ferry_schema SET version = ? WHERE id = 1", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            db.close()
            raise
        self._db = db

    async def checkpoint(self, node: str) -> int:
        return int(await self._run(self._checkpoint, node))

    def _checkpoint(self, node: str) -> int:
        assert self._db is not None
        row = self._db.execute(
            "SELECT lsn FROM ferry_checkpoints WHERE node = ?", (node,)
        ).fetchone()
        return int(row[0]) if row else 0

    async def write(self, batch: RowBatch) -> None:
        await self._run(self._write, batch)

    def _write(self, batch: RowBatch) -> None:
        db = self._db
        if db is None:
            self._open()
            db = self._db
            assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.messages:
                db.executemany(
                    "INSERT OR IGNORE INTO ferry_messages VALUES (?,?,?,?,?,?,?,?,?)",
                    batch.messages,
                )
            if batch.events:
                db.executemany(
                    "INSERT OR IGNORE INTO ferry_events VALUES (?,?,?,?,?,?,?,?,?)", batch.events
                )
            db.execute(
                "INSERT INTO ferry_checkpoints (node, lsn, updated_at) VALUES (?, ?, strftime('%s','now')) "
                "ON CONFLICT(node) DO UPDATE SET lsn = max(lsn, excluded.lsn), updated_at = excluded.updated_at",
                (batch.node, batch.last_lsn),
            )
            self.fault("before_commit")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        try:
            await self._run(_close)
        finally:
            self._executor.shutdown(wait=False)
