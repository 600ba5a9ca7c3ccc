"""WalLog as the relay uses it: group commit, ordering, reopen, rotation, retention."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from common.durability import Entry, LogUnavailable
from tests.wal.conftest import (
    Handlers,
    LogFactory,
    OpenOptions,
    SyncCounter,
    fill,
    message,
    segment_paths,
    spans,
)
from wal import ConnectionEvent, LogFollower, RecordTooLarge, WalLocked, WalLog, iter_records
from wal.record import EVENT, MAX_PAYLOAD_BYTES
from wal.segment import load_header, segment_name
from wal.tool import main as wal_tool
from wal.writer import CommitBatch


async def test_group_commit_many_records_per_fdatasync(
    logs: LogFactory, tmp_path: Path, fdatasync: SyncCounter
) -> None:
    log, _, handlers = await logs.open(tmp_path)
    base = fdatasync.calls
    acked: list[int] = []

    async def publisher(n: int) -> None:
        for seq in range(1, 21):
            entry = message(f"room.{n}", seq)
            log.append(entry)
            await handlers.until_durable(entry.lsn)
            acked.append(entry.lsn)

    await asyncio.gather(*(publisher(n) for n in range(50)))
    records = len(acked)
    syncs = fdatasync.calls - base
    assert records == 1000
    assert syncs <= records // 10, f"{syncs} fdatasyncs for {records} records"
    assert len(handlers.batches) == syncs  # one on_durable per synced batch
    # Never on the event loop: every fdatasync ran in the WAL's sync thread (or, for the
    # first segment, the recovery thread).
    assert threading.main_thread().name not in fdatasync.threads


async def test_on_durable_batches_arrive_in_lsn_order(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path)
    entries = await fill(log, handlers, 3000, per_tick=7)
    lsns = [e.lsn for e in handlers.durable]
    assert lsns == list(range(1, 3001))
    assert [e.lsn for e in entries] == lsns
    firsts = [batch[0].lsn for batch in handlers.batches]
    assert firsts == sorted(firsts) and len(handlers.batches) > 1


async def test_lsn_assigned_before_append_returns(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path)
    a, b = message("x", 1), message("x", 2)
    log.append(a)
    log.append(b)
    assert (a.lsn, b.lsn) == (1, 2)
    assert log.head_lsn == 2 and log.durable_lsn == 0  # nothing synced yet
    await handlers.until(lambda: handlers.durable_lsn == 2)
    assert log.durable_lsn == 2


async def test_reopen_rebuilds_heads_history_and_next_lsn(logs: LogFactory, tmp_path: Path) -> None:
    log, state, handlers = await logs.open(tmp_path, history_size=5, segment_bytes=4096)
    assert state.next_lsn == 1 and state.heads == {} and state.history == {}
    heads: dict[str, int] = {}
    await fill(
        log, handlers, 301, channels=("a", "b", "c", "d"), heads=heads, per_tick=9, wait=True
    )
    log.append_event(ConnectionEvent("connect", "bob", "127.0.0.1:5000", ts_ms=1, conn_id="k1"))
    await log.close()

    log, state, handlers = await logs.open(tmp_path, history_size=5, segment_bytes=4096)
    assert state.next_lsn == 303
    assert state.heads == heads == {"a": 76, "b": 75, "c": 75, "d": 75}
    assert {ch: [e.seq for e in es] for ch, es in state.history.items()} == {
        ch: list(range(head - 4, head + 1)) for ch, head in heads.items()
    }
    newest = state.history["a"][-1]
    assert (newest.channel, newest.seq, newest.sender, newest.encoding) == ("a", 76, "alice", 0)
    assert newest.data == b'{"n":76,"ch":"a"}' and newest.client_msg_id == "c-a-76"
    assert newest.lsn == 301
    assert len(segment_paths(tmp_path)) > 3


async def test_history_size_zero_keeps_no_history(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path, history_size=0)
    await fill(log, handlers, 20)
    await log.close()
    _, state, _ = await logs.open(tmp_path, history_size=0)
    assert state.history == {} and state.heads["room.1"] == 7


async def test_rotation_names_segments_by_first_lsn(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path, segment_bytes=4096)
    await fill(log, handlers, 500, per_tick=10, wait=True)
    await log.close()
    segments = segment_paths(tmp_path)
    assert len(segments) > 5
    for path in segments:
        header = load_header(str(path))
        assert path.name == segment_name(header.first_lsn)
        assert path.stat().st_size <= 4096  # batches are far below a segment here
    assert not list(tmp_path.glob("*.tmp"))
    assert [r.lsn for r in iter_records(str(tmp_path))] == list(range(1, 501))


async def test_rotation_with_batches_queued_keeps_every_head(
    logs: LogFactory, tmp_path: Path
) -> None:
    """Rotations while several full batches wait: new headers are the same 96 bytes (no
    heads snapshot), and every channel's head survives, in heads.db or the records."""
    kw: OpenOptions = {"segment_bytes": 4096, "max_batch_bytes": 1024}
    log, _, handlers = await logs.open(tmp_path, **kw)
    heads: dict[str, int] = {}
    channels = ("a", "b", "c", "d", "e")
    for _ in range(5):  # bursts: many sealed batches queue behind the one in flight
        await fill(log, handlers, 300, channels=channels, heads=heads, per_tick=300)
    assert {ch: log.head_of(ch) for ch in channels} == heads
    await log.close()
    assert len(segment_paths(tmp_path)) > 10
    assert wal_tool(["verify", str(tmp_path)]) == 0
    for path in segment_paths(tmp_path):
        header = load_header(str(path))
        assert (header.size, header.version, header.heads) == (96, 2, {})
    log, state, _ = await logs.open(tmp_path, **kw)
    assert state.heads == heads
    assert {ch: log.head_of(ch) for ch in channels} == heads


async def test_write_mode_skips_the_per_batch_fdatasync(
    logs: LogFactory, tmp_path: Path, fdatasync: SyncCounter
) -> None:
    log, _, handlers = await logs.open(tmp_path, sync="write", segment_bytes=4096)
    base = fdatasync.calls
    await fill(log, handlers, 300, per_tick=10, wait=True)
    batches = len(handlers.batches)
    rotations = len(segment_paths(tmp_path)) - 1
    await log.close()
    # Only sealed segments (old one + new header at each rotation) and the close sync.
    assert fdatasync.calls - base == 2 * rotations + 1 < batches
    assert [r.lsn for r in iter_records(str(tmp_path))] == list(range(1, 301))


@pytest.mark.parametrize("preallocate", ["off", "fallocate"])
async def test_retention_deletes_segments_behind_the_checkpoint(
    logs: LogFactory, tmp_path: Path, preallocate: str
) -> None:
    log, _, handlers = await logs.open(
        tmp_path, history_size=0, segment_bytes=4096, preallocate=preallocate
    )
    await fill(log, handlers, 400, per_tick=10, wait=True)
    before = segment_paths(tmp_path)
    firsts = [load_header(str(p)).first_lsn for p in before]
    log.set_checkpoint(firsts[3] - 1)  # the first three segments are fully replayed
    await log.wait_deletions()
    assert segment_paths(tmp_path) == before[3:]
    assert log.stats()["segments"] == len(before) - 3
    # what is left is counted by its data, preallocated or not
    assert log.stats()["bytes"] == sum(spans(p)[-1].end for p in before[3:])
    log.set_checkpoint(10**9)  # everything replayed: all but the active segment go
    await log.wait_deletions()
    assert segment_paths(tmp_path) == before[-1:]
    await log.close()
    _, state, _ = await logs.open(tmp_path, history_size=0, segment_bytes=4096)
    assert state.next_lsn == 401


async def test_retention_keeps_what_history_needs(logs: LogFactory, tmp_path: Path) -> None:
    kw: OpenOptions = {"history_size": 3, "segment_bytes": 4096}
    log, _, handlers = await logs.open(tmp_path, **kw)
    heads: dict[str, int] = {}
    entries = await fill(
        log, handlers, 400, channels=("busy",), heads=heads, per_tick=10, wait=True
    )
    segments = segment_paths(tmp_path)
    log.set_checkpoint(10**9)
    await log.flush_heads()
    assert len(segment_paths(tmp_path)) == len(segments)  # the floor (LSN 1 so far) holds all
    log.set_history_floor(entries[-3].lsn)  # what the router's ring of 3 holds
    await log.wait_deletions()
    assert segment_paths(tmp_path) in (segments[-1:], segments[-2:])  # holding 398..400
    await log.close()
    _, state, _ = await logs.open(tmp_path, **kw)
    assert [e.seq for e in state.history["busy"]] == [398, 399, 400]


async def test_a_quiet_channels_history_holds_segments(logs: LogFactory, tmp_path: Path) -> None:
    """Deletion is oldest-first (the log stays gap-free), so the segment with a quiet
    channel's last messages keeps every later one too -- up to history_max_bytes."""
    kw: OpenOptions = {"history_size": 3, "segment_bytes": 4096}
    log, _, handlers = await logs.open(tmp_path, **kw)
    heads: dict[str, int] = {}
    quiet = await fill(log, handlers, 6, channels=("quiet",), heads=heads)  # then silence
    await fill(log, handlers, 400, channels=("busy",), heads=heads, per_tick=10, wait=True)
    await log.flush_heads()
    count = log.stats()["segments"]
    log.set_history_floor(quiet[-3].lsn)  # the oldest entry of the router's rings
    log.set_checkpoint(10**9)
    assert log.stats()["segments"] == count  # decided at once: nothing may go
    await log.close()
    _, state, _ = await logs.open(tmp_path, **kw)
    assert [e.seq for e in state.history["quiet"]] == [4, 5, 6]
    assert [e.seq for e in state.history["busy"]] == [398, 399, 400]


async def test_deleted_segments_keep_channel_seqs(logs: LogFactory, tmp_path: Path) -> None:
    """heads.db keeps a silent channel's seq once retention deleted all its records."""
    kw: OpenOptions = {"history_size": 3, "segment_bytes": 4096, "history_max_bytes": 1}
    log, _, handlers = await logs.open(tmp_path, **kw)
    heads: dict[str, int] = {}
    await fill(log, handlers, 6, channels=("quiet",), heads=heads)
    await fill(log, handlers, 400, channels=("busy",), heads=heads, per_tick=10, wait=True)
    log.set_checkpoint(10**9)  # history_max_bytes=1: history keeps nothing
    await log.flush_heads()  # retention also waits for heads.db's as_of
    await log.wait_deletions()
    assert len(segment_paths(tmp_path)) == 1
    assert log.head_of("quiet") == 6 and log.head_of("busy") == 400
    await log.close()
    log, state, _ = await logs.open(tmp_path, **kw)
    assert state.heads == {"busy": 400}  # only channels the log still holds records of
    assert "quiet" not in state.history  # documented: history is bounded by retention
    assert log.head_of("quiet") == 6  # but the seq goes on


async def test_append_event_is_logged_without_callback(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path)
    seen: list[CommitBatch] = []
    log.add_durable_listener(seen.append)
    event = ConnectionEvent("disconnect", "bob", "10.1.2.3:999", 1001, 5000, 42, "conn-9")
    lsn = log.append_event(event)
    entry = message("room.1", 1)
    log.append(entry)
    await handlers.until(lambda: handlers.durable_lsn == 2)
    assert (lsn, entry.lsn) == (1, 2)
    assert [[e.lsn for e in batch] for batch in handlers.batches] == [[2]]
    await log.close()
    records = list(iter_records(str(tmp_path)))
    assert records[0].type == EVENT and records[0].body == event
    assert sum(batch.records for batch in seen) == 2
    assert bytes(seen[0].buf).startswith(bytes(seen[0].buf[:8]))  # the framed bytes are kept


async def test_durable_listener_gets_the_framed_bytes(logs: LogFactory, tmp_path: Path) -> None:
    from wal.record import decode_message, decode_record

    log, _, handlers = await logs.open(tmp_path)
    seen: list[CommitBatch] = []
    log.add_durable_listener(seen.append)
    await fill(log, handlers, 100)
    decoded = []
    for batch in seen:
        view, offset = memoryview(bytes(batch.buf)), 0
        while offset < len(view):
            frame = decode_record(view, offset)
            decoded.append((frame.lsn, decode_message(frame.payload).seq))
            offset = frame.end
    assert [lsn for lsn, _ in decoded] == list(range(1, 101))


async def test_batch_delay_and_byte_cap(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path, max_batch_delay_ms=5.0, max_batch_bytes=2048)
    entries = [message("c", seq, b"x" * 100) for seq in range(1, 101)]
    for entry in entries:
        log.append(entry)
    await handlers.until(lambda: handlers.durable_lsn == 100)
    assert [e.lsn for e in handlers.durable] == list(range(1, 101))
    # No batch is larger than the cap plus one record (~136 bytes framed).
    for batch in handlers.batches:
        assert len(batch) <= 2048 // 136 + 1


async def test_follower_reads_beside_the_writer(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path, segment_bytes=4096)
    got: list[int] = []
    follower = LogFollower(str(tmp_path), 1)
    writer = asyncio.create_task(fill(log, handlers, 600, per_tick=13))
    while not writer.done() or len(got) < 600:
        got.extend(r.lsn for r in follower.records(to_lsn=log.durable_lsn, limit=50))
        assert all(lsn <= log.durable_lsn for lsn in got)
        await asyncio.sleep(0)
        if writer.done() and log.durable_lsn == 600 and len(got) == 600:
            break
    await writer
    follower.close()
    assert got == list(range(1, 601))


async def test_closed_and_unopened_logs_refuse_appends(logs: LogFactory, tmp_path: Path) -> None:
    unopened = WalLog(tmp_path / "x", node_id="n")
    with pytest.raises(LogUnavailable, match="not open"):
        unopened.append(message("c", 1))
    log, _, handlers = await logs.open(tmp_path)
    log.append(message("c", 1))
    await log.close()  # finishes what was appended
    assert handlers.durable_lsn == 1
    await log.close()  # idempotent
    assert not log.writable and log.failure == "closed"
    with pytest.raises(LogUnavailable):
        log.append(message("c", 2))
    with pytest.raises(LogUnavailable):
        log.append_event(ConnectionEvent("connect", "u", "r"))


async def test_close_waits_for_pending_records(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path, max_batch_delay_ms=50.0)
    for seq in range(1, 501):
        log.append(message("c", seq))
    await log.close()
    assert handlers.durable_lsn == 500
    assert len(list(iter_records(str(tmp_path)))) == 500


async def test_one_writer_per_directory(logs: LogFactory, tmp_path: Path) -> None:
    await logs.open(tmp_path)
    with pytest.raises(WalLocked):
        await logs.open(tmp_path)
    assert wal_tool(["repair", str(tmp_path)]) == 1  # repair refuses too


async def test_too_large_record_takes_no_lsn(logs: LogFactory, tmp_path: Path) -> None:
    log, _, _ = await logs.open(tmp_path)
    with pytest.raises(RecordTooLarge):
        log.append(message("c", 1, b"\0" * MAX_PAYLOAD_BYTES))
    ok = message("c", 1)
    log.append(ok)
    assert ok.lsn == 1 and log.writable


async def test_stats_and_metrics(logs: LogFactory, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log, _, handlers = await logs.open(tmp_path, registry=registry, segment_bytes=4096)
    await fill(log, handlers, 200, per_tick=20, wait=True)
    stats = log.stats()
    for key in (
        "head_lsn",
        "durable_lsn",
        "bytes",
        "segments",
        "fsync_p50_ms",
        "fsync_p99_ms",
        "records_per_fsync",
        "appends",
        "last_fsync_error",
        "writable",
    ):
        assert isinstance(stats[key], float), key
    assert stats["head_lsn"] == stats["durable_lsn"] == stats["appends"] == 200
    assert stats["segments"] == len(segment_paths(tmp_path))
    assert stats["bytes"] == sum(p.stat().st_size for p in segment_paths(tmp_path))
    assert stats["records_per_fsync"] > 1 and stats["fsync_p99_ms"] >= stats["fsync_p50_ms"] > 0
    assert registry.get_sample_value("ferry_wal_appends_total") == 200
    assert registry.get_sample_value("ferry_wal_writable") == 1
    assert registry.get_sample_value("ferry_wal_batch_records_count") == stats["batches"]
    assert REGISTRY.get_sample_value("ferry_wal_appends_total") is None  # not global
    assert WalLog(tmp_path / "y", node_id="n").registry is not log.registry


def test_handlers_type() -> None:
    assert Handlers().durable == [] and isinstance(message("c", 1), Entry)
