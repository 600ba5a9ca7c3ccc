"""Crash consistency of the heads store: SIGKILL a writer between a rotation and the heads
flush it asks for (the flush thread is held before its transaction), or in the middle of
that transaction (held before COMMIT). After the restart every channel's head is right,
including channels whose every record retention had already deleted."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wal.conftest import UNIT, LogFactory, line_then_sigkill
from tests.wal.faults import REPO
from wal.segment import PREALLOC_VERSION, list_segments, load_header

CHILD = r"""
import asyncio, json, os, sys, threading
from common.durability import Entry, HistoryLimits
from wal import WalLog, heads

wal_dir, mode, marker = sys.argv[1], sys.argv[2], sys.argv[3]
armed = threading.Event()
hold = threading.Event()  # never set: the flush thread stays where it is until the kill


class HeldConnection:
    # Passes everything to the real connection; once armed, holds the flush thread
    # before its transaction ("before") or before its COMMIT ("during").
    def __init__(self, conn):
        self._conn = conn

    def _maybe_hold(self, sql):
        if not armed.is_set() or not threading.current_thread().name.startswith("ferry-wal-heads"):
            return
        if (mode == "before" and sql == "BEGIN IMMEDIATE") or (mode == "during" and sql == "COMMIT"):
            open(marker, "w").close()
            hold.wait()

    def execute(self, sql, *args):
        self._maybe_hold(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql, rows):
        return self._conn.executemany(sql, rows)

    def close(self):
        self._conn.close()


real_open = heads.HeadsStore.open.__func__


def open_held(cls, wal_dir):
    store = real_open(cls, wal_dir)
    store._conn = HeldConnection(store._conn)
    return store


heads.HeadsStore.open = classmethod(open_held)


async def main():
    log = WalLog(wal_dir, node_id="node-a", segment_bytes=16 * 1024)
    await log.open(HistoryLimits(size=0))
    expected = {}
    waiting = {}

    def durable(entries):
        for e in entries:
            expected[e.channel] = e.seq
        log.set_checkpoint(entries[-1].lsn)  # as a replayer keeping up would
        for lsn in [l for l in waiting if l <= entries[-1].lsn]:
            waiting.pop(lsn).set_result(None)

    log.set_handlers(durable, lambda entries, reason: print("FAILED", reason, flush=True))
    loop = asyncio.get_running_loop()
    seqs = {}

    async def wave(channels):
        for ch in channels:
            seqs[ch] = seqs.get(ch, 0) + 1
            log.append(Entry(ch, seqs[ch], 0, "u", None, 0, b'"payload"'))
        future = waiting[log.head_lsn] = loop.create_future()
        await future

    early = [f"early.{i}" for i in range(300)]
    for _ in range(3):
        await wave(early)  # then silent: retention deletes all of their records
    for i in range(40):
        await wave([f"late.{j}" for j in range(i % 5, 200, 5)])
    await log.wait_deletions()
    first = int(min(n for n in os.listdir(wal_dir) if n.endswith(".wal")).split(".")[0])
    armed.set()  # the next flush (at the next rotation) is held
    i = 0
    while not os.path.exists(marker):
        i += 1
        await wave([f"late.{j}" for j in range(i % 5, 200, 5)])
    for i in range(30):  # more rotations and dirty heads while the flush is held
        await wave([f"late.{j}" for j in range(i % 7, 200, 7)] + early[i * 10 : i * 10 + 10])
    print(json.dumps({"expected": expected, "first_lsn_when_armed": first}), flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["before", "during"])
async def test_sigkill_around_the_heads_flush_keeps_every_head(
    logs: LogFactory, tmp_path: Path, mode: str
) -> None:
    wal_dir = tmp_path / "wal"
    child = _spawn(wal_dir, mode, tmp_path / "held")
    report = json.loads(await line_then_sigkill(child, 12 * UNIT))
    expected: dict[str, int] = report["expected"]
    assert len(expected) == 500
    # Retention had deleted the early channels' records before the flush was held.
    assert report["first_lsn_when_armed"] > 900
    assert min(first for first, _ in list_segments(str(wal_dir))) > 900

    # The kill left heads.db behind the log: its as_of is before the newest records, the
    # early channels' 4th messages (written while the flush was held) are not in it.
    conn = sqlite3.connect(f"file:{wal_dir / 'heads.db'}?mode=ro", uri=True)
    stored = dict(conn.execute("SELECT channel, seq FROM heads").fetchall())
    as_of = conn.execute("SELECT value FROM meta WHERE key = 'as_of'").fetchone()[0]
    conn.close()
    assert all(stored[f"early.{i}"] == 3 and expected[f"early.{i}"] == 4 for i in range(300))
    assert 900 < as_of < sum(expected.values())

    log, state, _ = await logs.open(wal_dir, history_size=0, segment_bytes=16 * 1024)
    got = {ch: log.head_of(ch) for ch in expected}
    assert got == expected
    assert all(state.heads[ch] == expected[ch] for ch in state.heads)
    first_header = load_header(list_segments(str(wal_dir))[0][1])
    # the child wrote preallocated segments (version 3): no heads snapshot either
    assert first_header.version == PREALLOC_VERSION and first_header.size == 96
    await log.close()
    log, _, _ = await logs.open(wal_dir, history_size=0)  # once more, after a clean close
    assert {ch: log.head_of(ch) for ch in expected} == expected


def _spawn(wal_dir: Path, mode: str, marker: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(wal_dir), mode, str(marker)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
