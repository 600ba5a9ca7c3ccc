"""Checks that the database log holds every acked message exactly once."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

import pymysql

from tests.load import Acked

# (messages as (channel, seq, payload, lsn) rows, event lsns, checkpoint lsn)
Rows = tuple[list[tuple[Any, ...]], list[int], int]


def rows_sqlite(path: str, node: str) -> Rows:
    db = sqlite3.connect(path)
    try:
        messages = db.execute(
            "SELECT channel, seq, payload, lsn FROM ferry_messages WHERE node = ?", (node,)
        ).fetchall()
        events = [r[0] for r in db.execute("SELECT lsn FROM ferry_events WHERE node = ?", (node,))]
        row = db.execute("SELECT lsn FROM ferry_checkpoints WHERE node = ?", (node,)).fetchone()
        return messages, events, int(row[0]) if row else 0
    finally:
        db.close()


def rows_mysql(conn: pymysql.Connection, node: str) -> Rows:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT channel, seq, payload, lsn FROM ferry_messages WHERE node = %s", (node,)
        )
        messages = list(cur.fetchall())
        cur.execute("SELECT lsn FROM ferry_events WHERE node = %s", (node,))
        events = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT lsn FROM ferry_checkpoints WHERE node = %s", (node,))
        row = cur.fetchone()
    return messages, events, int(row[0]) if row else 0


def check_exactly_once(
    messages: list[tuple[Any, ...]], events: list[int], checkpoint: int, acked: Acked
) -> None:
    # every LSN up to the checkpoint is there exactly once (messages and events share them)
    lsns = sorted([int(m[3]) for m in messages] + [int(e) for e in events])
    assert lsns == list(range(1, checkpoint + 1)), (
        "LSNs in the database are not exactly 1..checkpoint"
    )
    by_channel: dict[str, list[int]] = defaultdict(list)
    stored: dict[tuple[str, int], bytes] = {}
    for channel, seq, payload, _lsn in messages:
        key = (channel, int(seq))
        assert key not in stored, f"duplicate {key}"
        stored[key] = bytes(payload)
        by_channel[channel].append(int(seq))
    for channel, seqs in by_channel.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"seq gap in {channel}"
    missing = [key for key in acked.messages if key not in stored]
    assert not missing, f"{len(missing)} acked messages are not in the database, e.g. {missing[:3]}"
    for key, data in acked.messages.items():
        assert stored[key] == data, f"payload of {key} differs"
