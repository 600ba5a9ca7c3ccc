"""Startup recovery against damaged directories (the table etcd's wal tests keep).

Each case writes a real log, damages the files, reopens and checks exactly which records
survive, that what was cut is backed up, and that new appends read back intact.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.wal.conftest import LogFactory, OpenOptions, fill, segment_paths, spans
from wal import CorruptLog, MessagePayload, NodeIdMismatch, iter_records
from wal.errors import BadSegmentHeader, LsnGap
from wal.segment import TMP_SUFFIX, encode_header, load_header, segment_name
from wal.tool import main as wal_tool

SEGMENT = 16 * 1024  # small segments: several per test


def _data(size: int) -> Callable[[str, int], bytes]:
    return lambda ch, seq: b'{"pad":"%s"}' % (b"x" * size)


async def _write(logs: LogFactory, path: Path, count: int, size: int = 200) -> None:
    log, _, handlers = await logs.open(path, segment_bytes=SEGMENT)
    await fill(log, handlers, count, data=_data(size), per_tick=20, wait=True)
    await log.close()


async def _reopen_and_check(logs: LogFactory, path: Path, survivors: int) -> None:
    """Reopen: exactly `survivors` records remain, then new appends follow them intact.

    The damaged logs here were closed cleanly before the damage, so heads.db had already
    stored the heads of records the damage then took (what a torn tail cannot do with
    wal_sync=fsync: such records were never durable). Those channels continue from the
    stored head: a gap, never a reused seq."""
    log, state, handlers = await logs.open(path, segment_bytes=SEGMENT)
    assert state.next_lsn == survivors + 1
    assert [r.lsn for r in iter_records(str(path))] == list(range(1, survivors + 1))
    kept = _seqs(path)
    for ch, seqs in kept.items():
        assert seqs == list(range(1, len(seqs) + 1))  # what survived is gap-free
        assert state.heads[ch] >= len(seqs) and log.head_of(ch) == state.heads[ch]
    heads = {ch: seq for ch, seq in state.heads.items()}
    start = dict(heads)
    await fill(log, handlers, 30, heads=heads)
    await log.close()
    records = list(iter_records(str(path)))
    assert [r.lsn for r in records] == list(range(1, survivors + 31))
    for ch, seqs in _seqs(path).items():
        old = kept.get(ch, [])
        assert seqs[: len(old)] == old
        assert seqs[len(old) :] == list(range(start[ch] + 1, start[ch] + 1 + len(seqs) - len(old)))
    assert wal_tool(["verify", str(path)]) == 0


def _seqs(path: Path) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for r in iter_records(str(path)):
        if isinstance(r.body, MessagePayload):
            seqs.setdefault(r.body.channel, []).append(r.body.seq)
    return seqs


def _total_before(path: Path, segment: Path) -> int:
    """Records in the segments before `segment`."""
    return sum(len(spans(p)) for p in segment_paths(path) if p.name < segment.name)


@pytest.mark.parametrize("cut", [1, 3, 7, 8, 9, 16, 17, 25, 100, 240, 241, 700])
async def test_tail_truncated_by_n_bytes(logs: LogFactory, tmp_path: Path, cut: int) -> None:
    await _write(logs, tmp_path, 200)
    last = segment_paths(tmp_path)[-1]
    size = last.stat().st_size
    os.truncate(last, size - cut)
    good = [f for f in spans(last) if f.end <= size - cut]
    survivors = _total_before(tmp_path, last) + len(good)
    cut_at = good[-1].end if good else spans(last)[0].offset
    await _reopen_and_check(logs, tmp_path, survivors)
    backup = Path(str(last) + ".broken")
    assert backup.stat().st_size == size - cut  # the file as found, before truncation
    assert cut_at <= last.stat().st_size  # the new appends went after the cut


async def test_zeroed_sector_inside_a_record(logs: LogFactory, tmp_path: Path) -> None:
    await _write(logs, tmp_path, 40, size=1500)
    last = segment_paths(tmp_path)[-1]
    records = spans(last)
    assert len(records) >= 3
    victim = records[len(records) // 2]
    sector = (victim.offset // 512 + 1) * 512  # a whole sector inside the victim
    assert sector + 512 <= victim.end
    with open(last, "r+b") as f:
        f.seek(sector)
        f.write(b"\0" * 512)
    survivors = _total_before(tmp_path, last) + records.index(victim)
    await _reopen_and_check(logs, tmp_path, survivors)


async def test_checksum_mismatch_in_the_last_record(logs: LogFactory, tmp_path: Path) -> None:
    await _write(logs, tmp_path, 100)
    last = segment_paths(tmp_path)[-1]
    records = spans(last)
    with open(last, "r+b") as f:
        f.seek(records[-1].offset + 30)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    await _reopen_and_check(logs, tmp_path, _total_before(tmp_path, last) + len(records) - 1)


async def test_length_pointing_past_eof_in_the_last_segment(
    logs: LogFactory, tmp_path: Path
) -> None:
    await _write(logs, tmp_path, 100)
    last = segment_paths(tmp_path)[-1]
    records = spans(last)
    with open(last, "r+b") as f:
        f.seek(records[-2].offset)
        f.write(struct.pack("<I", 1_000_000))  # plausible, but the file ends long before
    await _reopen_and_check(logs, tmp_path, _total_before(tmp_path, last) + len(records) - 2)


async def test_length_pointing_past_eof_in_a_middle_segment_refuses(
    logs: LogFactory, tmp_path: Path
) -> None:
    await _write(logs, tmp_path, 300)
    middle = segment_paths(tmp_path)[1]
    victim = spans(middle)[-1]
    with open(middle, "r+b") as f:
        f.seek(victim.offset)
        f.write(struct.pack("<I", 1_000_000))
    with pytest.raises(CorruptLog) as info:
        await logs.open(tmp_path, segment_bytes=SEGMENT)
    assert (info.value.path, info.value.offset) == (str(middle), victim.offset)


async def test_flipped_byte_in_a_middle_segment_refuses_then_repair(
    logs: LogFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _write(logs, tmp_path, 300)
    segments = segment_paths(tmp_path)
    assert len(segments) >= 4
    middle = segments[1]
    records = spans(middle)
    victim = records[5]
    with open(middle, "r+b") as f:
        f.seek(victim.offset + 40)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))

    with pytest.raises(CorruptLog) as info:
        await logs.open(tmp_path, segment_bytes=SEGMENT)
    message = str(info.value)
    assert middle.name in message and f"offset {victim.offset}" in message
    assert "ferry wal repair" in message
    assert (info.value.path, info.value.offset) == (str(middle), victim.offset)
    assert not list(tmp_path.glob("*.broken"))  # refusing changes nothing

    size = middle.stat().st_size
    assert wal_tool(["repair", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"truncated {middle} at offset {victim.offset}" in out
    for later in segments[2:]:
        assert f"dropped {later}" in out
        assert Path(str(later) + ".broken").exists() and not later.exists()
    assert Path(str(middle) + ".broken").stat().st_size == size
    assert middle.stat().st_size == victim.offset
    survivors = len(spans(segments[0])) + 5
    await _reopen_and_check(logs, tmp_path, survivors)


@pytest.mark.parametrize("preallocate", ["off", "fallocate"])
async def test_flip_far_back_in_the_newest_segment_refuses(
    logs: LogFactory, tmp_path: Path, preallocate: str
) -> None:
    """Damage further back than one batch can reach is not a torn write. In a
    preallocated segment "back" is from the end of the data, not of the 64 MiB file:
    the same damage near the last record is cut (`test_prealloc.py`)."""
    kw: OpenOptions = {
        "segment_bytes": 64 * 1024 * 1024,
        "max_batch_bytes": 64 * 1024,
        "preallocate": preallocate,
    }
    log, _, handlers = await logs.open(tmp_path, **kw)
    await fill(log, handlers, 4600, data=_data(1000))  # > tail window (64 KiB + 4 MiB)
    await log.close()
    (only,) = segment_paths(tmp_path)
    if preallocate != "off":
        assert only.stat().st_size == 64 * 1024 * 1024  # the zero tail that does not count
    victim = spans(only)[3]
    with open(only, "r+b") as f:
        f.seek(victim.offset + 25)
        f.write(b"\xff")
    with pytest.raises(CorruptLog) as info:
        await logs.open(tmp_path, **kw)
    assert (info.value.path, info.value.offset) == (str(only), victim.offset)
    # The same damage near the end of the file is a torn tail and is cut by itself.
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    log, _, handlers = await logs.open(tmp_path, **kw)
    await fill(log, handlers, 100, data=_data(1000))
    await log.close()
    victim = spans(only)[3]
    with open(only, "r+b") as f:
        f.seek(victim.offset + 25)
        f.write(b"\xff")
    log, state, _ = await logs.open(tmp_path, **kw)
    assert state.next_lsn == 4


async def test_leftover_tmp_segment_is_removed(logs: LogFactory, tmp_path: Path) -> None:
    await _write(logs, tmp_path, 100)
    leftover = tmp_path / (segment_name(101) + TMP_SUFFIX)
    leftover.write_bytes(encode_header("node-a", 101)[:50])
    await _reopen_and_check(logs, tmp_path, 100)
    assert not leftover.exists()


async def test_empty_last_segment_is_fine(logs: LogFactory, tmp_path: Path) -> None:
    await _write(logs, tmp_path, 100)
    # A crash right after a rotation: the new segment has its header and nothing else.
    header = encode_header("node-a", 101)
    assert len(header) == 96
    (tmp_path / segment_name(101)).write_bytes(header)
    await _reopen_and_check(logs, tmp_path, 100)
    assert len(spans(tmp_path / segment_name(101))) == 30  # appends went into it


async def test_missing_middle_segment_refuses(logs: LogFactory, tmp_path: Path) -> None:
    await _write(logs, tmp_path, 300)
    segments = segment_paths(tmp_path)
    segments[1].unlink()
    with pytest.raises(CorruptLog) as info:
        await logs.open(tmp_path, segment_bytes=SEGMENT)
    assert isinstance(info.value.__context__, LsnGap) or "LSN gap" in str(info.value)
    assert info.value.path == str(segments[2])


@pytest.mark.parametrize("which", [0, -1])
async def test_bad_segment_header_refuses(logs: LogFactory, tmp_path: Path, which: int) -> None:
    await _write(logs, tmp_path, 300)
    victim = segment_paths(tmp_path)[which]
    with open(victim, "r+b") as f:
        f.seek(30)  # inside the node id: only the header CRC can tell
        f.write(b"Z")
    with pytest.raises(CorruptLog) as info:
        await logs.open(tmp_path, segment_bytes=SEGMENT)
    assert info.value.path == str(victim) and "header checksum" in str(info.value)


async def test_other_nodes_log_refuses(logs: LogFactory, tmp_path: Path) -> None:
    await _write(logs, tmp_path, 10)
    with pytest.raises(NodeIdMismatch, match="node-a"):
        await logs.open(tmp_path, node_id="node-b")


async def test_refusal_releases_the_lock(logs: LogFactory, tmp_path: Path) -> None:
    await _write(logs, tmp_path, 300)
    middle = segment_paths(tmp_path)[1]
    with open(middle, "r+b") as f:
        f.seek(spans(middle)[0].offset + 30)
        f.write(b"\x00\x01")
    with pytest.raises(CorruptLog):
        await logs.open(tmp_path, segment_bytes=SEGMENT)
    assert wal_tool(["repair", str(tmp_path)]) == 0  # would fail if the lock were held


def test_bad_header_error_type() -> None:
    assert issubclass(BadSegmentHeader, Exception)


def _original_log(root: Path, preallocate: str) -> list[tuple[int, object]]:
    """A small rotated log, written once; returns (lsn, body) of every record."""
    import asyncio

    async def write() -> None:
        factory = LogFactory()
        try:
            log, _, handlers = await factory.open(root, segment_bytes=2048, preallocate=preallocate)
            await fill(log, handlers, 60, data=_data(40), per_tick=6, wait=True)
        finally:
            for log in factory.logs:
                await log.close()

    asyncio.run(write())
    return [(r.lsn, r.body) for r in iter_records(str(root))]


@pytest.mark.parametrize("preallocate", ["off", "fallocate"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(min_value=0, max_value=100),
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    kind=st.sampled_from(["flip", "truncate", "zero", "write"]),
)
def test_any_damage_recovers_a_prefix_or_refuses(
    which: int,
    where: float,
    kind: str,
    preallocate: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Whatever the damage: either startup refuses (CorruptLog), or it recovers exactly the
    records before the damage, byte for byte; damage past the newest segment's header is
    always recovered from. On preallocated segments too, where most of a file is its zero
    tail: `write` (64 bytes of garbage) there is a torn write past the end of the data."""
    import asyncio

    base = tmp_path_factory.getbasetemp() / f"prefix-original-{preallocate}"
    if not base.exists():
        base.mkdir()
        _ORIGINAL[preallocate] = _original_log(base, preallocate)
    original = _ORIGINAL[preallocate]
    work = tmp_path_factory.mktemp("prefix")
    shutil.rmtree(work)
    shutil.copytree(base, work)
    segments = segment_paths(work)
    victim = segments[which % len(segments)]
    size = victim.stat().st_size
    offset = int(where * size)
    data = bytearray(victim.read_bytes())
    if kind == "flip":
        data[offset] ^= 0x5A
    elif kind == "truncate":
        del data[offset:]
    elif kind == "zero":
        data[offset : offset + 512] = b"\0" * len(data[offset : offset + 512])
    else:
        data[offset : offset + 64] = b"\xa5" * len(data[offset : offset + 64])
    victim.write_bytes(bytes(data))
    header_size = load_header(str(base / victim.name)).size

    async def reopen() -> list[tuple[int, object]] | None:
        factory = LogFactory()
        try:
            await factory.open(work, segment_bytes=2048, preallocate=preallocate)
        except CorruptLog:
            return None
        finally:
            for log in factory.logs:
                await log.close()
        return [(r.lsn, r.body) for r in iter_records(str(work))]

    recovered = asyncio.run(reopen())
    if victim == segments[-1] and offset >= header_size:
        assert recovered is not None  # a torn tail of the newest segment: never refused
    if recovered is not None:
        assert recovered == original[: len(recovered)]


_ORIGINAL: dict[str, list[tuple[int, object]]] = {}
