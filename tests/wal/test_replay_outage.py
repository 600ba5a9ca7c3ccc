"""The database log through outages and crashes: every acked message ends up in the
database exactly once, and the checkpoint reaches the WAL head.

MySQL tests run against a PRIVATE mariadbd (temp datadir, free port) that they pause,
kill and restart; the machine's shared server is never touched."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dbcheck import Rows, check_exactly_once, rows_mysql, rows_sqlite
from tests.helpers import UNIT, Client, ServeProcess, http_get, wait_for
from tests.load import Acked, run_load
from tests.mariadb import PrivateMariaDB, require_mariadb

ADMIN = "admin-token-for-the-replay-outage-tests"
OUTAGE_S = 10.0


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    db = require_mariadb(tmp_path / "mariadb")
    yield db
    db.stop()


def serve_env(tmp_path: Path, db_url: str, **extra: str) -> dict[str, str]:
    return {
        "FERRY_WAL_DIR": str(tmp_path / "wal"),
        "FERRY_DB_URL": db_url,
        "FERRY_ADMIN_TOKEN": ADMIN,
        "FERRY_STATS_INTERVAL": "0.2",
        "FERRY_WAL_SEGMENT_BYTES": str(256 * 1024),
        "FERRY_PUBLISH_RATE": "100000",
        "FERRY_PUBLISH_BURST": "100000",
        **extra,
    }


class StatsWatcher:
    """Subscribes to $sys.stats and remembers every database state it saw."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.last: dict[str, Any] = {}
        self.errors: list[str] = []
        self.max_lag_seconds_down = 0.0
        self._task: asyncio.Task[None] | None = None
        self.client: Client | None = None

    async def start(self, url: str) -> None:
        self.client = await Client.connect(url, token=ADMIN)
        await self.client.sub("$sys.stats")
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self.client is not None
        while True:
            frame = await self.client.recv(UNIT * 4)
            if frame["op"] == "msg":
                self.last = frame["data"]
                db = self.last["db"]
                if not self.states or self.states[-1] != db["state"]:
                    self.states.append(db["state"])
                if db["last_error"]:
                    self.errors.append(db["last_error"])
                if db["state"] == "down":
                    self.max_lag_seconds_down = max(
                        self.max_lag_seconds_down, db["lag_seconds"] or 0.0
                    )

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self.client:
            await self.client.close()


async def _wait_caught_up(watcher: StatsWatcher, timeout: float) -> None:
    def caught_up() -> bool:
        db = watcher.last.get("db", {})
        wal = watcher.last.get("wal", {})
        return bool(
            db.get("state") == "up"
            and db.get("checkpoint_lsn") == wal.get("head_lsn")
            and db.get("lag_records") == 0
        )

    await wait_for(caught_up, timeout, "the replayer to catch up with the WAL head")


async def _outage(tmp_path: Path, mariadb: PrivateMariaDB, kind: str) -> None:
    server = ServeProcess(
        serve_env(tmp_path, mariadb.url + "?statement_timeout=2&connect_timeout=2")
    )
    server.start(tmp_path / "serve.log")
    watcher = StatsWatcher()
    stop = asyncio.Event()
    acked = Acked()
    try:
        server.wait_healthy()
        await watcher.start(server.url)
        tasks = await run_load(server.url, 3, stop, acked, window=8, rate=300)
        await wait_for(lambda: acked.count() > 300, UNIT * 2, "publishing to start")
        await _wait_until_state(watcher, "up")
        if kind == "pause":
            mariadb.pause()
        else:
            mariadb.kill()
        before = acked.count()
        await asyncio.sleep(OUTAGE_S)  # the outage itself: the database is away this long
        during = acked.count() - before
        assert during > 500, (
            f"the relay must keep acking while the database is down (acked {during})"
        )
        assert "down" in watcher.states, watcher.states
        assert watcher.max_lag_seconds_down > 1.0, (
            "replay lag in seconds must grow during the outage"
        )
        if kind == "pause":
            mariadb.resume()
        else:
            mariadb.start()
        await wait_for(
            lambda: acked.count() > before + during + 300, UNIT * 4, "publishing after the outage"
        )
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), UNIT * 4)
        await _wait_caught_up(watcher, UNIT * 8)
        assert watcher.states[-1] == "up" and "down" in watcher.states, watcher.states
        conn = mariadb.connect()
        messages, events, checkpoint = rows_mysql(conn, "test-node")
        conn.close()
        assert checkpoint == watcher.last["wal"]["head_lsn"]
        check_exactly_once(messages, events, checkpoint, acked)
        assert len(messages) == acked.count()
    finally:
        stop.set()
        await watcher.stop()
        server.kill()


async def _wait_until_state(watcher: StatsWatcher, state: str) -> None:
    await wait_for(
        lambda: watcher.last.get("db", {}).get("state") == state, UNIT * 2, f"db state {state}"
    )


async def test_mysql_paused_10s(tmp_path: Path, mariadb: PrivateMariaDB) -> None:
    await _outage(tmp_path, mariadb, "pause")


async def test_mysql_killed_10s(tmp_path: Path, mariadb: PrivateMariaDB) -> None:
    await _outage(tmp_path, mariadb, "kill")


async def _crash_and_recover(
    tmp_path: Path, db_url: str, fault: str, fetch: Callable[[], Rows]
) -> None:
    """SIGKILL ferry (relay + replayer) at `fault`, restart it, check exactly-once."""
    acked = Acked()
    stop = asyncio.Event()
    crashing = ServeProcess(
        serve_env(tmp_path, db_url, FERRYTEST_REPLAY_FAULT=fault, FERRY_PORT="")
    )
    crashing.start(tmp_path / "crash.log")
    crashing.wait_healthy()
    tasks = await run_load(crashing.url, 3, stop, acked, window=8)
    assert await asyncio.to_thread(crashing.wait, UNIT * 6) == -signal.SIGKILL
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), UNIT * 4)
    assert acked.count() > 0
    # restart: recovery, then the replayer resumes from the committed checkpoint
    server = ServeProcess(serve_env(tmp_path, db_url))
    server.start(tmp_path / "serve.log")
    watcher = StatsWatcher()
    try:
        server.wait_healthy()
        await watcher.start(server.url)
        await _wait_caught_up(watcher, UNIT * 8)
        messages, events, checkpoint = fetch()
        assert checkpoint == watcher.last["wal"]["head_lsn"]
        check_exactly_once(messages, events, checkpoint, acked)
    finally:
        await watcher.stop()
        server.kill()


@pytest.mark.parametrize("fault", ["before_commit:3", "after_commit:3"])
async def test_mysql_crash_points(tmp_path: Path, mariadb: PrivateMariaDB, fault: str) -> None:
    def fetch() -> Rows:
        conn = mariadb.connect()
        try:
            return rows_mysql(conn, "test-node")
        finally:
            conn.close()

    await _crash_and_recover(tmp_path, mariadb.url, fault, fetch)


@pytest.mark.parametrize("fault", ["before_commit:3", "after_commit:3"])
async def test_sqlite_crash_points(tmp_path: Path, fault: str) -> None:
    path = tmp_path / "ferry.db"
    await _crash_and_recover(
        tmp_path, f"sqlite:///{path}", fault, lambda: rows_sqlite(str(path), "test-node")
    )


async def test_sqlite_steady_load_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "ferry.db"
    server = ServeProcess(serve_env(tmp_path, f"sqlite:///{path}"))
    server.start(tmp_path / "serve.log")
    watcher = StatsWatcher()
    stop = asyncio.Event()
    acked = Acked()
    try:
        server.wait_healthy()
        await watcher.start(server.url)
        tasks = await run_load(server.url, 4, stop, acked, window=16)
        await wait_for(lambda: acked.count() > 3000, UNIT * 4, "3000 acks")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), UNIT * 4)
        await _wait_caught_up(watcher, UNIT * 4)
        messages, events, checkpoint = rows_sqlite(str(path), "test-node")
        check_exactly_once(messages, events, checkpoint, acked)
        assert len(messages) == acked.count()
        assert len(events) >= 2 * 4  # connect + disconnect of each publisher (+ the watcher)
    finally:
        await watcher.stop()
        server.kill()


async def test_wrong_credentials_then_fixed(tmp_path: Path, mariadb: PrivateMariaDB) -> None:
    conn = mariadb.connect()
    with conn.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'ferry'@'%' IDENTIFIED BY 'right-password'")
        cur.execute("GRANT ALL ON ferry.* TO 'ferry'@'%'")
    conn.close()
    acked = Acked()
    stop = asyncio.Event()
    server = ServeProcess(serve_env(tmp_path, mariadb.url_for("ferry", "wrong-password")))
    server.start(tmp_path / "wrong.log")
    watcher = StatsWatcher()
    try:
        server.wait_healthy()
        await watcher.start(server.url)
        tasks = await run_load(server.url, 2, stop, acked, window=8)
        await wait_for(lambda: acked.count() > 200, UNIT * 2, "acks while the database refuses us")
        await _wait_until_state(watcher, "down")
        assert any("Access denied" in e for e in watcher.errors), watcher.errors
        assert "wrong-password" not in json.dumps(watcher.last)
        _, metrics = await asyncio.to_thread(http_get, server.http + "/metrics")
        assert b"ferry_db_up 0.0" in metrics and b"ferry_replay_lag_records" in metrics
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), UNIT * 4)
    finally:
        await watcher.stop()
        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait) == 0
    fixed = ServeProcess(serve_env(tmp_path, mariadb.url_for("ferry", "right-password")))
    fixed.start(tmp_path / "fixed.log")
    watcher = StatsWatcher()
    try:
        fixed.wait_healthy()
        await watcher.start(fixed.url)
        await _wait_caught_up(watcher, UNIT * 4)
        conn = mariadb.connect()
        messages, events, checkpoint = rows_mysql(conn, "test-node")
        conn.close()
        check_exactly_once(messages, events, checkpoint, acked)
        assert len(messages) == acked.count()
        _, metrics = await asyncio.to_thread(http_get, fixed.http + "/metrics")
        assert b"ferry_db_up 1.0" in metrics and b"ferry_replay_lag_records 0.0" in metrics
    finally:
        await watcher.stop()
        fixed.kill()
