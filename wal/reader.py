"""Reading the log back: records of one segment, scans of a directory, and
`iter_records` for the replayer.

Every read ends in one of three ways, which callers must tell apart:

* a clean end: the data stops exactly at a record boundary (iteration just stops), or,
  in a preallocated (version 3) segment, zeros start there and go on to the end of the
  file (a scan checks that they do; a follower takes the first zero header as the live
  end, which is where the writer goes on);
* a torn tail: `TornRecord`, the data stops inside a record (a write in progress, or one
  cut short by a crash) or a zero-filled stretch where a record should be;
* corruption: a `CorruptRecord` (`ChecksumMismatch`, `BadLength`, `LsnGap`, `BadPayload`)
  or a `BadSegmentHeader`.

All of them carry the file and the offset of the first byte that could not be used.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

from wal.errors import (
    BadSegmentHeader,
    LsnGap,
    LsnNotAvailable,
    RecordError,
    SegmentError,
    TornRecord,
)
from wal.record import (
    ALIGN,
    RECORD_HEADER_SIZE,
    ConnectionEvent,
    MessagePayload,
    RecordSpan,
    decode_payload,
    decode_record,
)
from wal.segment import PREALLOC_VERSION, SegmentHeader, list_segments, read_header

# Bytes per read. A record cut in two by a chunk boundary (or larger than a chunk) is
# completed by reading on.
CHUNK_BYTES = 1024 * 1024
# The first read of each `spans()` call: a follower at the live end of a preallocated
# segment would otherwise read a whole chunk of zeros on every call.
FIRST_READ_BYTES = 64 * 1024
_EMPTY = memoryview(b"")
_STEP = 4096  # bytes looked at at a time when finding where zeros start or end


def _first_nonzero(data: bytes) -> int:
    """Index of the first non-zero byte of `data`, -1 when it is all zeros. (Comparing
    with `bytes(n)` is a calloc and a memcmp, ~40 us per MiB here; `lstrip` is 3 ms.)"""
    if data == bytes(len(data)):
        return -1
    for at in range(0, len(data), _STEP):
        part = data[at : at + _STEP]
        if part != bytes(len(part)):
            return at + len(part) - len(part.lstrip(b"\0"))
    return -1  # not reached


def _nonzero_end(data: bytes) -> int:
    """Index just past the last non-zero byte of `data`, 0 when it is all zeros."""
    if data == bytes(len(data)):
        return 0
    for at in reversed(range(0, len(data), _STEP)):
        part = data[at : at + _STEP]
        if part != bytes(len(part)):
            return at + len(part.rstrip(b"\0"))
    return 0  # not reached


class SegmentReader:
    """The records of one segment file in order, LSN continuity checked.

    `spans()` can be called again after it stopped (clean end or `TornRecord`): it goes
    on from the end of the last good record, which is how a follower reads a segment that
    the writer is still appending to.

    In a version 3 (preallocated) segment a zero-filled record header ends the records:
    with `verify_tail` (a scan: recovery, `ferry wal`) only if zeros go on to the end of
    the file, else it raises `TornRecord` there (what follows is a write that did not
    finish, or damage: `SegmentScan.data_end` says how far it reaches); without (a
    follower) it is the live end, checked no further.
    """

    def __init__(
        self, path: str, *, chunk_bytes: int = CHUNK_BYTES, verify_tail: bool = False
    ) -> None:
        self.path = path
        self._chunk = chunk_bytes
        self._verify_tail = verify_tail
        self._file = open(path, "rb")  # noqa: SIM115 (closed by close() / __exit__)
        try:
            self.header: SegmentHeader = read_header(self._file, path)
        except BaseException:
            self._file.close()
            raise
        # The last good record read (or a stand-in ending at the header): one store per
        # record instead of three counters; `end`/`next_lsn`/`records` derive from it.
        self._last = RecordSpan(0, self.header.size, self.header.first_lsn - 1, 0, _EMPTY)
        self._zero_tail = self.header.version >= PREALLOC_VERSION

    @property
    def end(self) -> int:
        """End of the last good record: where reading goes on, or a truncation would cut."""
        return self._last.end

    @property
    def next_lsn(self) -> int:
        return self._last.lsn + 1

    @property
    def records(self) -> int:
        return self._last.lsn + 1 - self.header.first_lsn

    def spans(self) -> Iterator[RecordSpan]:
        """Good records from `end` on. Offsets in spans and errors are file offsets."""
        f, path, chunk, decode = self._file, self.path, self._chunk, decode_record
        base = self._last.end
        expected = self._last.lsn + 1
        f.seek(base)
        first = min(chunk, FIRST_READ_BYTES)
        buf = f.read(first)
        at_eof = len(buf) < first
        while True:
            view = memoryview(buf)
            pos, n = 0, len(buf)
            while pos < n:
                try:
                    span = decode(view, pos, base)
                except TornRecord as exc:
                    if exc.needs_more and not at_eof:
                        break
                    if (
                        self._zero_tail
                        and _first_nonzero(bytes(view[pos : pos + RECORD_HEADER_SIZE])) < 0
                    ):
                        if self._verify_tail:
                            self._check_zeros(base + pos)
                        return  # zeros start at a record boundary: the end of the log
                    raise exc.at(path, base) from None
                except RecordError as exc:
                    raise exc.at(path, base) from None
                if span.lsn != expected:
                    raise LsnGap(f"found LSN {span.lsn}", span.offset, path, expected)
                expected += 1
                pos = span.end - base
                self._last = span
                yield span
            if at_eof:
                return
            rest = bytes(view[pos:])
            base += pos
            more = f.read(chunk)
            at_eof = len(more) < chunk
            buf = rest + more

    def _check_zeros(self, offset: int) -> None:
        """Raise `TornRecord` at `offset` unless the file holds only zeros from there."""
        f = self._file
        f.seek(offset)
        at = offset
        while chunk := f.read(self._chunk):
            found = _first_nonzero(chunk)
            if found >= 0:
                raise TornRecord(
                    f"zero-filled record header, but non-zero bytes again at offset {at + found}",
                    offset,
                    self.path,
                    self._last.lsn + 1,
                )
            at += len(chunk)

    def data_end(self, offset: int) -> int:
        """File offset just past the last non-zero byte at or after `offset` (`offset`
        itself when all is zeros from there), rounded up to the record alignment: the
        zero padding of a last record is its data too."""
        f = self._file
        f.seek(offset)
        end, at = offset, offset
        while chunk := f.read(self._chunk):
            found = _nonzero_end(chunk)
            if found:
                end = at + found
            at += len(chunk)
        return min(at, end + (-end % ALIGN))

    def unread(self, span: RecordSpan) -> None:
        """Give back the last span `spans()` yielded: the next call yields it again."""
        self._last = RecordSpan(0, span.offset, span.lsn - 1, 0, _EMPTY)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(slots=True)
class SegmentScan:
    """What a full read of one segment found."""

    path: str
    size: int  # file size (a preallocated segment's includes its zero tail)
    header: SegmentHeader | None = None
    # End of the data: `end` for a clean segment; for a damaged one the end of the file,
    # or in a preallocated segment the end of its last non-zero byte (where the damage
    # reaches: a torn write's zeros are not data)
    data_end: int = 0
    end: int = 0  # end of the last good record: where a truncation would cut
    records: int = 0
    first_lsn: int = 0
    last_lsn: int = 0  # first_lsn - 1 when the segment holds no record
    error: RecordError | SegmentError | None = None  # None: a clean end

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(slots=True)
class DirScan:
    segments: list[SegmentScan] = field(default_factory=list)

    @property
    def first_damage(self) -> int | None:
        """Index of the first segment with an error, or None when all are clean."""
        for i, scan in enumerate(self.segments):
            if scan.error is not None:
                return i
        return None


Visitor = Callable[[int, RecordSpan], None]  # (segment index, span); may raise RecordError


def scan_segment(path: str, index: int = 0, visit: Visitor | None = None) -> SegmentScan:
    """Read one segment to its end; damage is reported in `.error`, not raised."""
    size = os.path.getsize(path)
    scan = SegmentScan(path, size, data_end=size)
    try:
        reader = SegmentReader(path, verify_tail=True)
    except SegmentError as exc:
        scan.error = exc
        return scan
    with reader:
        scan.header = reader.header
        scan.first_lsn = reader.header.first_lsn
        try:
            for span in reader.spans():
                if visit is not None:
                    try:
                        visit(index, span)
                    except RecordError as exc:
                        exc.offset, exc.path, exc.lsn = span.offset, path, span.lsn
                        reader.unread(span)
                        raise
        except RecordError as exc:
            scan.error = exc
            if reader.header.version >= PREALLOC_VERSION:
                scan.data_end = reader.data_end(max(exc.offset, reader.end))
        else:
            scan.data_end = reader.end
        scan.end = reader.end
        scan.records = reader.records
        scan.last_lsn = reader.next_lsn - 1
    return scan


def scan_dir(wal_dir: str, visit: Visitor | None = None, *, stop_at_error: bool = True) -> DirScan:
    """Scan every segment in LSN order, checking that each begins where the last ended and
    that all belong to one node. With `stop_at_error`, nothing after the first damage is read.
    """
    result = DirScan()
    previous: SegmentScan | None = None
    for index, (_, path) in enumerate(list_segments(wal_dir)):
        scan = scan_segment(path, index, visit)
        header = scan.header
        if header is not None and previous is not None and previous.header is not None:
            if header.node_id != previous.header.node_id:
                scan.error = BadSegmentHeader(
                    path,
                    f"node id {header.node_id!r}, the previous segment's is "
                    f"{previous.header.node_id!r}",
                )
            elif previous.error is None and header.first_lsn != previous.last_lsn + 1:
                scan.error = LsnGap(
                    f"segment starts at LSN {header.first_lsn}, the previous one ends at "
                    f"{previous.last_lsn}",
                    0,
                    path,
                    previous.last_lsn + 1,
                )
        result.segments.append(scan)
        if scan.error is not None and stop_at_error:
            break
        previous = scan
    return result


class Record(NamedTuple):
    """One record for the replayer: decoded body plus the payload bytes as stored."""

    lsn: int
    type: int
    body: MessagePayload | ConnectionEvent
    payload: bytes


class LogFollower:
    """Reads the log forward across calls, remembering where it stopped, so that a
    replayer pays for each record once (no rescan of the segment on every batch).

    Safe while a writer appends: pass the writer's durable LSN (`WalLog.durable_lsn`) as
    `to_lsn` and nothing that is not yet durable is returned. Without `to_lsn`, reading
    stops at the live end (a clean end, or a torn record in the newest segment): right for
    an offline directory, but a live writer's not-yet-synced records would be returned.
    """

    def __init__(self, wal_dir: str, from_lsn: int = 1) -> None:
        self.wal_dir = wal_dir
        self.next_lsn = from_lsn  # the next record records() will return
        self._reader: SegmentReader | None = None

    def records(self, to_lsn: int | None = None, limit: int | None = None) -> Iterator[Record]:
        """Records from `next_lsn` on, in LSN order: up to `to_lsn`, at most `limit`.

        Raises `LsnNotAvailable` when `next_lsn` was deleted by retention or `to_lsn` is
        not in the log, and the reader's errors (`TornRecord`, `CorruptRecord`, ...) for
        damage before `to_lsn`.
        """
        count = 0
        if (to_lsn is not None and to_lsn < self.next_lsn) or limit == 0:
            return
        if self._reader is None and not self._open():
            if to_lsn is not None:
                raise LsnNotAvailable(f"{self.wal_dir} holds no segment")
            return
        retried = False
        while True:
            reader = self._reader
            assert reader is not None
            torn: TornRecord | None = None
            try:
                for span in reader.spans():
                    lsn = span.lsn
                    if lsn < self.next_lsn:
                        continue  # seeking into the first segment
                    if to_lsn is not None and lsn > to_lsn:
                        reader.unread(span)
                        return
                    try:
                        body = decode_payload(span.type, span.payload)
                    except RecordError as exc:
                        reader.unread(span)
                        exc.offset, exc.path, exc.lsn = span.offset, reader.path, lsn
                        raise
                    self.next_lsn = lsn + 1
                    yield Record(lsn, span.type, body, bytes(span.payload))
                    count += 1
                    if lsn == to_lsn or count == limit:
                        return
            except TornRecord as exc:
                torn = exc
            later = [seg for seg in list_segments(self.wal_dir) if seg[0] > reader.header.first_lsn]
            if not later:
                if to_lsn is None:
                    return  # the live end
                if torn is not None:
                    raise torn
                raise LsnNotAvailable(
                    f"LSN {to_lsn} is not in {self.wal_dir}: the log ends at {reader.next_lsn - 1}"
                )
            first, path = later[0]
            if torn is None and first == reader.next_lsn:
                reader.close()
                self._reader = SegmentReader(path)
                retried = False
                continue
            if retried:
                # Read twice, after the next segment appeared: no race with the writer.
                if torn is not None:
                    raise torn
                raise LsnGap(
                    f"segment {os.path.basename(path)} starts at LSN {first}",
                    reader.end,
                    reader.path,
                    reader.next_lsn,
                )
            retried = True  # the writer may have finished this segment after we read it

    def _open(self) -> bool:
        segments = list_segments(self.wal_dir)
        if not segments:
            return False
        firsts = [first for first, _ in segments]
        if self.next_lsn < firsts[0]:
            raise LsnNotAvailable(
                f"LSN {self.next_lsn} is no longer in {self.wal_dir}: the oldest segment "
                f"begins at {firsts[0]}"
            )
        index = bisect.bisect_right(firsts, self.next_lsn) - 1
        self._reader = SegmentReader(segments[index][1])
        return True

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def iter_records(wal_dir: str, from_lsn: int = 1, to_lsn: int | None = None) -> Iterator[Record]:
    """Records with from_lsn <= lsn (<= to_lsn), in LSN order, across segments.

    A one-shot `LogFollower` (see there for reading beside a live writer); a replayer that
    reads batch after batch should keep one `LogFollower` instead.
    """
    with LogFollower(wal_dir, from_lsn) as follower:
        yield from follower.records(to_lsn)
