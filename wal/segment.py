"""Segment files: names, the header, creation by rotation (`.tmp` + fdatasync + rename +
directory fsync), preallocated files. The directory's writer lock is in `wal.lockfile`;
the thread that keeps the next preallocated file ready is `wal.pipeline`.

Header layout (little endian), followed by the first record at `SegmentHeader.size`:

    offset  size
    0       8    magic      b"FERRYWAL"
    8       2    version    u16: 3 (preallocated), 2 (not preallocated) or 1 (read only)
    10      2    node_len   u16, bytes of node id used
    12      4    heads_len  u32, bytes of the heads snapshot; always 0 in version 2
    16      8    first_lsn  u64, LSN of the segment's first record (= its name)
    24      64   node_id    UTF-8, zero-padded
    88      4    crc        zlib.crc32 over bytes 0..88 and the heads snapshot
    92      4    zeros
    96      h    heads      version 1 only: msgpack map {channel: last seq} as of first_lsn - 1
    96+h    0-7  zeros      to the next multiple of 8

Version 2 headers are always 96 bytes: channel heads live in `heads.db` (`wal.heads`).
Version 1 headers (written before heads.db existed) are still read; their snapshot is
only decoded when asked (`decode_heads`), which recovery does for the oldest segment of a
directory that has no heads store yet (the migration). Otherwise it is only checksummed,
in chunks, and counted.

Version 3 is version 2 plus one promise about the file, not the header: the file may go
on past its last record with zeros, the space `posix_fallocate` (or a zero fill) reserved
when it was made (`prepare_file`). A reader finds the end of the log where zeros start at
a record boundary (`wal.reader`). The header bytes are the same as version 2 but for the
version field, so a build that only knows versions 1 and 2 refuses such a segment by name
instead of taking its zero tail for damage. Segments made without preallocation are
still written as version 2, byte for byte what builds before preallocation wrote.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import msgspec

from wal.errors import BadSegmentHeader

MAGIC = b"FERRYWAL"
VERSION = 2  # what this build writes for a segment that is not preallocated
PREALLOC_VERSION = 3  # ... and for a preallocated one (the file may end in zeros)
V1_HEADS = 1  # the version whose headers carry a heads snapshot (read only)
READABLE_VERSIONS = (1, 2, 3)
# How `prepare_file` reserves a segment's space: `fallocate` (posix_fallocate: unwritten
# extents that read back as zeros), `zero` (zeros written and synced), `off` (none).
PREALLOCATE_MODES = ("fallocate", "zero", "off")
SEGMENT_SUFFIX = ".wal"
TMP_SUFFIX = ".tmp"
BROKEN_SUFFIX = ".broken"
MAX_NODE_ID_BYTES = 64
MAX_HEADS_BYTES = 256 * 1024 * 1024

_FIXED = struct.Struct("<8sHHIQ64s")  # magic, version, node_len, heads_len, first_lsn, node
_CRC = struct.Struct("<II")  # crc, zeros
HEADER_FIXED_SIZE = _FIXED.size + _CRC.size  # 96
_NAME = re.compile(r"^(\d{20})\.wal$")
_heads_decoder = msgspec.msgpack.Decoder(dict[str, int])
_CHUNK = 1024 * 1024  # bytes per read of a v1 heads snapshot that is not decoded


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    node_id: str
    first_lsn: int
    size: int  # bytes before the first record
    version: int = VERSION
    # Version 1 only: channels in the heads snapshot, and the snapshot itself (channel ->
    # last seq before first_lsn) when read with decode_heads=True, else None.
    heads_count: int = 0
    heads: dict[str, int] | None = None


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first LSN a segment file name stands for, or None if it is not a segment."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def list_segments(wal_dir: str) -> list[tuple[int, str]]:
    """(first LSN, path) of every segment, in LSN order."""
    found = []
    for name in os.listdir(wal_dir):
        first = parse_segment_name(name)
        if first is not None:
            found.append((first, os.path.join(wal_dir, name)))
    found.sort()
    return found


def list_leftovers(wal_dir: str) -> list[str]:
    """Segments a rotation left half-made (`*.wal.tmp`): never part of the log."""
    return sorted(
        os.path.join(wal_dir, name)
        for name in os.listdir(wal_dir)
        if name.endswith(SEGMENT_SUFFIX + TMP_SUFFIX)
    )


def node_id_bytes(node_id: str) -> bytes:
    raw = node_id.encode()
    if not 0 < len(raw) <= MAX_NODE_ID_BYTES or b"\0" in raw:
        raise ValueError(f"node id must be 1..{MAX_NODE_ID_BYTES} UTF-8 bytes, got {node_id!r}")
    return raw


def encode_header(node_id: str, first_lsn: int, version: int = VERSION) -> bytes:
    """A version 2 (or, for a preallocated file, 3) header: 96 bytes, no heads snapshot."""
    node = node_id_bytes(node_id)
    fixed = _FIXED.pack(MAGIC, version, len(node), 0, first_lsn, node)
    return b"".join((fixed, _CRC.pack(zlib.crc32(fixed), 0)))


def _map_count(prefix: bytes) -> int | None:
    """The entry count of the msgpack map starting with `prefix`, None if it is not one."""
    if not prefix:
        return None
    tag = prefix[0]
    if 0x80 <= tag <= 0x8F:
        return tag & 0x0F
    if tag == 0xDE and len(prefix) >= 3:
        return int.from_bytes(prefix[1:3], "big")
    if tag == 0xDF and len(prefix) >= 5:
        return int.from_bytes(prefix[1:5], "big")
    return None


def read_header(f: BinaryIO, path: str, *, decode_heads: bool = False) -> SegmentHeader:
    """Read and check the header of the segment open as `f` (positioned at 0).

    A version 1 heads snapshot is always checksummed; it is decoded only with
    `decode_heads` (it can be large: reading it in chunks keeps memory flat)."""
    raw = f.read(HEADER_FIXED_SIZE)
    if len(raw) < HEADER_FIXED_SIZE:
        raise BadSegmentHeader(path, f"header cut short: {len(raw)} of {HEADER_FIXED_SIZE} bytes")
    magic, version, node_len, heads_len, first_lsn, node = _FIXED.unpack_from(raw)
    crc, _ = _CRC.unpack_from(raw, _FIXED.size)
    if magic != MAGIC:
        raise BadSegmentHeader(path, f"not a ferry WAL segment (magic {magic!r})")
    if version not in READABLE_VERSIONS:
        raise BadSegmentHeader(path, f"format version {version}, this build reads 1 to 3")
    if heads_len > MAX_HEADS_BYTES or node_len > MAX_NODE_ID_BYTES:
        raise BadSegmentHeader(path, "header sizes out of bounds")
    if version != V1_HEADS and heads_len:
        raise BadSegmentHeader(path, f"version {version} header with a {heads_len}-byte snapshot")
    running = zlib.crc32(raw[: _FIXED.size])
    heads: dict[str, int] | None = None
    count = 0
    snapshot = prefix = b""
    if heads_len:
        if decode_heads:
            snapshot = f.read(heads_len)
            if len(snapshot) < heads_len:
                raise BadSegmentHeader(path, "heads snapshot cut short")
            running = zlib.crc32(snapshot, running)
            prefix = snapshot[:5]
        else:
            left = heads_len
            while left:
                chunk = f.read(min(left, _CHUNK))
                if not chunk:
                    raise BadSegmentHeader(path, "heads snapshot cut short")
                if not prefix:
                    prefix = chunk[:5]
                running = zlib.crc32(chunk, running)
                left -= len(chunk)
    if running != crc:
        raise BadSegmentHeader(path, "header checksum mismatch")
    named = parse_segment_name(os.path.basename(path))
    if named is not None and named != first_lsn:
        raise BadSegmentHeader(path, f"header says first LSN {first_lsn}, the name {named}")
    try:
        node_id = node[:node_len].decode()
        if not heads_len:
            heads = {}
        elif decode_heads:
            heads = _heads_decoder.decode(snapshot)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadSegmentHeader(path, f"undecodable header: {exc}") from None
    if heads_len:
        found = _map_count(prefix)
        if found is None:
            raise BadSegmentHeader(path, "undecodable header: the heads snapshot is not a map")
        count = found
    size = HEADER_FIXED_SIZE + heads_len + (-heads_len % 8)
    return SegmentHeader(node_id, first_lsn, size, version, count, heads)


def load_header(path: str, *, decode_heads: bool = False) -> SegmentHeader:
    with open(path, "rb") as f:
        return read_header(f, path, decode_heads=decode_heads)


def pwrite_all(fd: int, offset: int, *parts: bytes | bytearray | memoryview) -> None:
    """Write `parts` back to back at file `offset` (one pwritev; more only on a short write).

    Segments are written at explicit offsets, not with O_APPEND: a preallocated file
    already has its final size, and the records go into its zero tail."""
    views = [memoryview(part) for part in parts if len(part)]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def fsync_dir(path: str) -> None:
    """Make a rename/creation/removal in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_ZERO_FILL = 1024 * 1024  # bytes per write of a `zero` preallocation


def prepare_file(path: str, size: int, mode: str) -> int:
    """Create `path` (which must not exist), reserve `size` bytes of zeros in it as `mode`
    says, fsync it and return an fd open for writing (not appending) to it.

    `fallocate`: posix_fallocate, which on ext4/XFS marks extents allocated but unwritten
    (they read back as zeros, and writing into them needs no block allocation at
    fdatasync time); `zero`: the zeros are written; `off`: an empty file. The caller
    fsyncs the directory. On any error the file is removed and the error raised
    (ENOSPC when the disk is full)."""
    if mode not in PREALLOCATE_MODES:
        raise ValueError(f"preallocate must be one of {PREALLOCATE_MODES}, got {mode!r}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        if mode == "fallocate":
            fallocate = getattr(os, "posix_fallocate", None)
            if fallocate is None:  # not on macOS: the caller goes without, as on ENOSPC
                raise OSError(errno.EOPNOTSUPP, "posix_fallocate is not available here")
            fallocate(fd, 0, size)
        elif mode == "zero":
            zeros = bytes(min(size, _ZERO_FILL))
            for offset in range(0, size, _ZERO_FILL):
                pwrite_all(fd, offset, zeros[: min(_ZERO_FILL, size - offset)])
        if mode != "off":
            os.fsync(fd)  # the size and the allocation are metadata: fsync, not fdatasync
    except BaseException:
        discard(fd, path)
        raise
    return fd


def discard(fd: int, path: str) -> None:
    """Close `fd` and remove `path`, ignoring errors: a file made for a segment that is not
    going to be one."""
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)


def install_segment(
    wal_dir: str,
    fd: int,
    tmp: str,
    first_lsn: int,
    header: bytes,
    first_batch: bytes | bytearray = b"",
) -> None:
    """Make the file open as `fd` (named `tmp`) segment `first_lsn`: `header` (and the
    records of `first_batch` after it) written at offset 0, fdatasync'ed, renamed into
    place, the directory fsync'ed. A crash leaves either no segment (a `.tmp`, removed at
    the next start) or one with its whole header (and the batch): the data is synced
    before the rename is even made."""
    pwrite_all(fd, 0, header, first_batch)
    os.fdatasync(fd)
    os.rename(tmp, os.path.join(wal_dir, segment_name(first_lsn)))
    fsync_dir(wal_dir)


def create_segment(
    wal_dir: str,
    first_lsn: int,
    header: bytes,
    *,
    preallocate: str = "off",
    size: int = 0,
) -> int:
    """Create segment `first_lsn` atomically and return an fd open for writing to it.

    `header` comes from `encode_header` (version 3 when `preallocate` is not `off`: the
    file is then `size` bytes, zeros past the header). It goes to `<name>.tmp`, is
    fdatasync'ed, renamed into place and the directory fsync'ed: a crash leaves either no
    segment or a whole header, never half of one (a leftover `.tmp` is removed at the next
    start). A rotation normally takes a file `wal.pipeline` made ahead of time instead.
    """
    tmp = os.path.join(wal_dir, segment_name(first_lsn)) + TMP_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # what an earlier attempt left
    fd = prepare_file(tmp, max(size, len(header)) if preallocate != "off" else 0, preallocate)
    try:
        install_segment(wal_dir, fd, tmp, first_lsn, header)
    except BaseException:
        discard(fd, tmp)
        raise
    return fd


def open_for_writing(path: str) -> int:
    """The active segment, open for `pwrite_all` at the end of its last record."""
    return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
