"""Record framing: round trips and what damage turns into (property tests)."""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.durability import Entry
from tests.wal.legacy import encode_v1_header
from wal.errors import (
    BadLength,
    ChecksumMismatch,
    RecordError,
    RecordTooLarge,
    SegmentError,
    TornRecord,
)
from wal.reader import scan_segment
from wal.record import (
    ALIGN,
    EVENT,
    MAX_PAYLOAD_BYTES,
    MESSAGE,
    RECORD_HEADER,
    ConnectionEvent,
    MessagePayload,
    RecordSpan,
    append_message,
    append_record,
    decode_event,
    decode_message,
    decode_record,
    encode_event,
    encode_record,
    framed_size,
)
from wal.segment import encode_header, segment_name

entries = st.builds(
    Entry,
    channel=st.text(min_size=1, max_size=200),
    seq=st.integers(min_value=1, max_value=2**63 - 1),
    ts_ms=st.integers(min_value=0, max_value=2**63 - 1),
    sender=st.text(max_size=50),
    client_msg_id=st.none() | st.text(max_size=40),
    encoding=st.sampled_from([0, 1]),
    data=st.binary(max_size=3000),
)
events = st.builds(
    ConnectionEvent,
    kind=st.sampled_from(["connect", "disconnect"]),
    user=st.text(max_size=30),
    remote=st.text(max_size=50),
    close_code=st.none() | st.integers(min_value=1000, max_value=4999),
    duration_ms=st.none() | st.integers(min_value=0, max_value=2**40),
    ts_ms=st.integers(min_value=0, max_value=2**50),
    conn_id=st.text(max_size=20),
)


def crc_ok(view: memoryview, offset: int) -> bool:
    """Recompute a record's CRC independently of decode_record."""
    length, crc, _, _ = RECORD_HEADER.unpack_from(view, offset)
    return zlib.crc32(bytes(view[offset + 8 : offset + 17 + length])) == int(crc)


@given(entries, st.integers(min_value=1, max_value=2**63 - 1))
def test_message_round_trip(entry: Entry, lsn: int) -> None:
    buf = bytearray()
    append_message(buf, lsn, entry)
    assert len(buf) % ALIGN == 0
    got = decode_record(memoryview(bytes(buf)), 0)
    assert (got.offset, got.end, got.lsn, got.type) == (0, len(buf), lsn, MESSAGE)
    assert len(buf) == framed_size(len(got.payload))
    msg = decode_message(got.payload)
    assert msg == MessagePayload(
        entry.channel,
        entry.seq,
        entry.ts_ms,
        entry.sender,
        entry.client_msg_id,
        entry.encoding,
        entry.data,
    )
    back = msg.to_entry(lsn)
    assert (back.lsn, back.channel, back.seq, back.data) == (
        lsn,
        entry.channel,
        entry.seq,
        entry.data,
    )


@given(events, st.integers(min_value=1, max_value=2**40))
def test_event_round_trip(event: ConnectionEvent, lsn: int) -> None:
    raw = encode_record(lsn, EVENT, encode_event(event))
    got = decode_record(memoryview(raw), 0)
    assert (got.lsn, got.type) == (lsn, EVENT)
    assert decode_event(got.payload) == event


def test_event_decodes_without_trailing_fields() -> None:
    """Fields may only be appended with defaults: an older, shorter array still decodes."""
    import msgspec

    old = msgspec.msgpack.encode(["connect", "bob", "10.0.0.1:4000"])
    assert decode_event(old) == ConnectionEvent("connect", "bob", "10.0.0.1:4000")


def test_too_large_payload_is_refused_before_anything_is_written() -> None:
    buf = bytearray(b"x" * 8)
    with pytest.raises(RecordTooLarge):
        append_message(buf, 1, Entry("c", 1, 0, "u", None, 1, b"\0" * MAX_PAYLOAD_BYTES))
    assert buf == bytearray(b"x" * 8)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b[:-1], TornRecord),  # padding missing
        (lambda b: b[:10], TornRecord),  # header cut short
        (lambda b: b"\0" * len(b), TornRecord),  # zero-filled
        (lambda b: b"\0\0\0\0" + b[4:], BadLength),  # length 0, rest intact
        (lambda b: b"\xff\xff\xff\x7f" + b[4:], BadLength),  # over the limit
        (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], ChecksumMismatch),
        (lambda b: b[:9] + bytes([b[9] ^ 1]) + b[10:], ChecksumMismatch),  # lsn is covered
        (lambda b: b[:16] + bytes([b[16] ^ 1]) + b[17:], ChecksumMismatch),  # type is covered
    ],
)
def test_damage_classification(mutate: Callable[[bytes], bytes], error: type[RecordError]) -> None:
    raw = encode_record(7, MESSAGE, b"\x97" + b"a" * 40)
    damaged = mutate(raw)
    with pytest.raises(error) as info:
        decode_record(memoryview(damaged), 0)
    assert info.value.offset == 0


def test_zeroed_sector_inside_a_record_reads_as_torn() -> None:
    raw = bytearray(encode_record(3, MESSAGE, b"\xc6" + b"z" * 2000))
    raw[1024:1536] = b"\0" * 512  # a whole sector (file offsets 1024..1536)
    with pytest.raises(TornRecord):
        decode_record(memoryview(bytes(raw)), 0)


def _records(lsns: range, sizes: list[int]) -> bytes:
    buf = bytearray()
    for lsn, size in zip(lsns, sizes, strict=False):
        append_record(buf, lsn, MESSAGE, bytes([lsn % 251]) * size)
    return bytes(buf)


damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
    st.tuples(st.just("truncate"), st.integers(min_value=0), st.just(0)),
    st.tuples(st.just("zero"), st.integers(min_value=0), st.integers(min_value=1, max_value=600)),
)


def _apply(data: bytes, how: tuple[str, int, int]) -> bytes:
    kind, where, arg = how
    where %= max(1, len(data))
    if kind == "flip":
        return data[:where] + bytes([data[where] ^ arg]) + data[where + 1 :]
    if kind == "truncate":
        return data[:where]
    return data[:where] + b"\0" * min(arg, len(data) - where) + data[where + arg :]


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=12), damage)
def test_damaged_buffers_never_yield_a_bad_record(
    sizes: list[int], how: tuple[str, int, int]
) -> None:
    data = _apply(_records(range(1, len(sizes) + 1), sizes), how)
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        try:
            got = decode_record(view, offset)
        except RecordError:
            break  # the documented errors, and only those
        assert crc_ok(view, offset)
        offset = got.end


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=20),
    damage,
    st.sampled_from([1, 2]),
)
def test_damaged_segments_scan_to_documented_errors(
    sizes: list[int], how: tuple[str, int, int], version: int
) -> None:
    # Version 1 headers carry a heads snapshot: damage may hit it too.
    header = (
        encode_v1_header("node-a", 1, {"room.1": 4}) if version == 1 else encode_header("node-a", 1)
    )
    body = _records(range(1, len(sizes) + 1), sizes)
    data = _apply(header + body, how)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, segment_name(1))
        with open(path, "wb") as f:
            f.write(data)
        seen: list[int] = []

        def visit(index: int, frame: RecordSpan) -> None:
            lsn = frame.lsn
            seen.append(lsn)
            with open(path, "rb") as f:
                raw = f.read()
            assert crc_ok(memoryview(raw), frame.offset)

        scan = scan_segment(path, 0, visit)
    assert scan.error is None or isinstance(scan.error, RecordError | SegmentError)
    assert seen == list(range(1, len(seen) + 1))  # gap-free from the first LSN
    assert scan.records == len(seen)
    if data == header + body:
        assert scan.error is None and scan.records == len(sizes)
