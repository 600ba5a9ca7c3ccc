"""The WAL's error tree. Every error the package raises on purpose is one of these.

    WalError
     ├── SegmentError ............ a segment file is unusable as a whole
     │    └── BadSegmentHeader ... bad magic, version, header CRC, name/first-LSN or node id
     ├── RecordError ............. one record cannot be read; has `path` and `offset`
     │    ├── TornRecord ......... the data ends inside the record: an unfinished write
     │    └── CorruptRecord ...... the bytes are all there but wrong
     │         ├── ChecksumMismatch  CRC over lsn, type and payload does not match
     │         ├── BadLength ....... zero or larger than any record may be
     │         ├── LsnGap .......... CRC fine, but not the LSN that must come next
     │         └── BadPayload ...... CRC fine, unknown type or undecodable payload
     ├── CorruptLog .............. startup refuses: damage where no torn write can be;
     │                             names file and offset, `ferry wal repair` is the way out
     ├── LsnNotAvailable ......... a reader asked for LSNs the directory does not hold
     ├── WalLocked ............... another process writes this directory (`writer.lock`)
     ├── ReplayLocked ............ another replayer replays it (`replay.lock`)
     ├── NodeIdMismatch .......... the directory was written by another node id
     ├── HeadsStoreError ......... heads.db cannot be opened, read or written
     ├── SinkError ............... the database could not take a batch (`wal.sinks`)
     ├── HistoryUnavailable ...... deep history could not be read (`wal.history`)
     └── RecordTooLarge .......... (also common.errors.RecordRefused) a payload over the
                                  format's limit

`RecordTooLarge` is also the durability seam's `common.errors.RecordRefused`: the relay's
router (`core/router.py`, `Router.publish`) catches that from `DurableLog.append` as "the
log refuses this record" and answers `too_large` without using up a seq.

`common.errors.LogUnavailable` is not in this tree: it belongs to the durability seam and
means "appends are refused" (closed, or a write/fsync error made the log unwritable).

A clean end is not an error: iteration simply stops at a record boundary at EOF.
`TornRecord` vs `CorruptRecord` is what lets a follower tell "the writer is not done
yet" (torn at the live end) from damage; at startup both are judged by *where* they are
(see the package docstring, "Recovery").
"""

from __future__ import annotations

from common.errors import FerryError, RecordRefused


class WalError(FerryError):
    """Base of every error raised on purpose by the wal package."""


class SegmentError(WalError):
    """A segment file is unusable as a whole."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.offset = 0
        self.reason = reason


class BadSegmentHeader(SegmentError):
    """Magic, version, header CRC, first LSN or node id is wrong."""


class RecordError(WalError):
    """One record cannot be read. `offset` is the record's first byte in the file."""

    kind = "bad record"

    def __init__(self, reason: str, offset: int, path: str = "", lsn: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset
        self.path = path
        self.lsn = lsn  # the LSN the record should have had (0: unknown)

    def at(self, path: str, base: int = 0) -> RecordError:
        """Name the file and shift a buffer offset to a file offset; returns self."""
        self.path = path
        self.offset += base
        return self

    def __str__(self) -> str:
        where = f"{self.path} at offset {self.offset}" if self.path else f"offset {self.offset}"
        lsn = f" (expected LSN {self.lsn})" if self.lsn else ""
        return f"{self.kind} in {where}{lsn}: {self.reason}"


class TornRecord(RecordError):
    """The data ends inside the record (or is zero-filled): a write that did not finish.

    `needs_more` is True when more bytes could complete it (the data just ends), False for
    a zero-filled record that no amount of reading on will fix.
    """

    kind = "torn record"

    def __init__(
        self, reason: str, offset: int, path: str = "", lsn: int = 0, *, needs_more: bool = False
    ) -> None:
        super().__init__(reason, offset, path, lsn)
        self.needs_more = needs_more


class CorruptRecord(RecordError):
    """The bytes of a record are present but wrong."""

    kind = "corrupt record"


class ChecksumMismatch(CorruptRecord):
    kind = "checksum mismatch"


class BadLength(CorruptRecord):
    kind = "impossible length"


class LsnGap(CorruptRecord):
    kind = "LSN gap"


class BadPayload(CorruptRecord):
    kind = "bad payload"


class CorruptLog(WalError):
    """Startup refuses: the log is damaged where a torn write cannot explain it."""

    def __init__(self, message: str, path: str, offset: int) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class LsnNotAvailable(WalError):
    """The requested LSNs are not in the directory (deleted by retention, or not written)."""


class WalLocked(WalError):
    """Another process holds the directory's writer lock."""


class ReplayLocked(WalError):
    """Another replayer holds the directory's replay lock."""


class NodeIdMismatch(WalError):
    """The directory's segments carry another node id than the one configured."""


class HeadsStoreError(WalError):
    """heads.db cannot be opened, read or written (SQLite's error, with the path)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class SinkError(WalError):
    """The database could not take the batch; the text is for logs and the dashboard."""


class HistoryUnavailable(WalError):
    """Deep history could not read the database (down, no answer in time)."""


class RecordTooLarge(WalError, RecordRefused):
    """A record's payload is larger than `record.MAX_PAYLOAD_BYTES`: the caller's fault."""
