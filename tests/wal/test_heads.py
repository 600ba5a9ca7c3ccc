"""The heads store (heads.db): headers that do not grow, `head_of` continuity across
retention and restarts, migration from version 1 headers, the heads store against a cut
or a lost log, and what it costs."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from common.durability import HistoryLimits
from tests.wal.conftest import LogFactory, OpenOptions, fill, message, segment_paths, spans
from tests.wal.legacy import write_v1_log
from wal import CorruptLog, iter_records
from wal.heads import HEADS_NAME, HeadsReader, HeadsStore, StoredHead, read_summary
from wal.record import framed_size
from wal.segment import load_header
from wal.tool import EXIT_CORRUPT, EXIT_OK
from wal.tool import main as wal_tool

Capture = pytest.CaptureFixture[str]


def _name(i: int, width: int = 200) -> str:
    return f"ch.{i}.".ljust(width, "x")


async def test_headers_stay_96_bytes_while_channels_grow(logs: LogFactory, tmp_path: Path) -> None:
    """200k distinct 200-character channels over many rotations: every header is the same
    96 bytes, and the bytes written are the records' and the headers', nothing more."""
    registry = CollectorRegistry()
    log, _, handlers = await logs.open(
        tmp_path, history_size=0, segment_bytes=4 * 1024 * 1024, sync="write", registry=registry
    )
    count = 200_000
    for i in range(count):
        log.append(message(_name(i), 1, b"1", client_msg_id=None))
        if i % 5000 == 4999:
            await asyncio.sleep(0)
    await handlers.until_durable(count, timeout=60)
    await log.close()
    segments = segment_paths(tmp_path)
    assert len(segments) >= 10
    for path in segments:
        header = load_header(str(path))
        assert header.size == 96 <= 128 and header.version == 2
    first = next(iter_records(str(tmp_path)))
    record_bytes = framed_size(len(first.payload))
    written = registry.get_sample_value("ferry_wal_written_bytes_total")
    assert written == count * record_bytes  # every record the same size here
    on_disk = sum(p.stat().st_size for p in segments)
    assert on_disk == written + 96 * len(segments)
    summary = read_summary(str(tmp_path))
    assert summary is not None and (summary.as_of, summary.channels) == (count, count)
    log, state, _ = await logs.open(tmp_path, history_size=0, sync="write")
    held = HistoryLimits().max_channels
    assert set(state.heads) == {_name(i) for i in range(count - held, count)}  # the newest
    assert log.head_of(_name(0)) == log.head_of(_name(count - 1)) == 1
    assert log.head_of(_name(count)) == 0


async def test_head_of_continues_after_retention_with_and_without_restart(
    logs: LogFactory, tmp_path: Path
) -> None:
    kw: OpenOptions = {"history_size": 0, "segment_bytes": 4096}
    log, state, handlers = await logs.open(tmp_path, **kw)
    assert log.head_of("lonely") == 0
    heads: dict[str, int] = {}
    await fill(log, handlers, 5, channels=("lonely",), heads=heads)
    await fill(log, handlers, 400, channels=("a", "b"), heads=heads, per_tick=10, wait=True)
    log.set_checkpoint(log.durable_lsn)
    await log.flush_heads()
    await log.wait_deletions()
    oldest = segment_paths(tmp_path)[0]
    assert load_header(str(oldest)).first_lsn > 5  # every record of "lonely" is gone
    assert log.stats()["heads_dirty"] == 0  # so head_of reads heads.db
    assert log.head_of("lonely") == 5
    log.append(message("lonely", 6))  # the router continues the seq without a restart
    await handlers.until_durable(log.head_lsn)
    assert log.head_of("lonely") == 6
    await fill(log, handlers, 400, channels=("a", "b"), heads=heads, per_tick=10, wait=True)
    log.set_checkpoint(log.durable_lsn)
    await log.flush_heads()
    await log.wait_deletions()
    await log.close()
    assert log.head_of("lonely") == 0  # closed: nothing answers any more

    log, state, handlers = await logs.open(tmp_path, **kw)
    assert "lonely" not in state.heads
    assert log.head_of("lonely") == 6 and log.head_of("a") == heads["a"]
    log.append(message("lonely", 7))
    await handlers.until_durable(log.head_lsn)
    assert log.head_of("lonely") == 7


async def test_head_of_is_durable_only(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path)
    entry = message("c", 1)
    log.append(entry)
    assert log.head_of("c") == 0  # appended, not yet durable
    await handlers.until_durable(entry.lsn)
    assert log.head_of("c") == 1


async def test_heads_flush_at_the_dirty_threshold(logs: LogFactory, tmp_path: Path) -> None:
    """With no rotation at all, heads.db catches up every `heads_flush_channels` channels."""
    log, _, handlers = await logs.open(tmp_path, heads_flush_channels=100)
    channels = tuple(f"c{i}" for i in range(1000))
    await fill(log, handlers, 1000, channels=channels, per_tick=50, wait=True)
    await log.flush_heads()
    stats = log.stats()
    assert len(segment_paths(tmp_path)) == 1
    assert stats["heads_flushes"] >= 5 and stats["heads_as_of"] == 1000
    assert all(log.head_of(ch) == 1 for ch in channels)


def test_head_of_lookup_cost(tmp_path: Path) -> None:
    """The figure in HeadsReader's docstring: a point lookup from the page cache, 300k rows
    of 200-character names. The bound asserted is loose (shared CI machines)."""
    store = HeadsStore.open(str(tmp_path))
    count = 300_000
    store.write({_name(i): StoredHead(i + 1, i + 1) for i in range(count)}, count)
    reader = HeadsReader(store.path)
    names = [_name(i) for i in range(0, count, 97)]
    misses = [name + "?" for name in names]
    for name in names[:100]:
        reader.get(name)  # warm the cache
    start = time.perf_counter()
    assert all(reader.get(name) > 0 for name in names)
    hit_us = (time.perf_counter() - start) / len(names) * 1e6
    start = time.perf_counter()
    assert not any(reader.get(name) for name in misses)
    miss_us = (time.perf_counter() - start) / len(misses) * 1e6
    print(f"head_of from heads.db: {hit_us:.1f} us per hit, {miss_us:.1f} us per miss")
    assert hit_us < 200 and miss_us < 200
    reader.close()
    store.close()


async def test_a_reader_sees_each_commit(tmp_path: Path) -> None:
    """No lookup keeps a read snapshot open: the next lookup sees the flush's commit."""
    store = HeadsStore.open(str(tmp_path))
    reader = HeadsReader(store.path)
    assert reader.get("x") == 0
    store.write({"x": StoredHead(3, 3)}, 3)
    assert reader.get("x") == 3
    store.write({"x": StoredHead(2, 9)}, 9)  # a seq never goes down
    assert reader.get("x") == 3
    reader.close()
    store.close()


# -- migration from version 1 headers --------------------------------------------------


async def test_migration_from_version_1_headers(
    logs: LogFactory, tmp_path: Path, capsys: Capture
) -> None:
    """A directory written by the previous build: heads only in the (oldest) header, some
    segments already deleted by the old retention, no heads.db."""
    entries = []
    seqs: dict[str, int] = {}
    for i in range(600):  # "early.*" channels only in the first segments, then silence
        ch = f"early.{i % 50}" if i < 200 else f"late.{i % 7}"
        seqs[ch] = seqs.get(ch, 0) + 1
        entries.append(message(ch, seqs[ch]))
    heads = write_v1_log(tmp_path, entries, per_segment=100, deleted=3)
    assert not (tmp_path / HEADS_NAME).exists()
    oldest = load_header(str(segment_paths(tmp_path)[0]))
    assert (oldest.version, oldest.first_lsn, oldest.heads_count) == (1, 301, 57)

    assert wal_tool(["verify", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "version 1 segment" in out and "57 channel heads" in out
    assert wal_tool(["inspect", "--json", str(tmp_path)]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["heads_store"] is None
    assert [s["channels_in_header"] for s in doc["segments"]] == [57, 57, 57]

    log, state, handlers = await logs.open(tmp_path, segment_bytes=4096)
    assert {ch: log.head_of(ch) for ch in heads} == heads  # every channel, even "early.*"
    assert set(state.heads) == {f"late.{i}" for i in range(7)}  # those with records
    summary = read_summary(str(tmp_path))
    assert summary is not None and summary.as_of >= 300 and summary.channels >= 50
    more = dict(heads)
    await fill(log, handlers, 20, channels=("early.3", "late.1", "new"), heads=more)
    await log.close()

    for _ in range(2):  # reopen (version 1 segments still there), then after retention
        log, state, handlers = await logs.open(tmp_path, segment_bytes=4096, history_size=0)
        assert {ch: log.head_of(ch) for ch in more} == more
        await fill(log, handlers, 300, channels=("late.1",), heads=more, per_tick=20, wait=True)
        log.set_checkpoint(log.durable_lsn)
        await log.flush_heads()
        await log.wait_deletions()
        await log.close()
    assert all(load_header(str(p)).version == 2 for p in segment_paths(tmp_path))
    log, state, _ = await logs.open(tmp_path, segment_bytes=4096)
    assert {ch: log.head_of(ch) for ch in more} == more


async def test_migration_of_a_large_old_header(logs: LogFactory, tmp_path: Path) -> None:
    entries = [message(_name(i, 60), 1) for i in range(30_000)]
    heads = write_v1_log(tmp_path, entries, per_segment=10_000, deleted=2)
    log, state, _ = await logs.open(tmp_path, limits=HistoryLimits(size=1, max_channels=100))
    assert len(state.heads) == 100
    assert all(log.head_of(_name(i, 60)) == 1 for i in range(0, 30_000, 7))
    assert log.head_of("nope") == 0
    assert len(heads) == 30_000


# -- the heads store against the log -----------------------------------------------------


async def _rotated_log(logs: LogFactory, path: Path) -> dict[str, int]:
    """A log whose first segments retention deleted; returns every head."""
    log, _, handlers = await logs.open(path, history_size=0, segment_bytes=4096)
    heads: dict[str, int] = {}
    await fill(log, handlers, 10, channels=("gone",), heads=heads)
    await fill(log, handlers, 300, channels=("a", "b"), heads=heads, per_tick=10, wait=True)
    log.set_checkpoint(log.durable_lsn)
    await log.flush_heads()
    await log.wait_deletions()
    await log.close()
    assert load_header(str(segment_paths(path)[0])).first_lsn > 10
    return heads


async def test_a_lost_heads_store_refuses_then_repair_accepts(
    logs: LogFactory, tmp_path: Path, capsys: Capture
) -> None:
    heads = await _rotated_log(logs, tmp_path)
    os.unlink(tmp_path / HEADS_NAME)
    with pytest.raises(CorruptLog, match="heads of channels last written in LSN 1") as info:
        await logs.open(tmp_path, history_size=0)
    assert info.value.path == str(tmp_path / HEADS_NAME)
    assert wal_tool(["verify", str(tmp_path)]) == EXIT_CORRUPT
    assert "DAMAGE" in capsys.readouterr().out
    assert wal_tool(["repair", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "will restart at seq 1" in out
    log, _, _ = await logs.open(tmp_path, history_size=0)
    assert log.head_of("gone") == 0  # accepted: this is what was lost
    assert log.head_of("a") == heads["a"]


async def test_an_unreadable_heads_store_refuses_then_repair_sets_it_aside(
    logs: LogFactory, tmp_path: Path, capsys: Capture
) -> None:
    await _rotated_log(logs, tmp_path)
    (tmp_path / HEADS_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptLog, match="heads store"):
        await logs.open(tmp_path, history_size=0)
    assert wal_tool(["inspect", str(tmp_path)]) == EXIT_OK
    assert "UNREADABLE" in capsys.readouterr().out
    assert wal_tool(["repair", str(tmp_path)]) == EXIT_OK
    assert "moved to" in capsys.readouterr().out
    assert (tmp_path / (HEADS_NAME + ".broken")).exists()
    log, _, _ = await logs.open(tmp_path, history_size=0)
    assert log.head_of("a") > 0


async def test_a_repair_that_cuts_acked_records_leaves_a_gap(
    logs: LogFactory, tmp_path: Path, capsys: Capture
) -> None:
    log, _, handlers = await logs.open(tmp_path, segment_bytes=4096)
    heads: dict[str, int] = {}
    await fill(log, handlers, 300, heads=heads, per_tick=10, wait=True)
    await log.close()
    middle = segment_paths(tmp_path)[1]
    victim = spans(middle)[2]
    with open(middle, "r+b") as f:
        f.seek(victim.offset + 20)
        f.write(b"\xee")
    assert wal_tool(["repair", str(tmp_path)]) == EXIT_OK
    assert "their next seqs leave a gap" in capsys.readouterr().out
    assert wal_tool(["verify", str(tmp_path)]) == EXIT_OK
    assert "continue after a gap" in capsys.readouterr().out
    log, state, handlers = await logs.open(tmp_path, segment_bytes=4096)
    assert state.heads == heads and {ch: log.head_of(ch) for ch in heads} == heads
    assert state.next_lsn == victim.lsn
    assert state.history == {}  # every ring would end below its head: dropped
    await fill(log, handlers, 6, heads=dict(heads))
    await log.close()
    log, state, _ = await logs.open(tmp_path, segment_bytes=4096)
    assert {ch: log.head_of(ch) for ch in heads} == {ch: seq + 2 for ch, seq in heads.items()}
    summary = read_summary(str(tmp_path))
    assert summary is not None and summary.as_of == state.next_lsn - 1  # back at the log's end


def test_heads_store_schema(tmp_path: Path) -> None:
    store = HeadsStore.open(str(tmp_path))
    store.write({"a": StoredHead(1, 1)}, 1)
    store.close()
    conn = sqlite3.connect(tmp_path / HEADS_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT channel, seq, lsn FROM heads").fetchall() == [("a", 1, 1)]
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    epoch = meta.pop("epoch")
    assert meta == {"version": 1, "as_of": 1}
    assert 0 <= epoch < 2**63 and f"{epoch:016x}" == store.epoch  # made once, with the store
    conn.close()
    again = HeadsStore.open(str(tmp_path))
    assert again.epoch == store.epoch
    again.close()
