"""Write and fsync failures: the failed batch goes to on_failed, the log is unwritable for
good, later appends raise, and an fsync is never retried."""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from common.durability import LogUnavailable
from tests.wal.conftest import (
    UNIT,
    LogFactory,
    SyncCounter,
    fill,
    fill_until_failed,
    grow_disk,
    message,
)
from tests.wal.faults import REPO, fdatasync_fault_env
from wal import iter_records


async def test_fdatasync_eio_fails_the_batch_and_everything_after(
    logs: LogFactory, tmp_path: Path, fdatasync: SyncCounter
) -> None:
    registry = CollectorRegistry()
    log, _, handlers = await logs.open(tmp_path, registry=registry)
    first = message("room", 1)
    log.append(first)
    await handlers.until(lambda: handlers.durable_lsn == 1)

    fdatasync.gate = threading.Event()  # hold the next fdatasync until we say so
    fdatasync.fail_with = OSError(errno.EIO, "Input/output error")
    in_flight = message("room", 2)
    log.append(in_flight)
    assert await asyncio.to_thread(fdatasync.entered.wait, UNIT)
    pending = [message("room", 3), message("room", 4)]  # arrive while the sync runs
    for entry in pending:
        log.append(entry)
    fdatasync.gate.set()
    await handlers.until(lambda: len(handlers.failed) == 2)

    (batch, reason), (rest, reason2) = handlers.failed
    assert batch == [in_flight] and rest == pending and reason == reason2
    assert "fdatasync failed" in reason and "Input/output error" in reason
    assert not log.writable and log.failure == reason
    assert handlers.durable_lsn == 1 and log.durable_lsn == 1
    with pytest.raises(LogUnavailable, match="Input/output error"):
        log.append(message("room", 5))
    stats = log.stats()
    assert stats["writable"] == 0 and stats["last_fsync_error"] == errno.EIO
    assert registry.get_sample_value("ferry_wal_writable") == 0
    assert registry.get_sample_value("ferry_wal_last_error_errno") == errno.EIO
    assert registry.get_sample_value("ferry_wal_write_errors_total") == 1
    await log.close()
    assert fdatasync.failures == 1 and fdatasync.calls_after_failure == 0  # never retried

    # A restart (disk fixed) recovers: the acked record is there, the log takes appends.
    # The failed record's write may or may not have reached the disk: failure means "not
    # acknowledged", like a timed-out commit, never "certainly absent".
    fdatasync.fail_with, fdatasync.gate = None, None
    log, _, handlers = await logs.open(tmp_path)
    lsns = [r.lsn for r in iter_records(str(tmp_path))]
    assert lsns[0] == 1 and lsns in ([1], [1, 2])
    await fill(log, handlers, 10)


async def test_segment_creation_failure_is_fatal_too(
    logs: LogFactory, tmp_path: Path, fdatasync: SyncCounter
) -> None:
    log, _, handlers = await logs.open(tmp_path, segment_bytes=4096)
    await fill(log, handlers, 40, per_tick=10, wait=True)
    # Fail only the fdatasync of the next segment's .tmp header (in create_segment).
    real = fdatasync.real
    calls_before = fdatasync.calls

    def fail_on_rotation(fd: int) -> None:
        if any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    fdatasync.real = fail_on_rotation
    seq = 100
    async with asyncio.timeout(UNIT):
        while not handlers.failed:
            seq += 1
            entry = message("rot", seq, b'"%s"' % (b"r" * 500))
            log.append(entry)
            await handlers.until_durable(entry.lsn)
    assert fdatasync.calls > calls_before
    assert "segment creation failed" in handlers.failed[0][1]
    assert not log.writable and handlers.failed
    assert log.failure is not None and "failed on" in log.failure
    assert not list(tmp_path.glob("*.tmp"))  # a failed rotation leaves no half segment


async def test_disk_full_on_a_small_tmpfs(logs: LogFactory, small_disk: Path) -> None:
    wal_dir = small_disk / "wal"
    log, _, handlers = await logs.open(wal_dir)
    seq = await fill_until_failed(log, handlers, "big")
    acked = [e.lsn for e in handlers.durable]
    reason = handlers.failed[0][1]
    assert "No space left on device" in reason
    assert not log.writable
    with pytest.raises(LogUnavailable):
        log.append(message("big", seq + 1))
    await log.close()

    grow_disk(small_disk)  # the operator frees space and restarts
    log, state, handlers = await logs.open(wal_dir)
    recovered = [r.lsn for r in iter_records(str(wal_dir))]
    assert recovered[: len(acked)] == acked  # every acked record survived
    assert state.heads["big"] >= len(acked)
    await fill(log, handlers, 10, channels=("big",), heads=dict(state.heads))


CHILD = """
import asyncio, json, resource, signal, sys
from common.durability import Entry, HistoryLimits, LogUnavailable
from wal import WalLog

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
if sys.argv[2] == "rlimit":
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

async def main():
    log = WalLog(sys.argv[1], node_id="child")
    await log.open(HistoryLimits(size=10))
    out = {"durable": 0, "failed": [], "raised": None}
    done = asyncio.Event()
    def durable(es): out.update(durable=es[-1].lsn)
    def failed(es, reason): out["failed"].append([[e.lsn for e in es], reason]); done.set()
    log.set_handlers(durable, failed)
    seq = 0
    while not done.is_set() and seq < 5000:
        seq += 1
        log.append(Entry("c", seq, 0, "u", None, 0, b'"' + b"x" * 3000 + b'"'))
        await asyncio.sleep(0.001)
    await asyncio.wait_for(done.wait(), 10)
    try:
        log.append(Entry("c", seq + 1, 0, "u", None, 0, b"1"))
    except LogUnavailable as exc:
        out["raised"] = str(exc)
    out["writable"] = log.writable
    await log.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def _run_child(wal_dir: Path, mode: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(wal_dir), mode],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=6 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    doc: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return doc


def test_file_size_limit_in_a_child(tmp_path: Path) -> None:
    """Full disk without mount rights: RLIMIT_FSIZE makes writes fail with EFBIG."""
    out = _run_child(tmp_path / "wal", "rlimit")
    failed = out["failed"]
    assert isinstance(failed, list) and failed
    assert "File too large" in failed[0][1]
    assert out["writable"] is False and "File too large" in str(out["raised"])


def test_fdatasync_fault_injected_into_a_child(tmp_path: Path) -> None:
    """The sitecustomize route later relay tests use to break a `ferry serve` child."""
    env = fdatasync_fault_env(tmp_path / "site", after=5)
    out = _run_child(tmp_path / "wal", "plain", env)
    failed = out["failed"]
    assert isinstance(failed, list) and failed
    assert "fdatasync failed" in failed[0][1] and "Input/output error" in failed[0][1]
    assert out["writable"] is False and out["raised"]
