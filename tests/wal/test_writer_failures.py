"""Any exception in the writer path is a writer failure, not only a write or fdatasync
error: the batch and everything pending fail (each entry exactly once), later appends
raise, the log is not writable and its metrics say so."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from common.durability import Entry, LogUnavailable
from common.errors import RecordRefused
from tests.wal.conftest import UNIT, Handlers, LogFactory, OpenOptions, message
from wal import RecordTooLarge, WalLog, iter_records
from wal import writer as writer_module
from wal.heads import HeadsStore
from wal.record import MAX_PAYLOAD_BYTES
from wal.writer import GroupCommitWriter, _SyncThread


class Boom(RuntimeError):
    pass


def _raise(*args: Any, **kw: Any) -> Any:
    raise Boom("injected")


def _after(calls: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """`real` for the first `calls` calls, then raise."""
    count = [0]

    def wrapper(*args: Any, **kw: Any) -> Any:
        count[0] += 1
        if count[0] > calls:
            raise Boom("injected")
        return real(*args, **kw)

    return wrapper


# name -> (patch(monkeypatch), words the failure reason must contain)
INJECTIONS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str]] = {
    "rotation header encoding": (
        lambda mp: mp.setattr(writer_module, "encode_header", _raise),
        "batch preparation failed",
    ),
    "segment creation (thread)": (
        lambda mp: mp.setattr(writer_module, "create_segment", _raise),
        "segment creation failed",
    ),
    "seal": (  # in append, or in _flush: whichever seals the 4th batch
        lambda mp: mp.setattr(GroupCommitWriter, "_seal", _after(3, GroupCommitWriter._seal)),
        "failed on",
    ),
    "flush (submit)": (
        lambda mp: mp.setattr(_SyncThread, "submit", _after(4, _SyncThread.submit)),
        "batch preparation failed",
    ),
    "completion bookkeeping": (
        lambda mp: mp.setattr(WalLog, "_rotated", _raise),
        "batch completion failed",
    ),
    "heads store flush": (
        lambda mp: mp.setattr(HeadsStore, "write", _raise),
        "heads store flush failed",
    ),
}


async def _drive(log: WalLog, handlers: Handlers) -> list[Entry]:
    """Append (batches of several records, rotations on the way) until the log fails."""
    appended: list[Entry] = []
    seq = 0
    async with asyncio.timeout(UNIT):
        while not handlers.failed:
            for _ in range(5):
                seq += 1
                entry = message(f"c{seq % 3}", seq, b'"%s"' % (b"x" * 300))
                try:
                    log.append(entry)
                except LogUnavailable:
                    break
                appended.append(entry)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
    return appended


@pytest.mark.parametrize("where", list(INJECTIONS))
async def test_an_exception_anywhere_in_the_writer_path_fails_the_writer(
    logs: LogFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    registry = CollectorRegistry()
    kw: OpenOptions = {"segment_bytes": 4096, "max_batch_bytes": 1024}
    metered: OpenOptions = {**kw, "registry": registry}  # the restart below goes without
    log, _, handlers = await logs.open(tmp_path, **metered)
    INJECTIONS[where][0](monkeypatch)
    appended = await _drive(log, handlers)
    await handlers.until(lambda: log.failure is not None)
    await log.close()  # every appended entry is reported by now

    durable = [e.lsn for e in handlers.durable]
    failed = [e.lsn for entries, _ in handlers.failed for e in entries]
    assert sorted(durable + failed) == [e.lsn for e in appended]  # each exactly once
    assert failed and not set(durable) & set(failed)
    reason = handlers.failed[0][1]
    assert INJECTIONS[where][1] in reason and log.failure == reason
    assert not log.writable
    with pytest.raises(LogUnavailable, match="unwritable"):
        log.append(message("late", 1))
    assert registry.get_sample_value("ferry_wal_writable") == 0
    assert registry.get_sample_value("ferry_wal_write_errors_total") == 1
    assert log.stats()["writable"] == 0

    # A restart recovers every durable record (and maybe some failed ones: not acked,
    # not certainly absent).
    monkeypatch.undo()
    log, _, _ = await logs.open(tmp_path, **kw)
    lsns = [r.lsn for r in iter_records(str(tmp_path))]
    assert set(durable) <= set(lsns)
    for entry in handlers.durable:
        assert log.head_of(entry.channel) >= entry.seq


async def test_a_failure_inside_append_is_reported_after_it_returns(
    logs: LogFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _, handlers = await logs.open(tmp_path, max_batch_bytes=256)
    monkeypatch.setattr(GroupCommitWriter, "_seal", _raise)
    entry = message("c", 1, b'"%s"' % (b"x" * 300))
    log.append(entry)  # takes the entry (it has an LSN), then the seal fails
    assert entry.lsn == 1 and handlers.failed == [] and not log.writable
    await handlers.until(lambda: bool(handlers.failed))
    assert handlers.failed[0][0] == [entry]


async def test_record_too_large_still_raises_before_touching_anything(
    logs: LogFactory, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    log, _, handlers = await logs.open(tmp_path, registry=registry)
    with pytest.raises(RecordTooLarge) as info:
        log.append(message("c", 1, b"\0" * MAX_PAYLOAD_BYTES))
    assert isinstance(info.value, RecordRefused)  # what the router catches
    assert log.writable and log.head_lsn == 0
    assert registry.get_sample_value("ferry_wal_write_errors_total") == 0
    ok = message("c", 1)
    log.append(ok)
    await handlers.until_durable(ok.lsn)
    assert ok.lsn == 1


async def test_a_heads_flush_failure_keeps_answering_head_of(
    logs: LogFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _, handlers = await logs.open(tmp_path, heads_flush_channels=5)
    monkeypatch.setattr(HeadsStore, "write", _raise)
    for i in range(5):
        log.append(message(f"c{i}", 1))
    await handlers.until_durable(5)
    await log.flush_heads()  # waits for the flush in flight (the one that fails)
    assert "heads store flush failed" in (log.failure or "")
    assert all(log.head_of(f"c{i}") == 1 for i in range(5))  # from the failed flush's dict
