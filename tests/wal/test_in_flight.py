"""Two batches in flight (wal/writer.py MAX_IN_FLIGHT): the sync thread goes from one
batch's fdatasync straight to the next batch's write without waiting for the loop, it
writes a batch only after the one before it is synced, and when it fails the batch queued
behind the failed one fails with it, each entry exactly once."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import pytest

from common.durability import LogUnavailable
from tests.wal.conftest import UNIT, LogFactory, message
from wal import iter_records


async def test_the_thread_syncs_the_queued_batch_while_the_loop_is_busy(
    logs: LogFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _, handlers = await logs.open(tmp_path)
    real = os.fdatasync
    synced: list[float] = []
    first_syncing = threading.Event()
    both_synced = threading.Event()

    def slow_fdatasync(fd: int) -> None:
        first_syncing.set()
        time.sleep(0.05)  # a slow disk: batch 2 is handed over while batch 1 syncs
        real(fd)
        synced.append(time.monotonic())
        if len(synced) == 2:
            both_synced.set()

    monkeypatch.setattr("wal.writer.os.fdatasync", slow_fdatasync)
    first = message("room.1", 1)
    log.append(first)
    await asyncio.sleep(0)  # batch 1 goes to the thread
    assert await asyncio.to_thread(first_syncing.wait, UNIT)
    second = message("room.1", 2)
    log.append(second)
    await asyncio.sleep(0)  # batch 2 goes too: queued in the thread behind batch 1
    # The loop is now busy (a long fan-out, say): it blocks here and runs no completion
    # until the thread has synced both. With one batch in flight, batch 2 could not be
    # written before the loop handed it over after batch 1's completion, so this wait
    # would run out.
    assert both_synced.wait(UNIT), "both synced while the loop was busy"
    assert len(synced) == 2
    assert handlers.durable_lsn == 0, "nothing is durable before the loop runs the completions"
    await handlers.until_durable(second.lsn)
    assert [[e.lsn for e in batch] for batch in handlers.batches] == [[1], [2]], "in order"
    assert [r.lsn for r in iter_records(str(tmp_path))] == [1, 2]


async def test_a_failed_sync_fails_the_batch_queued_behind_it_too(
    logs: LogFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _, handlers = await logs.open(tmp_path)
    release = threading.Event()

    def failing_fdatasync(fd: int) -> None:
        release.wait(UNIT)  # hold batch 1 in its sync until batch 2 is queued
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("wal.writer.os.fdatasync", failing_fdatasync)
    first, second, third = message("room.1", 1), message("room.1", 2), message("room.2", 1)
    log.append(first)
    await asyncio.sleep(0)
    log.append(second)
    await asyncio.sleep(0)  # batch 2 queued in the thread
    log.append(third)  # pending on the loop: both slots are taken
    release.set()
    await handlers.until(lambda: log.failure is not None)
    await log.close()
    failed = [e.lsn for entries, _ in handlers.failed for e in entries]
    assert sorted(failed) == [1, 2, 3], "each entry failed exactly once"
    assert handlers.durable == [], "nothing acknowledged"
    # batch 1 was written (its sync failed), batch 2 never was
    assert [r.lsn for r in iter_records(str(tmp_path))] == [1]
    assert "fdatasync failed" in (log.failure or "")
    with pytest.raises(LogUnavailable):
        log.append(message("late", 1))
