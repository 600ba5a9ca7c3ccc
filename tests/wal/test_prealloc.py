"""Preallocated segments (version 3): the pipeline makes the next file off the ack path,
and recovery finds the end of the log in a file that goes on with zeros.

Clean end = zeros from a record boundary to the end of the file; anything written past
that point is a torn write (cut, when it is within one batch of the end of the data) or
damage (refused); damage before the tail is refused as it always was.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from common.durability import Entry
from tests.wal.conftest import (
    UNIT,
    Handlers,
    LogFactory,
    OpenOptions,
    fill,
    fill_until_failed,
    grow_disk,
    line_then_sigkill,
    message,
    segment_paths,
    spans,
)
from tests.wal.faults import REPO
from wal import CorruptLog, LogFollower, MessagePayload, WalLog, iter_records
from wal.errors import BadSegmentHeader, TornRecord
from wal.pipeline import PREFIX, SegmentPipeline, is_pipeline_file
from wal.reader import scan_segment
from wal.record import SECTOR_BYTES, append_message, decode_record, encode_record
from wal.segment import (
    PREALLOC_VERSION,
    SEGMENT_SUFFIX,
    TMP_SUFFIX,
    VERSION,
    create_segment,
    encode_header,
    load_header,
    prepare_file,
)
from wal.tool import EXIT_OK, EXIT_TORN_TAIL
from wal.tool import main as wal_tool

SEGMENT = 64 * 1024  # small preallocated segments: several per test


def _data(size: int) -> Callable[[str, int], bytes]:
    return lambda ch, seq: b'{"pad":"%s"}' % (b"x" * size)


def _leftovers(wal_dir: Path) -> list[Path]:
    return sorted(wal_dir.glob("*" + TMP_SUFFIX))


def _lsns(wal_dir: Path) -> list[int]:
    return [r.lsn for r in iter_records(str(wal_dir))]


def _bodies(wal_dir: Path) -> list[tuple[int, object]]:
    return [(r.lsn, r.body) for r in iter_records(str(wal_dir))]


async def _written(logs: LogFactory, wal_dir: Path, count: int, size: int = 200) -> None:
    """`count` records in preallocated segments, every rotation with a file ready (one
    that finds none makes a plain version 2 segment: fine, but not what these test)."""
    log, _, handlers = await logs.open(wal_dir, segment_bytes=SEGMENT, preallocate="fallocate")
    assert log.pipeline is not None
    heads: dict[str, int] = {}
    for done in range(0, count, 20):
        assert await asyncio.to_thread(log.pipeline.wait_ready, UNIT)
        await fill(log, handlers, min(20, count - done), heads=heads, data=_data(size), wait=True)
    await log.close()
    assert {load_header(str(p)).version for p in segment_paths(wal_dir)} == {PREALLOC_VERSION}


async def _through_rotations(
    log: WalLog, handlers: Handlers, wal_dir: Path, segments: int
) -> list[Entry]:
    """Fill until there are `segments` segments, a pipeline file ready before each
    rotation (20 records of 400 bytes at a time: at most one rotation between checks)."""
    assert log.pipeline is not None
    heads: dict[str, int] = {}
    entries: list[Entry] = []
    while len(segment_paths(wal_dir)) < segments:
        assert await asyncio.to_thread(log.pipeline.wait_ready, UNIT)
        entries += await fill(log, handlers, 20, heads=heads, data=_data(400), wait=True)
    return entries


# -- the writer side ---------------------------------------------------------------------


async def test_a_new_log_writes_into_preallocated_segments(
    logs: LogFactory, tmp_path: Path
) -> None:
    log, _, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    (first,) = segment_paths(tmp_path)
    assert load_header(str(first)).version == PREALLOC_VERSION
    assert first.stat().st_size == SEGMENT  # reserved up front; the records go inside
    assert log.pipeline is not None
    assert await asyncio.to_thread(log.pipeline.wait_ready, UNIT)  # the next one, made ahead
    (ready,) = _leftovers(tmp_path)
    assert is_pipeline_file(ready.name) and ready.stat().st_size == SEGMENT
    entries = await fill(log, handlers, 30, data=_data(100))
    assert log.stats()["bytes"] == spans(first)[-1].end  # used bytes, not the file size
    assert first.stat().st_size == SEGMENT
    await log.close()
    assert not _leftovers(tmp_path)  # the unused file goes at a clean close
    assert _lsns(tmp_path) == [e.lsn for e in entries]


async def test_rotation_takes_the_ready_file(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    pipeline = log.pipeline
    assert pipeline is not None
    heads: dict[str, int] = {}
    entries: list[Entry] = []
    for _ in range(4):  # four rotations, each with a file ready before it
        assert await asyncio.to_thread(pipeline.wait_ready, UNIT)
        before = len(segment_paths(tmp_path))
        while len(segment_paths(tmp_path)) == before:
            entries += await fill(log, handlers, 20, heads=heads, data=_data(400), wait=True)
    assert pipeline.taken == 4 and pipeline.missed == 0 and pipeline.failures == 0
    assert log.stats()["segments_preallocated"] == 4
    paths = segment_paths(tmp_path)
    assert [load_header(str(p)).version for p in paths] == [PREALLOC_VERSION] * 5
    assert all(p.stat().st_size == SEGMENT for p in paths)
    # the WAL's size is what its records take, not the space reserved
    used = sum(spans(p)[-1].end for p in paths)
    assert log.stats()["bytes"] == used
    assert log.registry.get_sample_value("ferry_wal_size_bytes") == used
    await log.close()
    assert _lsns(tmp_path) == [e.lsn for e in entries]
    assert wal_tool(["verify", str(tmp_path)]) == EXIT_OK


async def test_write_mode_rotates_into_preallocated_files(logs: LogFactory, tmp_path: Path) -> None:
    """wal_sync=write: the header is synced before the rename (a named segment always has
    its header), the batch after it is not; the records read back after a close."""
    log, _, handlers = await logs.open(
        tmp_path, segment_bytes=SEGMENT, preallocate="fallocate", sync="write"
    )
    entries = await _through_rotations(log, handlers, tmp_path, 3)
    await log.close()
    assert {load_header(str(p)).version for p in segment_paths(tmp_path)} == {PREALLOC_VERSION}
    assert _lsns(tmp_path) == [e.lsn for e in entries]
    assert wal_tool(["verify", str(tmp_path)]) == EXIT_OK


async def test_zero_mode_writes_the_zeros(logs: LogFactory, tmp_path: Path) -> None:
    log, _, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="zero")
    entries = await _through_rotations(log, handlers, tmp_path, 3)
    await log.close()
    paths = segment_paths(tmp_path)
    assert len(paths) > 1 and all(p.stat().st_size >= SEGMENT for p in paths)
    # zeros written: the blocks are allocated (not a sparse file)
    assert all(p.stat().st_blocks * 512 >= SEGMENT for p in paths)
    assert _lsns(tmp_path) == [e.lsn for e in entries]


async def test_a_rotation_with_no_file_ready_creates_a_plain_segment(
    logs: LogFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline failing (here every posix_fallocate gets ENOSPC) never stalls or stops
    the log: rotations create version 2 segments inline, as before preallocation."""

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    log, _, handlers = await logs.open(tmp_path, segment_bytes=4096, preallocate="fallocate")
    entries = await fill(log, handlers, 100, data=_data(300), per_tick=10, wait=True)
    assert log.writable and not handlers.failed
    paths = segment_paths(tmp_path)
    assert len(paths) > 3
    assert {load_header(str(p)).version for p in paths} == {VERSION}
    assert log.pipeline is not None and log.pipeline.failures >= 1
    assert log.stats()["preallocation_failures"] >= 1 and log.pipeline.last_error
    assert not await asyncio.to_thread(log.pipeline.wait_ready, UNIT)  # the last attempt
    assert not _leftovers(tmp_path)  # a failed attempt leaves no file behind
    await log.close()
    assert _lsns(tmp_path) == [e.lsn for e in entries]


async def test_disk_full_during_preallocation_on_a_small_tmpfs(
    logs: LogFactory, tmpfs: Callable[[str], Path]
) -> None:
    """A 1 MiB disk and 600 KiB segments: the first is preallocated, the next cannot be.
    The log goes on in the current segment, rotates into a plain one, and when the disk is
    really full it fails with a clear error; every acked record survives a restart."""
    disk = tmpfs("1m")
    wal_dir = disk / "wal"
    kw: OpenOptions = {"segment_bytes": 600 * 1024, "preallocate": "fallocate"}
    log, _, handlers = await logs.open(wal_dir, **kw)
    assert log.pipeline is not None
    assert not await asyncio.to_thread(log.pipeline.wait_ready, UNIT)  # ENOSPC
    assert log.pipeline.failures == 1 and "No space left" in (log.pipeline.last_error or "")
    assert log.writable
    await fill_until_failed(log, handlers, "big", 4 * UNIT)
    acked = [e.lsn for e in handlers.durable]
    paths = segment_paths(wal_dir)
    assert len(paths) >= 2  # it rotated past the preallocated segment before filling up
    assert load_header(str(paths[0])).version == PREALLOC_VERSION
    assert load_header(str(paths[1])).version == VERSION  # created inline, no pipeline file
    # a clear error: the segment's write, or the heads store's flush at a rotation
    reason = handlers.failed[0][1]
    assert "No space left on device" in reason or "database or disk is full" in reason
    assert not log.writable
    await log.close()
    grow_disk(disk, "8m")
    log, state, handlers = await logs.open(wal_dir, **kw)
    assert _lsns(wal_dir)[: len(acked)] == acked
    assert state.heads["big"] >= len(acked)
    await fill(log, handlers, 10, channels=("big",), heads=dict(state.heads))


async def test_the_first_segment_falls_back_when_it_cannot_be_preallocated(
    logs: LogFactory, tmpfs: Callable[[str], Path]
) -> None:
    disk = tmpfs("256k")
    log, _, handlers = await logs.open(
        disk / "wal", segment_bytes=1024 * 1024, preallocate="fallocate"
    )
    (first,) = segment_paths(disk / "wal")
    assert load_header(str(first)).version == VERSION  # plain: the space was not there
    entries = await fill(log, handlers, 20)
    assert log.writable and [e.lsn for e in entries] == list(range(1, 21))


async def test_without_posix_fallocate_the_log_runs_on_plain_segments(
    logs: LogFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where os has no posix_fallocate (macOS): EOPNOTSUPP, handled as a full disk is."""
    monkeypatch.delattr(os, "posix_fallocate")
    with pytest.raises(OSError) as info:
        prepare_file(str(tmp_path / "f"), SEGMENT, "fallocate")
    assert info.value.errno == errno.EOPNOTSUPP and not (tmp_path / "f").exists()
    log, _, handlers = await logs.open(
        tmp_path / "wal", segment_bytes=4096, preallocate="fallocate"
    )
    entries = await fill(log, handlers, 60, data=_data(300), per_tick=10, wait=True)
    assert log.writable and log.pipeline is not None and log.pipeline.failures >= 1
    assert {load_header(str(p)).version for p in segment_paths(tmp_path / "wal")} == {VERSION}
    await log.close()
    assert _lsns(tmp_path / "wal") == [e.lsn for e in entries]


# -- recovery: where the log ends in a preallocated file -----------------------------------


async def test_crash_after_preallocation_with_no_records(logs: LogFactory, tmp_path: Path) -> None:
    """What a crash right after the start leaves: segment 1 (header, then zeros) and the
    pipeline's next file. Nothing to cut; the leftover is removed."""
    os.close(
        create_segment(
            str(tmp_path),
            1,
            encode_header("node-a", 1, PREALLOC_VERSION),
            preallocate="fallocate",
            size=SEGMENT,
        )
    )
    leftover = tmp_path / f"{PREFIX}1{SEGMENT_SUFFIX}{TMP_SUFFIX}"
    os.close(prepare_file(str(leftover), SEGMENT, "fallocate"))
    assert wal_tool(["verify", str(tmp_path)]) == EXIT_OK
    log, state, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    assert state.next_lsn == 1 and not leftover.exists()
    assert not list(tmp_path.glob("*.broken"))
    entries = await fill(log, handlers, 10)
    (first,) = segment_paths(tmp_path)
    assert spans(first)[0].offset == 96  # the first record right after the header
    await log.close()
    assert _lsns(tmp_path) == [e.lsn for e in entries]


async def test_a_clean_zero_tail_is_not_cut(logs: LogFactory, tmp_path: Path) -> None:
    await _written(logs, tmp_path, 300)
    before = {p: p.read_bytes() for p in segment_paths(tmp_path)}
    assert all(len(b) == SEGMENT for b in before.values())
    log, state, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    assert state.next_lsn == 301
    assert not list(tmp_path.glob("*.broken"))
    assert {p: p.read_bytes() for p in segment_paths(tmp_path)} == before  # untouched
    await fill(log, handlers, 30, heads=dict(state.heads))
    await log.close()
    assert _lsns(tmp_path) == list(range(1, 331))


def _end_of_data(path: Path) -> int:
    return spans(path)[-1].end


async def test_a_torn_record_inside_a_preallocated_file_is_cut(
    logs: LogFactory, tmp_path: Path
) -> None:
    """The in-flight batch reached the disk only in part: its first sector, then zeros."""
    await _written(logs, tmp_path, 50)
    last = segment_paths(tmp_path)[-1]
    end = _end_of_data(last)
    torn = bytearray(encode_record(51, 1, bytes(2000)))  # a record of the next LSN
    keep = SECTOR_BYTES - end % SECTOR_BYTES  # up to the next sector boundary only
    with open(last, "r+b") as f:
        f.seek(end)
        f.write(torn[:keep])
    written = end + len(torn[:keep].rstrip(b"\0"))
    data_end = written + (-written % 8)  # to the record alignment
    assert wal_tool(["verify", str(tmp_path)]) == EXIT_TORN_TAIL
    log, state, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    assert state.next_lsn == 51
    assert last.stat().st_size == end  # cut at the end of the last good record
    backup = Path(str(last) + ".broken")
    assert backup.stat().st_size == data_end  # what was written, without the zero tail
    await fill(log, handlers, 30, heads=dict(state.heads))
    await log.close()
    assert _lsns(tmp_path) == list(range(1, 81))
    assert wal_tool(["verify", str(tmp_path)]) == EXIT_OK


def test_a_record_cut_by_the_zero_tail_reads_as_torn() -> None:
    """Less than a sector of the record lies past the boundary, but the whole sector that
    begins there (in the file) is zeros: a write that stopped at the boundary."""
    buf = bytearray()
    append_message(buf, 7, Entry("room", 7, 0, "a", None, 0, b"z" * 700))
    base = 8  # the record starts 8 bytes into a sector, so 504 of its bytes are in it
    raw = bytearray(buf[: SECTOR_BYTES - base]) + bytearray(SECTOR_BYTES * 2)
    with pytest.raises(TornRecord):
        decode_record(memoryview(bytes(raw)), 0, base)


async def test_zeros_then_stale_records_are_cut_and_never_come_back(
    logs: LogFactory, tmp_path: Path
) -> None:
    """The in-flight batch's first sector never reached the disk, later ones did: the log
    ends at the zero header, the stale records after it are cut, and new records written
    over the spot can never be mixed with them after a second crash."""
    await _written(logs, tmp_path, 50)
    last = segment_paths(tmp_path)[-1]
    end = _end_of_data(last)
    stale = b"".join(encode_record(51 + i, 1, _payload("room.1", 900 + i)) for i in range(40))
    with open(last, "r+b") as f:
        f.seek(end)
        f.write(stale)
        unwritten = SECTOR_BYTES - end % SECTOR_BYTES + SECTOR_BYTES
        f.seek(end)
        f.write(bytes(unwritten))  # the first sectors of the batch: never written
    scan = scan_segment(str(last))
    assert isinstance(scan.error, TornRecord) and scan.error.offset == end
    assert "non-zero bytes again" in str(scan.error)
    log, state, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    assert state.next_lsn == 51 and last.stat().st_size == end
    await fill(log, handlers, 5, heads=dict(state.heads), data=_data(10))
    await log.close()
    # reopened: only the 55 real records, none of the stale ones (seq 900+)
    assert _lsns(tmp_path) == list(range(1, 56))
    seqs = [r.body.seq for r in iter_records(str(tmp_path)) if isinstance(r.body, MessagePayload)]
    assert max(seqs) < 900


def _payload(channel: str, seq: int) -> bytes:
    """A MESSAGE payload as the writer encodes it."""
    buf = bytearray()
    append_message(buf, 1, message(channel, seq))
    return bytes(buf[17 : 17 + int.from_bytes(buf[0:4], "little")])


async def test_zeros_then_data_in_a_sealed_segment_refuses_then_repair(
    logs: LogFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A zeroed record header in an older segment, with records after it: not an end of
    the log (zeros do not go on to the end of the file), and not the newest segment.
    `ferry wal repair` cuts there; its backup is the data, not the 64 KiB file."""
    await _written(logs, tmp_path, 1000)
    segments = segment_paths(tmp_path)
    assert len(segments) >= 3
    middle = segments[1]
    good = spans(middle)
    victim = good[4]
    with open(middle, "r+b") as f:
        f.seek(victim.offset)
        f.write(bytes(victim.end - victim.offset))
    with pytest.raises(CorruptLog) as info:
        await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    assert (info.value.path, info.value.offset) == (str(middle), victim.offset)
    assert "non-zero bytes again" in str(info.value)

    assert wal_tool(["repair", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"truncated {middle} at offset {victim.offset}" in out
    assert middle.stat().st_size == victim.offset
    assert Path(str(middle) + ".broken").stat().st_size == good[-1].end  # no zero tail
    assert all(not p.exists() for p in segments[2:])  # set aside as *.broken
    survivors = len(spans(segments[0])) + 4
    log, state, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    assert state.next_lsn == survivors + 1
    await fill(log, handlers, 10, heads=dict(state.heads))
    await log.close()
    assert _lsns(tmp_path) == list(range(1, survivors + 11))


async def test_an_unused_pipeline_file_at_startup_is_removed(
    logs: LogFactory, tmp_path: Path
) -> None:
    await _written(logs, tmp_path, 40)
    leftover = tmp_path / f"{PREFIX}7{SEGMENT_SUFFIX}{TMP_SUFFIX}"
    os.close(prepare_file(str(leftover), SEGMENT, "fallocate"))
    assert wal_tool(["verify", str(tmp_path)]) == EXIT_OK  # a note, not damage
    log, state, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    assert state.next_lsn == 41 and not leftover.exists()
    await fill(log, handlers, 10, heads=dict(state.heads))


# -- compatibility -------------------------------------------------------------------------


async def test_a_log_from_before_preallocation_opens_and_goes_on(
    logs: LogFactory, tmp_path: Path
) -> None:
    """Version 2 segments (what `preallocate="off"` and earlier builds write): the active
    one is written on where it ends, the next rotation takes a preallocated file."""
    log, _, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="off")
    heads: dict[str, int] = {}
    await fill(log, handlers, 200, heads=heads, data=_data(400), per_tick=20, wait=True)
    await log.close()
    old = segment_paths(tmp_path)
    assert {load_header(str(p)).version for p in old} == {VERSION}
    active_size = old[-1].stat().st_size
    log, state, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    assert state.next_lsn == 201
    assert log.pipeline is not None
    assert await asyncio.to_thread(log.pipeline.wait_ready, UNIT)
    before = len(old)
    while len(segment_paths(tmp_path)) == before:
        await fill(log, handlers, 20, heads=heads, data=_data(400), wait=True)
    await log.close()
    paths = segment_paths(tmp_path)
    assert load_header(str(paths[before - 1])).version == VERSION
    assert paths[before - 1].stat().st_size > active_size  # appended to where it ended
    assert load_header(str(paths[before])).version == PREALLOC_VERSION
    assert _lsns(tmp_path) == list(range(1, len(_lsns(tmp_path)) + 1))
    # and back: a preallocated directory opens with preallocation off
    log, state, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="off")
    await fill(log, handlers, 10, heads=dict(state.heads))
    await log.close()
    assert wal_tool(["verify", str(tmp_path)]) == EXIT_OK


def test_headers_of_versions_2_and_3_are_the_same_but_for_the_version(tmp_path: Path) -> None:
    v2, v3 = encode_header("node-a", 9), encode_header("node-a", 9, PREALLOC_VERSION)
    assert len(v2) == len(v3) == 96
    differ = {i for i in range(96) if v2[i] != v3[i]}
    assert 8 in differ and differ <= {8, 88, 89, 90, 91}  # the version field and the CRC
    (tmp_path / "v4.wal").write_bytes(encode_header("node-a", 9, PREALLOC_VERSION + 1))
    with pytest.raises(BadSegmentHeader, match="format version 4, this build reads 1 to 3"):
        load_header(str(tmp_path / "v4.wal"))


async def test_inspect_reports_used_bytes(
    logs: LogFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _written(logs, tmp_path, 300)
    assert wal_tool(["inspect", "--json", str(tmp_path)]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    paths = segment_paths(tmp_path)
    assert [s["bytes"] for s in doc["segments"]] == [_end_of_data(p) for p in paths]
    assert [s["file_bytes"] for s in doc["segments"]] == [p.stat().st_size for p in paths]
    assert all(s["version"] == PREALLOC_VERSION for s in doc["segments"])
    assert wal_tool(["inspect", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    used = sum(_end_of_data(p) for p in paths)
    assert f"{used} bytes" in out and "preallocated and not yet used" in out


# -- readers beside the writer -------------------------------------------------------------


async def test_a_follower_reads_across_preallocated_segments_while_the_writer_writes(
    logs: LogFactory, tmp_path: Path
) -> None:
    log, _, handlers = await logs.open(tmp_path, segment_bytes=SEGMENT, preallocate="fallocate")
    follower = LogFollower(str(tmp_path))
    heads: dict[str, int] = {}
    seen: list[int] = []
    for _ in range(6):
        await fill(log, handlers, 60, heads=heads, data=_data(300), per_tick=20, wait=True)
        seen += [r.lsn for r in follower.records(log.durable_lsn)]
        assert seen == list(range(1, log.durable_lsn + 1))
        # at the live end (zeros after the last record) a read without a bound stops there
        assert [r.lsn for r in follower.records()] == []
    follower.close()
    assert len(segment_paths(tmp_path)) >= 3


# -- a real crash --------------------------------------------------------------------------

CHILD = """
import asyncio, json, sys
from common.durability import Entry, HistoryLimits
from wal import WalLog

async def main():
    log = WalLog(sys.argv[1], node_id="node-a", segment_bytes=int(sys.argv[2]))
    await log.open(HistoryLimits(size=10))
    acked = []
    log.set_handlers(lambda es: acked.extend(e.lsn for e in es), lambda es, why: None)
    for seq in range(1, int(sys.argv[3]) + 1):
        log.append(Entry("c", seq, 0, "u", None, 0, b'"' + b"x" * 700 + b'"'))
        if seq % 10 == 0:
            while not acked or acked[-1] < log.head_lsn:
                await asyncio.sleep(0.001)
    while not log.pipeline.ready():
        await asyncio.sleep(0.001)
    print(json.dumps({"acked": acked}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _spawn(wal_dir: Path, records: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(wal_dir), str(SEGMENT), str(records)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("records", [0, 400])
async def test_sigkill_with_preallocated_segments(
    logs: LogFactory, tmp_path: Path, records: int
) -> None:
    """SIGKILL a writer (no close: the zero tails and the ready file stay as they are):
    every acked record is there, nothing is cut, and the log goes on."""
    wal_dir = tmp_path / "wal"
    acked = json.loads(await line_then_sigkill(_spawn(wal_dir, records), 6 * UNIT))["acked"]
    assert len(acked) == records
    left = _leftovers(wal_dir)
    assert left and all(is_pipeline_file(p.name) for p in left)
    log, state, handlers = await logs.open(wal_dir, segment_bytes=SEGMENT, preallocate="fallocate")
    assert _lsns(wal_dir) == acked and state.next_lsn == records + 1
    assert not list(wal_dir.glob("*.broken")) and not any(p.exists() for p in left)
    if records:
        assert len(segment_paths(wal_dir)) > 3
        # (a rotation that found no file ready yet made a version 2 one: both are fine)
        assert PREALLOC_VERSION in {load_header(str(p)).version for p in segment_paths(wal_dir)}
    await fill(log, handlers, 10, channels=("c",), heads=dict(state.heads))


def test_pipeline_close_removes_the_ready_file(tmp_path: Path) -> None:
    pipeline = SegmentPipeline(str(tmp_path), SEGMENT, "fallocate")
    pipeline.start()
    assert pipeline.wait_ready(UNIT)
    taken = pipeline.take()
    assert taken is not None and os.path.getsize(taken[1]) == SEGMENT
    os.close(taken[0])
    assert pipeline.wait_ready(UNIT)  # taking one starts the next
    assert len(_leftovers(tmp_path)) == 2
    pipeline.close()
    assert _leftovers(tmp_path) == [Path(taken[1])]  # the taken one is the taker's
