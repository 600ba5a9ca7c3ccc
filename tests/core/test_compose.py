"""The composition root (core.compose) and the server's start-up order and rollback."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from common.durability import HistoryLimits
from common.stats_doc import Stats
from core import compose
from core.config import load
from core.keepalive import Keepalive
from core.memory_log import MemoryLog
from core.stats import StatsPublisher
from tests.helpers import relay_config, wait_for
from wal.log import WalLog
from wal.replay.service import ReplayService


def _sync_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "ferry-wal-sync")


def test_the_wal_is_built_from_the_config(tmp_path: Path) -> None:
    config = load(
        environ={
            "FERRY_WAL_DIR": str(tmp_path / "w"),
            "FERRY_NODE_ID": "edge-7",
            "FERRY_WAL_SYNC": "write",
            "FERRY_WAL_SEGMENT_BYTES": "65536",
            "FERRY_WAL_MAX_BATCH_DELAY_MS": "2",
        }
    )
    log = compose.wal_log(config)
    assert (log.wal_dir, log.node_id, log.sync) == (str(tmp_path / "w"), "edge-7", "write")
    assert (log.segment_bytes, log.max_batch_delay_ms) == (65536, 2.0)
    with pytest.raises(ValueError):
        WalLog(tmp_path, node_id="x" * 65)


def test_build_wires_the_replayer_only_next_to_a_wal(tmp_path: Path) -> None:
    memory = compose.build(relay_config(tmp_path, replayer=True))
    assert isinstance(memory.log, MemoryLog) and memory.extensions == []
    durable = compose.build(relay_config(tmp_path, durability="wal", replayer=True))
    # connection events, the replayer, and deep history from the database it fills
    assert isinstance(durable.log, WalLog) and len(durable.extensions) == 3
    no_replayer = compose.build(relay_config(tmp_path, durability="wal", replayer=False))
    assert len(no_replayer.extensions) == 1  # events only: no database to read history from


async def test_a_failed_start_leaves_no_lock_and_no_sync_thread(tmp_path: Path) -> None:
    first = compose.build(relay_config(tmp_path / "a", durability="wal"))
    await first.start()
    try:
        threads = _sync_threads()
        # Same port: the listener step fails after the WAL was opened and locked.
        second = compose.build(relay_config(tmp_path / "b", durability="wal", port=first.port))
        with pytest.raises(OSError):
            await second.start()
        assert _sync_threads() == threads
        again = WalLog(tmp_path / "b" / "wal", node_id="test-node")  # the lock is free
        await again.open(HistoryLimits())
        await again.close()
    finally:
        await first.shutdown()


async def test_a_failing_stats_round_does_not_end_sys_stats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = StatsPublisher.snapshot
    calls = {"n": 0}

    def flaky(self: StatsPublisher) -> Stats:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("one bad snapshot")
        return real(self)

    monkeypatch.setattr(StatsPublisher, "snapshot", flaky)
    server = compose.build(replace(relay_config(tmp_path), stats_interval=0.01))
    await server.start()
    try:
        stats = server.stats
        assert stats is not None
        await wait_for(lambda: stats.stats()["rounds"] >= 3, what="rounds after the failure")
        assert stats.stats()["failures"] == 1 and stats.stats()["running"]
    finally:
        await server.shutdown()  # must not raise


async def test_a_failing_keepalive_sweep_is_counted_and_the_next_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keepalive sweep runs in a Loop like every other service: before, it was a
    self-rescheduling timer, and one exception in a sweep ended keepalive for good."""
    real = Keepalive.sweep
    calls = {"n": 0}

    def flaky(self: Keepalive) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("one bad sweep")
        real(self)

    monkeypatch.setattr(Keepalive, "sweep", flaky)
    server = compose.build(relay_config(tmp_path, idle_timeout=0.05, ping_timeout=0.05))
    await server.start()
    try:
        keepalive = server.keepalive
        assert keepalive is not None
        await wait_for(lambda: keepalive.stats()["rounds"] >= 3, what="sweeps after the failure")
        health = server._extra_stats()["services"]["keepalive"]
        assert health["failures"] == 1 and health["running"] is True
        assert health["last_error"] == "RuntimeError: one bad sweep"
    finally:
        await server.shutdown()
    assert not keepalive.stats()["running"]


async def test_the_replayer_reports_and_the_relay_decides(tmp_path: Path) -> None:
    server = compose.build(relay_config(tmp_path, durability="wal", replayer=True))
    await server.start()
    try:
        (replayer,) = [s for s in server.services if isinstance(s, ReplayService)]
        assert server.relay.db_status == replayer.database_view
        await wait_for(lambda: replayer.database_view().state == "up", what="the replayer to be up")
        extra = server._extra_stats()
        assert extra["db"].state == "up"
        assert extra["services"]["replayer"]["running"] is True
        assert extra["services"]["stats"]["failures"] == 0
    finally:
        await server.shutdown()
