"""`ferry replay` as a tool: drains a WAL into a database with a summary, resumes from the
checkpoint, and stays off a WAL whose lock another replayer holds."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

from common.durability import Encoding, Entry, HistoryLimits
from tests.helpers import ROOT, UNIT
from wal.lockfile import replay_lock
from wal.log import WalLog


async def _write_wal(wal_dir: Path, n: int, start_seq: int = 1) -> None:
    log = WalLog(str(wal_dir), node_id="tool-node")
    await log.open(HistoryLimits(size=10))
    done = asyncio.Event()
    durable: list[int] = []

    def on_durable(entries: list[Entry]) -> None:
        durable.extend(e.lsn for e in entries)
        if len(durable) == n:
            done.set()

    log.set_handlers(on_durable, lambda entries, reason: None)
    for i in range(n):
        log.append(
            Entry(
                "room.t",
                start_seq + i,
                1795959335357,
                "alice",
                f"m{i}",
                Encoding.JSON,
                b'{"i":%d}' % i,
            )
        )
    await asyncio.wait_for(done.wait(), UNIT)
    await log.close()


def _replay(wal_dir: Path, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "replay", "--wal-dir", str(wal_dir), "--db", f"sqlite:///{db}", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=UNIT * 6,
    )  # fmt: skip


async def test_replay_tool_drains_resumes_and_respects_the_lock(tmp_path: Path) -> None:
    wal_dir, db = tmp_path / "wal", tmp_path / "ferry.db"
    await _write_wal(wal_dir, 500)

    lock = replay_lock(str(wal_dir))
    lock.acquire()  # as a running `ferry serve` replayer would
    try:
        held = await asyncio.to_thread(_replay, wal_dir, db)
        assert held.returncode == 3 and "another replayer" in held.stderr
    finally:
        lock.release()

    first = await asyncio.to_thread(_replay, wal_dir, db)
    assert first.returncode == 0, first.stderr
    assert "replayed 500 records" in first.stdout and "checkpoint 500" in first.stdout

    await _write_wal(wal_dir, 250, start_seq=501)  # the WAL grows; the tool resumes after 500
    second = await asyncio.to_thread(_replay, wal_dir, db)
    assert second.returncode == 0 and "replayed 250 records" in second.stdout, second.stdout

    rows = (
        sqlite3.connect(db)
        .execute("SELECT lsn, seq, payload FROM ferry_messages ORDER BY lsn")
        .fetchall()
    )
    assert [r[0] for r in rows] == list(range(1, 751)) and [r[1] for r in rows] == list(
        range(1, 751)
    )
    assert rows[0][2] == b'{"i":0}'
