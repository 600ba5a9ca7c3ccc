"""The sinks on their own: rows round-trip byte for byte (tricky ids and payloads), writes
are idempotent on (node, lsn), the checkpoint never moves back. MySQL runs against the
machine's shared MariaDB (127.0.0.1:3306) in a database of its own, `ferry_sinks` (not
`test`: opening a sink upgrades the schema, which would trip an older checkout's tests)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.helpers import unavailable
from wal.sinks import EventRow, MessageRow, RowBatch, Sink, make_sink, redact_url
from wal.sinks.mysql import LOAD_DATA_MIN_ROWS

SINK_DB = "ferry_sinks"
SHARED_MYSQL = f"mysql://root@127.0.0.1:3306/{SINK_DB}"
TRICKY_IDS = [
    None,
    "plain",
    "tab\there",
    "new\nline",
    "back\\slash",
    "quote'\"",
    "\\N",
    "ünï ✓",
    "",
    "x" * 128,
]


def _rows(node: str, first: int, n: int) -> list[MessageRow]:
    rows = []
    for i in range(n):
        lsn = first + i
        payload = bytes([lsn % 256, 0, 9, 10, 92, 39]) + f'{{"i":{lsn},"s":"é\\t"}}'.encode()
        rows.append(MessageRow(node, lsn, f"room.{lsn % 7}", lsn, 1795959335357 + lsn, "user@x",
                               TRICKY_IDS[lsn % len(TRICKY_IDS)], lsn % 2, payload))  # fmt: skip
    return rows


@pytest.fixture(params=["sqlite", "mysql"])
async def sink(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sink]:
    url = f"sqlite:///{tmp_path / 'sink.db'}" if request.param == "sqlite" else SHARED_MYSQL
    s = make_sink(url)
    try:
        if request.param == "mysql":
            conn = pymysql.connect(host="127.0.0.1", user="root", connect_timeout=2)
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS {SINK_DB}")
            conn.close()
        await s.open()
    except Exception as exc:
        unavailable(f"{url}: {exc}")
    yield s
    await s.close()


async def _read_back(
    sink: Sink, node: str, tmp_path: Path
) -> tuple[list[tuple[Any, ...]], list[int]]:  # a driver's rows: untyped
    if sink.url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(sink.url[len("sqlite:///") :])
        rows = db.execute(
            "SELECT node, lsn, channel, seq, ts_ms, sender, client_msg_id, encoding, payload FROM ferry_messages "
            "WHERE node = ? ORDER BY lsn", (node,)).fetchall()  # fmt: skip
        events = [r[0] for r in db.execute("SELECT lsn FROM ferry_events WHERE node = ?", (node,))]
        db.close()
        return rows, events
    conn = pymysql.connect(host="127.0.0.1", user="root", database=SINK_DB)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT node, lsn, channel, seq, ts_ms, sender, client_msg_id, encoding, payload FROM ferry_messages "
            "WHERE node = %s ORDER BY lsn", (node,))  # fmt: skip
        rows = [tuple(r) for r in cur.fetchall()]
        cur.execute("SELECT lsn FROM ferry_events WHERE node = %s", (node,))
        events = [r[0] for r in cur.fetchall()]
    conn.close()
    return rows, events


@pytest.mark.parametrize(
    "size", [50, LOAD_DATA_MIN_ROWS + 10]
)  # multi-row INSERT and the bulk path
async def test_round_trip_idempotent(sink: Sink, tmp_path: Path, size: int) -> None:
    node = f"t-{uuid.uuid4().hex[:12]}"
    rows = _rows(node, 1, size)
    event = EventRow(
        node, size + 1, 1795959335357, "disconnect", "c-1", "user@x", "127.0.0.1:1\t", 1000, 42
    )
    batch = RowBatch(node, rows, [event], size + 1)
    await sink.write(batch)
    await sink.write(batch)  # a retried batch (its commit was lost) changes nothing
    assert await sink.checkpoint(node) == size + 1
    # an older batch never moves the checkpoint back
    await sink.write(RowBatch(node, rows[:5], [], 5))
    assert await sink.checkpoint(node) == size + 1
    stored, events = await _read_back(sink, node, tmp_path)
    assert len(stored) == size and events == [size + 1]
    for want, got in zip(rows, stored, strict=True):
        assert tuple(got[:8]) == tuple(want[:8])
        assert bytes(got[8]) == want.payload


def test_redact_url() -> None:
    assert redact_url("mysql://u:secret@h:3306/db") == "mysql://u:***@h:3306/db"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


async def test_mysql_without_local_infile_falls_back(tmp_path: Path) -> None:
    from tests.mariadb import require_mariadb

    db = require_mariadb(tmp_path / "db")
    try:
        conn = db.connect()
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL local_infile = 0")
        conn.close()
        sink = make_sink(db.url)
        await sink.open()
        node = "no-infile"
        rows = _rows(node, 1, LOAD_DATA_MIN_ROWS + 1)
        await sink.write(RowBatch(node, rows, [], len(rows)))
        assert await sink.checkpoint(node) == len(rows)
        conn = db.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM ferry_messages WHERE node = %s", (node,))
            assert cur.fetchone() == (len(rows),)
        conn.close()
        await sink.close()
    finally:
        db.stop()
