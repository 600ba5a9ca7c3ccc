"""WAL directories as builds before heads.db wrote them: version 1 segment headers, each
with the head of every channel ever written as of its first LSN - 1. For the migration
tests and the damage tests of version 1 headers; the product only reads this format."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import msgspec

from common.durability import Entry
from wal.record import append_message
from wal.segment import segment_name

_FIXED = struct.Struct("<8sHHIQ64s")  # magic, version, node_len, heads_len, first_lsn, node
_CRC = struct.Struct("<II")


def encode_v1_header(node_id: str, first_lsn: int, heads: dict[str, int]) -> bytes:
    node = node_id.encode()
    snapshot = msgspec.msgpack.encode(heads)
    fixed = _FIXED.pack(b"FERRYWAL", 1, len(node), len(snapshot), first_lsn, node)
    crc = zlib.crc32(snapshot, zlib.crc32(fixed))
    return b"".join((fixed, _CRC.pack(crc, 0), snapshot, b"\0" * (-len(snapshot) % 8)))


def write_v1_log(
    wal_dir: Path | str,
    entries: Sequence[Entry],
    per_segment: int,
    *,
    node_id: str = "node-a",
    deleted: int = 0,
) -> dict[str, int]:
    """Write `entries` as LSN 1..n into version 1 segments of `per_segment` records, then
    delete the oldest `deleted` segments (what the old retention did, relying on the heads
    snapshot in the next header). Returns every channel's head."""
    os.makedirs(wal_dir, exist_ok=True)
    heads: dict[str, int] = {}
    paths: list[str] = []
    for start in range(0, len(entries), per_segment):
        first_lsn = start + 1
        buf = bytearray(encode_v1_header(node_id, first_lsn, heads))
        for i, entry in enumerate(entries[start : start + per_segment]):
            entry.lsn = first_lsn + i
            append_message(buf, entry.lsn, entry)
            heads[entry.channel] = entry.seq
        path = os.path.join(wal_dir, segment_name(first_lsn))
        with open(path, "wb") as f:
            f.write(buf)
        paths.append(path)
    for path in paths[:deleted]:
        os.unlink(path)
    return heads
