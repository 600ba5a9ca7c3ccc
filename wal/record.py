"""Record framing and CRC: pure functions over bytes, no I/O.

    offset  size
    0       4    length   u32 LE, payload bytes (not counting header or padding)
    4       4    crc      u32 LE, zlib.crc32 over bytes 8 .. 17+length (lsn, type, payload)
    8       8    lsn      u64 LE
    16      1    type     u8, `common.durability.RecordType`
    17      n    payload  msgpack (see `MessagePayload`, `ConnectionEvent`)
    17+n    0-7  zeros    so that the next record starts 8-aligned

Because lsn, type and payload are contiguous, the CRC is one `zlib.crc32` over one slice
on the read side. zlib.crc32 costs ~0.15 us for a 200-byte record here, a few percent of
the per-record budget, so CRC-32C from an extra package would not pay for itself.
"""

from __future__ import annotations

import struct
import zlib

import msgspec

from common.durability import Entry, RecordType
from wal.errors import BadLength, BadPayload, ChecksumMismatch, RecordTooLarge, TornRecord

RECORD_HEADER = struct.Struct("<IIQB")  # length, crc, lsn, type
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 17
_LSN_TYPE = struct.Struct("<QB")  # the CRC'd prefix: lsn, type
ALIGN = 8
# The format's hard bound on a payload; a larger length field is corruption. Frames are
# far smaller (`max_frame_bytes` defaults to 64 KiB); this only has to exceed them.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
MESSAGE = int(RecordType.MESSAGE)
EVENT = int(RecordType.EVENT)
KNOWN_TYPES = frozenset((MESSAGE, EVENT))
_PADDING = tuple(b"\0" * n for n in range(ALIGN))
# The smallest sector a disk writes as a unit. A write cut short by a crash leaves whole
# sectors unwritten, which read back as zeros; they start at file offsets that are
# multiples of this (what etcd's wal decoder calls minSectorSize, see `isTornEntry`).
SECTOR_BYTES = 512
_ZERO_SECTOR = bytes(SECTOR_BYTES)


class MessagePayload(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Payload of a MESSAGE record: a msgpack array in this field order.

    New fields may only be added at the end, with defaults, so old records still decode;
    a record whose trailing fields are all default is written without them (`mid`).
    """

    channel: str
    seq: int
    ts_ms: int
    sender: str
    client_msg_id: str | None
    encoding: int  # common.durability.Encoding: data is JSON text (0) or msgpack bytes (1)
    data: bytes
    mid: str | None = None  # the publisher's message id (idempotent publish)

    def to_entry(self, lsn: int) -> Entry:
        return Entry(
            self.channel,
            self.seq,
            self.ts_ms,
            self.sender,
            self.client_msg_id,
            self.encoding,
            self.data,
            lsn=lsn,
            mid=self.mid,
        )


class ConnectionEvent(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Payload of an EVENT record: one connection event, for the `ferry_events` table.

    New fields may only be added at the end, with defaults, so old records still decode.
    """

    kind: str  # "connect" | "disconnect" | ...
    user: str
    remote: str  # peer address, "ip:port"
    close_code: int | None = None
    duration_ms: int | None = None
    ts_ms: int = 0
    conn_id: str = ""  # the connection's id (the `client` of its welcome frame)


class RecordSpan(msgspec.Struct, frozen=True, gc=False):
    """One record as found in a buffer: [offset, end) including header and padding.

    (A Struct rather than a NamedTuple: created per record on every read, and a Struct is
    built in C, several times faster.)"""

    offset: int
    end: int
    lsn: int
    type: int
    payload: memoryview


_encoder = msgspec.msgpack.Encoder()
_message_decoder = msgspec.msgpack.Decoder(MessagePayload)
_event_decoder = msgspec.msgpack.Decoder(ConnectionEvent)
# Bound once: the hot path pays no attribute lookups.
_encode = _encoder.encode
_crc32 = zlib.crc32
_pack_header = RECORD_HEADER.pack
_pack_lsn_type = _LSN_TYPE.pack
_unpack_header = RECORD_HEADER.unpack_from


def framed_size(payload_len: int) -> int:
    """Bytes a record with a payload of this size takes on disk."""
    return (RECORD_HEADER_SIZE + payload_len + ALIGN - 1) & ~(ALIGN - 1)


def append_record(buf: bytearray, lsn: int, rtype: int, payload: bytes) -> None:
    """Frame `payload` as a record of `rtype` with `lsn` onto the end of `buf`: the one
    place the record layout is written (header, payload, padding; see the module
    docstring). On the hot path for every append, hence the prebound names."""
    n = len(payload)
    if n > MAX_PAYLOAD_BYTES:
        raise RecordTooLarge(f"record payload of {n} bytes is over {MAX_PAYLOAD_BYTES}")
    buf += _pack_header(n, _crc32(payload, _crc32(_pack_lsn_type(lsn, rtype))), lsn, rtype)
    buf += payload
    buf += _PADDING[-(RECORD_HEADER_SIZE + n) & (ALIGN - 1)]


def append_message(buf: bytearray, lsn: int, entry: Entry) -> None:
    """Frame `entry` as a MESSAGE record with `lsn` onto the end of `buf` (the hot path)."""
    fields = (
        entry.channel,
        entry.seq,
        entry.ts_ms,
        entry.sender,
        entry.client_msg_id,
        entry.encoding,
        entry.data,
    )
    mid = entry.mid
    # the trailing field only when set: a record without a mid is as before (MessagePayload)
    payload = _encode(fields if mid is None else (*fields, mid))
    append_record(buf, lsn, MESSAGE, payload)


def encode_event(event: ConnectionEvent) -> bytes:
    return _encoder.encode(event)


def encode_record(lsn: int, rtype: int, payload: bytes) -> bytes:
    """One framed record (header, payload, padding)."""
    buf = bytearray()
    append_record(buf, lsn, rtype, payload)
    return bytes(buf)


def decode_record(view: memoryview, offset: int, base: int = 0) -> RecordSpan:
    """Decode the record at `offset` of `view`, whose end is taken as the end of the data.

    Raises `TornRecord` when the data ends inside the record (or the header is all zeros,
    or the CRC fails over a zero sector: what an unfinished write leaves behind, see
    `has_zero_sector`), `BadLength`, or `ChecksumMismatch`. Offsets in
    the errors are relative to `view`; the reader turns them into file offsets. `base` is
    added to the offsets of the returned span (the file offset of `view[0]`).
    """
    end = len(view)
    if offset + 17 > end:  # RECORD_HEADER_SIZE
        raise TornRecord(
            f"header cut short: {end - offset} of {RECORD_HEADER_SIZE} bytes",
            offset,
            needs_more=True,
        )
    length, crc, lsn, rtype = _unpack_header(view, offset)
    if length == 0:
        if crc == 0 and lsn == 0 and rtype == 0:
            raise TornRecord("zero-filled record header", offset)
        raise BadLength("length 0", offset)
    if length > MAX_PAYLOAD_BYTES:
        raise BadLength(f"length {length} is over the {MAX_PAYLOAD_BYTES}-byte limit", offset)
    stop = offset + 17 + length
    nxt = (stop + 7) & -8  # ALIGN
    if nxt > end:
        raise TornRecord(
            f"record needs {nxt - offset} bytes, {end - offset} remain", offset, needs_more=True
        )
    if _crc32(view[offset + 8 : stop]) != crc:
        if has_zero_sector(view, offset, stop, base):
            raise TornRecord("checksum mismatch over a zero-filled sector", offset)
        raise ChecksumMismatch(f"stored {crc:#010x}", offset)
    return RecordSpan(base + offset, base + nxt, lsn, rtype, view[offset + 17 : stop])


def has_zero_sector(view: memoryview, start: int, stop: int, base: int = 0) -> bool:
    """Whether a whole sector that begins in `view[start:stop]` is zeros, sectors taken at
    file offsets (`base` is the file offset of `view[0]`) that are multiples of
    `SECTOR_BYTES`.

    That is what an unwritten sector looks like. Zeros anywhere else are only data that
    failed its CRC: a payload may well hold 512 zero bytes, and a record damaged there is
    corrupt, not torn (a follower stops quietly at a torn record, but not at this one).
    """
    at = start + (-(base + start) % SECTOR_BYTES)
    # A sector that begins inside the record counts even if it ends past it (when `view`
    # holds all of it): a record cut short by a preallocated segment's zero tail has its
    # last sector unwritten, but maybe less than 512 bytes of the record in it.
    end = len(view)
    while at < stop and at + SECTOR_BYTES <= end:
        if view[at : at + SECTOR_BYTES] == _ZERO_SECTOR:
            return True
        at += SECTOR_BYTES
    return False


def decode_message(payload: bytes | memoryview) -> MessagePayload:
    try:
        return _message_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise BadPayload(f"undecodable message payload: {exc}", 0) from None


def decode_event(payload: bytes | memoryview) -> ConnectionEvent:
    try:
        return _event_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise BadPayload(f"undecodable event payload: {exc}", 0) from None


def decode_payload(rtype: int, payload: bytes | memoryview) -> MessagePayload | ConnectionEvent:
    """Decode a payload by record type; `BadPayload` for an unknown type or bad bytes."""
    if rtype == MESSAGE:
        return decode_message(payload)
    if rtype == EVENT:
        return decode_event(payload)
    raise BadPayload(f"unknown record type {rtype}", 0)
