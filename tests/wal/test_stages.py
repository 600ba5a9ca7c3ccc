"""The publish path timed stage by stage (common.latency.PUBLISH_STAGES): each WAL batch
is timed once per stage, and a slow stage shows up where it is, not in its neighbours."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from common.latency import PUBLISH_STAGES, LatencyHistogram
from tests.wal.conftest import LogFactory, fill, message

WAL_STAGES = ("queue", "handoff", "write", "fsync", "wake", "deliver")


def _quantile(hist: LatencyHistogram, q: float) -> float:
    value = hist.quantile(q)
    assert value is not None, "no samples"
    return value


async def test_every_batch_is_timed_once_per_stage(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path)
    await fill(log, handlers, 300, per_tick=10, wait=True)
    batches = len(handlers.batches)
    hists = log.stages.hists
    assert list(hists) == list(PUBLISH_STAGES)
    for stage in WAL_STAGES:
        assert hists[stage].count == batches, stage
        assert hists[stage].total >= 0.0, stage
    assert hists["flush"].count == 0  # the relay's stage: a bare log has no outboxes
    # the fsync stage is the histogram behind the WAL's own fsync p50/p99
    assert log.fsync_latency is hists["fsync"]
    assert log.stats()["fsync_p50_ms"] > 0


async def test_write_mode_has_no_fsync_stage(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path, sync="write")
    await fill(log, handlers, 100, per_tick=10, wait=True)
    hists = log.stages.hists
    assert hists["fsync"].count == 0
    assert hists["write"].count == len(handlers.batches) > 0


async def test_a_slow_disk_shows_in_fsync_and_the_waiting_batch_in_queue(
    logs: LogFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every fdatasync taking 50 ms, batch 2 (appended while batch 1 syncs) waits in
    `queue`; the hand-offs between loop and thread stay well below the disk's time."""
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        real(fd)
        time.sleep(0.05)  # a slow disk, injected: the sync thread blocks as in the syscall

    log, _, handlers = await logs.open(tmp_path)
    monkeypatch.setattr("wal.writer.os.fdatasync", slow_fdatasync)
    first = message("room.1", 1)
    log.append(first)
    await asyncio.sleep(0)  # one loop iteration: the writer hands batch 1 to the thread
    second = message("room.1", 2)
    log.append(second)  # batch 2 opens while batch 1 syncs
    await handlers.until_durable(second.lsn)
    hists = log.stages.hists
    assert hists["fsync"].count == 2
    assert _quantile(hists["fsync"], 0.01) >= 0.05 * 0.9  # every fsync took the disk's time
    assert _quantile(hists["queue"], 0.99) >= 0.03  # batch 2 waited behind batch 1
    for stage in ("handoff", "wake"):
        assert _quantile(hists[stage], 0.5) < 0.05, stage  # not blamed on the hand-offs
