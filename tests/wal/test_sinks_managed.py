"""The MySQL sink against a private MariaDB that refuses what managed MySQL refuses.

DigitalOcean's managed MySQL sets `sql_require_primary_key` (MariaDB: `innodb_force_primary_key`),
has LOAD DATA LOCAL INFILE off, and gives its users no SUPER. The server here is started with
`--innodb-force-primary-key=1 --local-infile=0`, and ferry connects as a user holding only
the privileges a managed database's user gets on its own database (no SUPER, no FILE): schema
creation, both write paths (the bulk one falls back to multi-row INSERTs), the checkpoint and
a restart of the sink and of the server must all work.

A database created by an older ferry (schema v1: `ferry_schema` without a key) is upgraded
on open, keeping its rows and checkpoint, also once the server enforces primary keys.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pymysql
import pytest

from tests.mariadb import PrivateMariaDB, require_mariadb
from wal.sinks import EventRow, MessageRow, RowBatch, SinkError, make_sink
from wal.sinks.base import SCHEMA_VERSION
from wal.sinks.mysql import LOAD_DATA_MIN_ROWS

MANAGED_LIKE = ("--innodb-force-primary-key=1", "--local-infile=0")
APP_USER, APP_PASSWORD = "ferry_app", "app-pw-Secret_1"
# What a managed database's user gets on its database: no SUPER, FILE, PROCESS, RELOAD...
APP_GRANTS = "SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP, REFERENCES"

# The schema as ferry v1 created it (before the primary key on ferry_schema).
V1_SCHEMA = [
    """CREATE TABLE ferry_messages (
        node VARCHAR(64) NOT NULL, lsn BIGINT UNSIGNED NOT NULL, channel VARCHAR(200) NOT NULL,
        seq BIGINT UNSIGNED NOT NULL, ts_ms BIGINT NOT NULL, sender VARCHAR(200) NOT NULL,
        client_msg_id VARCHAR(255) NULL, encoding TINYINT UNSIGNED NOT NULL, payload MEDIUMBLOB NOT NULL,
        PRIMARY KEY (node, lsn), KEY channel_seq (channel, seq)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE ferry_events (
        node VARCHAR(64) NOT NULL, lsn BIGINT UNSIGNED NOT NULL, ts_ms BIGINT NOT NULL,
        kind VARCHAR(16) NOT NULL, conn_id VARCHAR(128) NOT NULL, user VARCHAR(200) NOT NULL,
        remote VARCHAR(128) NOT NULL, close_code INT NULL, duration_ms BIGINT NULL,
        PRIMARY KEY (node, lsn), KEY user_ts (user, ts_ms)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE ferry_checkpoints (
        node VARCHAR(64) NOT NULL PRIMARY KEY, lsn BIGINT UNSIGNED NOT NULL,
        updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
    ) ENGINE=InnoDB""",
    "CREATE TABLE ferry_schema (version INT NOT NULL) ENGINE=InnoDB",
]
SINK_TABLES = {"ferry_messages", "ferry_events", "ferry_checkpoints", "ferry_schema"}


def _rows(node: str, first: int, n: int) -> list[MessageRow]:
    return [
        MessageRow(node, lsn, f"room.{lsn % 5}", lsn, 1795959335357 + lsn, "u", f"m-{lsn}",
                   lsn % 2, b"\x00\t\n\\'" + str(lsn).encode())
        for lsn in range(first, first + n)
    ]  # fmt: skip


def _event(node: str, lsn: int) -> EventRow:
    return EventRow(node, lsn, 1795959335357, "connect", f"c-{lsn}", "u", "127.0.0.1:1", None, None)


def _query(
    db: PrivateMariaDB, sql: str, args: tuple[object, ...] | None = None
) -> list[tuple[object, ...]]:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def _tables_without_primary_key(db: PrivateMariaDB) -> set[str]:
    keyed = {
        r[0]
        for r in _query(
            db,
            "SELECT TABLE_NAME FROM information_schema.TABLE_CONSTRAINTS "
            "WHERE TABLE_SCHEMA = 'ferry' AND CONSTRAINT_TYPE = 'PRIMARY KEY'",
        )
    }
    tables = {
        r[0]
        for r in _query(
            db, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'ferry'"
        )
    }
    assert tables >= SINK_TABLES, tables
    return {str(t) for t in tables - keyed}


def _create_app_user(db: PrivateMariaDB) -> str:
    for statement in (
        f"CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'",
        f"GRANT {APP_GRANTS} ON ferry.* TO '{APP_USER}'@'%'",
    ):
        _query(db, statement)
    (grants,) = _query(db, f"SHOW GRANTS FOR '{APP_USER}'@'%'")[:1]
    assert "SUPER" not in str(grants) and "FILE" not in str(grants)
    return db.url_for(APP_USER, APP_PASSWORD)


async def test_sink_on_a_server_that_acts_like_managed_mysql(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = require_mariadb(tmp_path / "db", *MANAGED_LIKE)
    try:
        # The server really enforces both.
        with pytest.raises(pymysql.MySQLError) as refused:
            _query(db, "CREATE TABLE ferry.no_key (x INT) ENGINE=InnoDB")
        assert refused.value.args[0] == 1173, refused.value  # ER_REQUIRES_PRIMARY_KEY
        assert _query(db, "SELECT @@GLOBAL.local_infile") == [(0,)]
        url = _create_app_user(db)

        node = "managed-1"
        sink = make_sink(url)
        await sink.open()  # schema creation, as the unprivileged user
        assert _tables_without_primary_key(db) == set()
        assert _query(db, "SELECT id, version FROM ferry.ferry_schema") == [(1, SCHEMA_VERSION)]

        big = _rows(node, 1, LOAD_DATA_MIN_ROWS + 5)  # the LOAD DATA path: refused, falls back
        with caplog.at_level(logging.WARNING, logger="ferry.sink.mysql"):
            await sink.write(RowBatch(node, big, [_event(node, len(big) + 1)], len(big) + 1))
        assert "refuses LOAD DATA LOCAL INFILE" in caplog.text
        head = len(big) + 1
        small = _rows(node, head + 1, 10)  # the multi-row INSERT path
        await sink.write(RowBatch(node, small, [], head + 10))
        assert await sink.checkpoint(node) == head + 10
        await sink.close()

        # A new sink (the replayer restarted) and then a restarted server: same state.
        for restart_server in (False, True):
            if restart_server:
                db.stop()
                db.start()
            sink = make_sink(url)
            await sink.open()
            assert await sink.checkpoint(node) == head + 10
            await sink.write(RowBatch(node, small, [], head + 10))  # a retried batch: no change
            await sink.close()

        assert _query(db, "SELECT COUNT(*) FROM ferry.ferry_messages WHERE node = %s", (node,)) == [
            (len(big) + len(small),)
        ]
        stored = _query(
            db, "SELECT payload FROM ferry.ferry_messages WHERE node = %s AND lsn = 7", (node,)
        )
        assert stored == [(big[6].payload,)]
        assert _query(db, "SELECT COUNT(*) FROM ferry.ferry_events") == [(1,)]
        assert _query(db, "SELECT COUNT(*) FROM ferry.ferry_schema") == [(1,)]
    finally:
        db.stop()


async def test_a_v1_database_is_upgraded_also_once_keys_are_enforced(tmp_path: Path) -> None:
    db = require_mariadb(tmp_path / "db")
    try:
        node = "old-node"
        conn = db.connect()
        with conn.cursor() as cur:
            for statement in V1_SCHEMA:
                cur.execute(statement)
            cur.execute("INSERT INTO ferry_schema (version) VALUES (1)")
            cur.execute("INSERT INTO ferry_checkpoints (node, lsn) VALUES (%s, 42)", (node,))
            cur.execute(
                "INSERT INTO ferry_messages VALUES (%s, 42, 'room.1', 7, 1, 'u', NULL, 0, 'x')",
                (node,),
            )
        conn.close()
        assert _tables_without_primary_key(db) == {"ferry_schema"}

        # The operator moves to a server that enforces keys; the old table is still there.
        db.stop()
        db.server_args = MANAGED_LIKE
        db.start()
        sink = make_sink(db.url)
        await sink.open()
        assert _tables_without_primary_key(db) == set()
        assert _query(db, "SELECT id, version FROM ferry.ferry_schema") == [(1, SCHEMA_VERSION)]
        assert await sink.checkpoint(node) == 42
        await sink.write(RowBatch(node, _rows(node, 43, 3), [], 45))
        assert await sink.checkpoint(node) == 45
        await sink.close()
        assert _query(db, "SELECT COUNT(*) FROM ferry.ferry_messages") == [(4,)]

        # Opening again is a no-op; a newer schema than this ferry's is refused.
        sink = make_sink(db.url)
        await sink.open()
        await sink.close()
        _query(db, "UPDATE ferry.ferry_schema SET version = %s", (SCHEMA_VERSION + 1,))
        sink = make_sink(db.url)
        with pytest.raises(SinkError, match="newer than this ferry"):
            await sink.open()
        await sink.close()
    finally:
        db.stop()


async def test_a_v1_sqlite_database_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE ferry_messages (node TEXT NOT NULL, lsn INTEGER NOT NULL, channel TEXT NOT NULL,
            seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL, sender TEXT NOT NULL, client_msg_id TEXT,
            encoding INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (node, lsn)) WITHOUT ROWID;
        CREATE TABLE ferry_checkpoints (node TEXT PRIMARY KEY, lsn INTEGER NOT NULL,
            updated_at INTEGER NOT NULL);
        CREATE TABLE ferry_schema (version INTEGER NOT NULL);
        INSERT INTO ferry_schema VALUES (1);
        INSERT INTO ferry_checkpoints VALUES ('n', 9, 0);
        """
    )
    old.commit()
    old.close()
    sink = make_sink(f"sqlite:///{path}")
    await sink.open()
    assert await sink.checkpoint("n") == 9
    await sink.write(RowBatch("n", _rows("n", 10, 2), [], 11))
    await sink.close()
    check = sqlite3.connect(path)
    assert check.execute("SELECT id, version FROM ferry_schema").fetchall() == [(1, SCHEMA_VERSION)]
    pk = [r[1] for r in check.execute("PRAGMA table_info(ferry_schema)") if r[5]]
    assert pk == ["id"]
    check.execute("UPDATE ferry_schema SET version = ?", (SCHEMA_VERSION + 1,))
    check.commit()
    check.close()
    sink = make_sink(f"sqlite:///{path}")
    with pytest.raises(SinkError, match="newer than this ferry"):
        await sink.open()
    await sink.close()
