"""Torn vs corrupt: only a whole zero sector at a file-offset multiple of 512 makes a
record that fails its CRC torn (etcd's `isTornEntry`); 512 zero bytes anywhere else are
data, and a record damaged there is corrupt. A follower stops quietly at a torn record at
the live end, never at a corrupt one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.durability import Entry
from wal.errors import ChecksumMismatch, CorruptRecord, TornRecord
from wal.reader import LogFollower, scan_segment
from wal.record import SECTOR_BYTES, append_message, decode_record, has_zero_sector
from wal.segment import encode_header, segment_name

ZEROS = 600  # more than a sector of zeros in the payload


def _entry(seq: int, data: bytes) -> Entry:
    return Entry("room.1", seq, 1_700_000_000_000, "alice", None, 1, data)


def _zeros_record() -> tuple[bytes, int]:
    """One MESSAGE record (LSN 2) whose data is `ZEROS` zero bytes between non-zero bytes,
    and the offset in it where the zeros start."""
    buf = bytearray()
    append_message(buf, 2, _entry(2, b"a" * 40 + bytes(ZEROS) + b"b" * 40))
    return bytes(buf), bytes(buf).index(bytes(ZEROS))


def _flip_outside_zeros(raw: bytes, zeros_at: int) -> bytes:
    """Damage one byte of the data that is not part of the zero run: the CRC fails."""
    at = zeros_at - 10
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


def _covers(start: int) -> bool:
    """Whether `ZEROS` zeros from file offset `start` cover a whole 512-byte sector."""
    return (-start % SECTOR_BYTES) + SECTOR_BYTES <= ZEROS


def _base_for(zeros_at: int, *, aligned: bool) -> int:
    """A file offset (a multiple of 8, as records are) for the record such that its zero run
    covers a whole sector (`aligned`) or straddles a boundary without covering one."""
    return next(b for b in range(0, SECTOR_BYTES, 8) if _covers(b + zeros_at) == aligned)


def test_unaligned_zeros_with_a_bad_crc_are_corrupt() -> None:
    raw, zeros_at = _zeros_record()
    damaged = _flip_outside_zeros(raw, zeros_at)
    base = _base_for(zeros_at, aligned=False)
    view = memoryview(damaged)
    assert not has_zero_sector(view, 0, len(damaged), base)
    with pytest.raises(ChecksumMismatch) as info:
        decode_record(view, 0, base)
    assert not isinstance(info.value, TornRecord) and info.value.offset == 0


def test_the_same_bytes_at_a_sector_aligned_offset_are_torn() -> None:
    """Where the record lies in the file decides: same bytes, zeros now cover a sector."""
    raw, zeros_at = _zeros_record()
    damaged = _flip_outside_zeros(raw, zeros_at)
    base = _base_for(zeros_at, aligned=True)
    with pytest.raises(TornRecord) as info:
        decode_record(memoryview(damaged), 0, base)
    assert info.value.needs_more is False


def test_an_unwritten_sector_inside_a_record_is_torn() -> None:
    buf = bytearray()
    append_message(buf, 3, _entry(3, b"z" * 2000))
    buf[SECTOR_BYTES : 2 * SECTOR_BYTES] = bytes(SECTOR_BYTES)  # never reached the disk
    with pytest.raises(TornRecord) as info:
        decode_record(memoryview(bytes(buf)), 0)
    assert info.value.needs_more is False and info.value.offset == 0


def test_a_genuine_payload_of_zeros_decodes() -> None:
    raw, zeros_at = _zeros_record()
    for aligned in (False, True):
        base = _base_for(zeros_at, aligned=aligned)
        got = decode_record(memoryview(raw), 0, base)
        assert (got.lsn, got.offset, got.end) == (2, base, base + len(raw))


# -- the reader and the follower --------------------------------------------------------


def _segment(wal_dir: Path, *, aligned: bool) -> int:
    """A segment of three records whose second (LSN 2) holds the zero run at a file offset
    that covers a sector (`aligned`) or not, damaged outside the run. Returns the victim's
    file offset."""
    raw, zeros_at = _zeros_record()
    for pad in range(1, SECTOR_BYTES):
        buf = bytearray(encode_header("node-a", 1))
        append_message(buf, 1, _entry(1, b"p" * pad))
        victim = len(buf)
        if _covers(victim + zeros_at) == aligned:
            break
    else:
        raise AssertionError("no padding places the victim")
    buf += _flip_outside_zeros(raw, zeros_at)
    append_message(buf, 3, _entry(3, b"after"))
    (wal_dir / segment_name(1)).write_bytes(bytes(buf))
    return victim


def test_reader_reports_unaligned_zeros_as_corrupt(tmp_path: Path) -> None:
    victim = _segment(tmp_path, aligned=False)
    scan = scan_segment(os.path.join(tmp_path, segment_name(1)))
    assert isinstance(scan.error, ChecksumMismatch)
    assert scan.error.offset == victim and scan.records == 1 and scan.end == victim


def test_reader_reports_an_aligned_zero_sector_as_torn(tmp_path: Path) -> None:
    victim = _segment(tmp_path, aligned=True)
    scan = scan_segment(os.path.join(tmp_path, segment_name(1)))
    assert isinstance(scan.error, TornRecord) and not isinstance(scan.error, CorruptRecord)
    assert scan.error.offset == victim and scan.records == 1 and scan.end == victim


def test_follower_raises_at_a_corrupt_record_even_at_the_live_end(tmp_path: Path) -> None:
    victim = _segment(tmp_path, aligned=False)
    seen: list[int] = []
    with LogFollower(str(tmp_path)) as follower:
        with pytest.raises(ChecksumMismatch) as info:
            for record in follower.records():
                seen.append(record.lsn)
        assert seen == [1] and info.value.offset == victim
        assert follower.next_lsn == 2


def test_follower_stops_quietly_at_a_torn_record_at_the_live_end(tmp_path: Path) -> None:
    _segment(tmp_path, aligned=True)
    with LogFollower(str(tmp_path)) as follower:
        assert [r.lsn for r in follower.records()] == [1]  # the live end: no error
        assert follower.next_lsn == 2
        with pytest.raises(TornRecord):
            list(follower.records(to_lsn=3))  # asked for more than is there: not quiet
