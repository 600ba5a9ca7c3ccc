"""`ferry bench replay`: write a WAL of N records, time draining it into `--db`.

Only the contracts of docs/design.md are used, so this runs as soon as they exist:
* records are written through `wal.log.WalLog` as the relay does (`DurableLog`:
  `core.compose.wal_log`, `open`, `set_handlers`, `append`, `close`);
* the drain is `ferry replay --wal-dir D --db URL` (docs/design.md §5) — run as the module it
  delegates to, `core.replay_tool` — timed from start to exit (process start-up included:
  small against a large N).
Until `wal.log`, `wal.replay.replayer` and `core.replay_tool` exist the scenario says so and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import procfs
from bench.profiling import py_spy, top_functions
from bench.report import Result
from bench.targets import ROOT
from common.durability import HistoryLimits

NEEDS = (
    "ferry bench replay needs the WAL and the replayer "
    "(wal.log.WalLog, wal.replay.replayer, core.replay_tool)"
)
MODULES = ("wal.log", "wal.replay.replayer", "core.replay_tool")
# `ferry replay ARGS` is `core.replay_tool.main(ARGS)`; called directly so that the drain
# does not depend on how core/cli.py forwards its arguments.
REPLAY = "import sys, core.replay_tool as t; sys.exit(t.main(sys.argv[1:]))"


def replayer_available() -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in MODULES)
    except ImportError:
        return False


async def write_wal(wal_dir: str, records: int, payload: int, node: str) -> float:
    """N message records through the real log; returns the seconds it took."""
    from common.durability import Encoding, Entry
    from core.compose import wal_log
    from core.config import Config

    config = replace(Config(), durability="wal", wal_dir=wal_dir, wal_sync="write", node_id=node)
    log: Any = wal_log(config)
    await log.open(HistoryLimits(size=0))
    log.set_handlers(lambda entries: None, lambda entries, reason: None)
    data = b'{"p":"' + b"x" * max(0, payload - 8) + b'"}'
    seqs: dict[str, int] = {}
    t0 = time.monotonic()
    now_ms = time.time_ns() // 1_000_000
    for i in range(records):
        ch = f"replay.{i % 100}"
        seq = seqs[ch] = seqs.get(ch, 0) + 1
        log.append(Entry(ch, seq, now_ms, "bench", None, Encoding.JSON, data))
        if i % 5000 == 4999:
            await asyncio.sleep(0)  # let the group commit run
    await log.close()
    return time.monotonic() - t0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sqlite_rows(url: str, node: str) -> int | None:
    path = url.removeprefix("sqlite:///")
    try:
        with sqlite3.connect(path) as db:
            query = "SELECT COUNT(*) FROM ferry_messages WHERE node = ?"
            return int(db.execute(query, (node,)).fetchone()[0])
    except sqlite3.Error:
        return None


def _mysql_rows(url: str, node: str, *, delete: bool) -> int | None:
    """Rows of this run's node in a MySQL database; with `delete`, removed afterwards
    (a shared server keeps no bench rows)."""
    import urllib.parse

    import pymysql

    u = urllib.parse.urlsplit(url)
    try:
        conn = pymysql.connect(
            host=u.hostname or "127.0.0.1",
            port=u.port or 3306,
            user=urllib.parse.unquote(u.username or "root"),
            password=urllib.parse.unquote(u.password or ""),
            database=u.path.lstrip("/"),
            autocommit=True,
        )
    except pymysql.Error:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM ferry_messages WHERE node = %s", (node,))
            row = cur.fetchone()
            assert row is not None  # COUNT(*) answers one row
            rows = int(row[0])
            if delete:
                cur.execute("DELETE FROM ferry_messages WHERE node = %s", (node,))
                cur.execute("DELETE FROM ferry_checkpoints WHERE node = %s", (node,))
            return rows
    except pymysql.Error:
        return None
    finally:
        conn.close()


def run_replay(a: argparse.Namespace) -> Result | None:
    """None when the WAL or the replayer is not there (the CLI exits 2)."""
    if not replayer_available():
        return None
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load = [round(x, 2) for x in procfs.load_average()]
    work = tempfile.mkdtemp(prefix="ferry-bench-replay-")
    try:
        wal_dir = os.path.join(work, "wal")
        db = a.db or f"sqlite:///{os.path.join(work, 'ferry.db')}"
        kind = "sqlite" if db.startswith("sqlite:") else "mysql"
        # A node id of its own: a database that already saw a run has that node's
        # checkpoint past every LSN and would replay nothing.
        node = f"bench-{os.getpid()}-{int(time.time())}"
        write_s = asyncio.run(write_wal(wal_dir, a.records, a.payload, node))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable, "-c", REPLAY, "--quiet", "--wal-dir", wal_dir, "--db", db]
        raw = str(Path(f"{a.profile}-replay-{kind}.folded").resolve()) if a.profile else None
        spy = py_spy() if raw else None
        if raw and spy:
            Path(raw).parent.mkdir(parents=True, exist_ok=True)
            cmd = [spy, "record", "--format", "raw", "--threads", "--nonblocking", "--rate",
                   "200", "--output", raw, "--", *cmd]  # fmt: skip
        t0 = time.monotonic()
        cpu0 = _children_cpu()
        proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, timeout=3600)
        elapsed = time.monotonic() - t0
        cpu = _children_cpu() - cpu0
        # The tool's own figure (without process start-up): "replayed N records in Xs".
        said = re.search(rb"replayed (\d+) records in ([\d.]+)s", proc.stdout)
        own_rate = int(said[1]) / float(said[2]) if said and float(said[2]) > 0 else None
        notes = [f"WAL written in {write_s:.2f}s (FERRY_WAL_SYNC=write); drain timed end to end"]
        if proc.returncode != 0:
            notes.append(
                f"the replayer exited {proc.returncode}: "
                + proc.stderr.decode(errors="replace")[-500:]
            )
        if db.startswith("sqlite:"):
            rows = _sqlite_rows(db, node)
        else:
            rows = _mysql_rows(db, node, delete=True)
        if rows is not None and rows != a.records:
            notes.append(f"database holds {rows} rows, expected {a.records}")
        goal = 200_000 if kind == "sqlite" else 100_000
        throughput = a.records / elapsed if proc.returncode == 0 else 0.0
        profile: dict[str, Any] | None = None
        if raw and spy and Path(raw).exists():
            profile = {"raw": raw, "phase": "replay", **top_functions(Path(raw).read_text())}
            notes.append("py-spy sampled the replayer: its figures carry that overhead")
        return Result(
            scenario="replay",
            target="ferry",
            params={"N": a.records, "B": a.payload, "db": kind},
            throughput=round(throughput, 1),
            unit="rows/s",
            counts={"records": a.records, "rows": rows if rows is not None else -1},
            server={
                "replay_s": round(elapsed, 3),
                "exit_code": proc.returncode,
                # under py-spy the replayer is a grandchild: its CPU is not in our rusage
                "cpu_s": None if spy else round(cpu, 3),
                "cpu_us_per_unit": None if spy else round(cpu * 1e6 / a.records, 3),
                "tool_rows_per_s": None if own_rate is None else round(own_rate, 1),
            },
            goals=[
                {
                    "goal": f">= {goal // 1000}k rows/s ({kind})",
                    "value": throughput,
                    "met": throughput >= goal,
                }
            ],
            machine=procfs.machine_info(),
            load_avg=load,
            started_at=started,
            code=procfs.code_version(str(ROOT)),
            notes=notes,
            profile=profile,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
