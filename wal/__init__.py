"""ferry's write-ahead log: every published message is here, synced, before it is acked.

Package map: `record` (framing + CRC, pure), `segment` (files, header, rotation, lock),
`writer` (group commit), `reader` (iterate, classify damage), `recovery` (startup scan),
`repair` (back up, truncate, fsync), `log` (`WalLog`, the `core.log.DurableLog`),
`metrics` (Prometheus), `tool` (`ferry wal ...`), `errors` (the error tree).

Directory
---------
A WAL is one directory, written by one process at a time (`writer.lock`, flock'ed):

    00000000000000000001.wal     segments, named by the LSN of their first record
    00000000000000048213.wal     (20 digits, so names sort in LSN order)
    00000000000000048213.wal.tmp a rotation that did not finish: removed at startup
    00000000000000000001.wal.broken  what recovery or repair cut away: never read again
    writer.lock

A segment is rotated once the next batch would take it past `wal_segment_bytes`
(64 MiB by default), so a segment only exceeds it when a single batch does.

Segment header (`segment.py`; little endian)
--------------------------------------------
    magic "FERRYWAL" | u16 version (1) | u16 node id length | u32 heads length
    | u64 first LSN | 64-byte node id | u32 CRC | 4 zero bytes         (96 bytes)
    | heads: msgpack {channel: last seq as of first LSN - 1} | zeros to 8 bytes

The CRC (zlib.crc32) covers the first 88 bytes and the heads. The heads snapshot is what
lets retention delete old segments without losing per-channel seqs: the newest seq of a
channel that has been silent since a deleted segment is still in the oldest header.

Record (`record.py`), starting at the end of the header, each 8-byte aligned
-----------------------------------------------------------------------------
    u32 length | u32 crc | u64 lsn | u8 type | payload (length bytes) | 0-7 zero bytes

`crc` = zlib.crc32 over lsn, type and payload (bytes 8..17+length: one contiguous
slice). `length` is the payload's; a length of 0 or over 4 MiB is corruption. Padding is
written as zeros and not checked. LSNs are node-wide, start at 1 and have no gaps, across
segments too. Payloads are msgpack arrays:

    type 1 MESSAGE: [channel, channel seq, ts_ms, sender, client msg id | nil,
                     encoding (0 JSON, 1 msgpack), data (bin: the published bytes)]
    type 2 EVENT:   [kind, user, remote address, close code | nil, duration_ms | nil, ts_ms,
                     connection id]

New payload fields may only be appended, with defaults.

Writing and what "durable" means (`writer.py`)
---------------------------------------------
`append` frames the record on the event loop and gives it the next LSN. Records that
arrive while one batch is being written and fdatasync'ed form the next batch: one
`write` + one `fdatasync` per batch, in a dedicated thread, one batch in flight. Only
then does `on_durable(entries)` run (on the loop, per batch, in LSN order), and only
then may the relay ack or fan out. `wal_sync=write` skips the fdatasync: a batch is
"durable" once in the page cache, which survives a crash of ferry but NOT a power loss
or kernel crash (sealed segments are still synced at rotation, and the active one at a
clean close). `wal_max_batch_delay_ms` lets a batch wait that long to grow (default 0).
A batch is at most `max_batch_bytes` (4 MiB) plus one record.

Failure: the first write, fdatasync or segment-creation error (EIO, ENOSPC, ...) makes
the log unwritable for good. The failed batch and everything pending go to `on_failed`,
`failure` says why, every later append raises `core.log.LogUnavailable`, and nothing is
retried: after a failed fsync the kernel may have dropped the dirty pages, so a later
"successful" fsync would prove nothing. A restart (after the disk is fixed) recovers.
A failed record was never acknowledged, but its write may still have reached the disk and
be found after the restart (like a commit whose outcome is unknown): failure means "not
acked", not "certainly absent".

Recovery (`recovery.py`, at `WalLog.open`)
------------------------------------------
Leftover `.tmp` segments are removed. Every segment is read in LSN order: header (magic,
version, CRC, first LSN = name, one node id), then each record (length bounds, CRC, LSN
continuity within and across segments, decodable payload). The first damage decides:

* in the newest segment, within `tail_window` bytes of its end (`max_batch_bytes` plus
  one record: as far back as the one batch that may have been in flight at a crash can
  reach): a torn tail. The file is copied to `<name>.broken`, truncated to the end of
  the last good record and fdatasync'ed; the log line says how many bytes were dropped.
  Only records that were never acked can be in that stretch (wal_sync=fsync).
* anywhere else (an older segment, a bad header, further back in the newest segment):
  refuse to start with `CorruptLog` naming the file and offset. No torn write can explain
  it, so truncating there would silently drop acked messages. `ferry wal repair DIR` is
  the operator's explicit way out.

With wal_sync=write several batches may be unsynced at a power loss, so damage can reach
further back than the window: startup then refuses and `ferry wal repair` cuts it.
An empty newest segment (header only: a crash right after a rotation) is fine. The scan
rebuilds the next LSN, each channel's last seq (`heads`, from the oldest header's
snapshot plus all records) and each channel's last `history_size` messages.

Retention (`WalLog.set_checkpoint`)
-----------------------------------
The replayer reports its committed checkpoint. The oldest segments are deleted while:
the segment is not the active one, its last LSN <= the checkpoint (the database has all
of it), and no channel's last `history_size` messages are in it (so the history rings
are rebuilt exactly after a restart). That last rule is a bound, not a promise: once the
WAL is larger than `history_max_bytes` (1 GiB), history alone keeps no segment, and a
channel whose newest messages were deleted comes back with its head (from the heads
snapshot) but a shorter history, so a `since` reaching further answers
`recovered: false`. The checkpoint rule is never relaxed.

Reading while the writer appends (`reader.LogFollower`, `reader.iter_records`)
-----------------------------------------------------------------------------
Segments are only appended to, created by rename, and deleted whole, so a reader can run
beside the writer. Pass `WalLog.durable_lsn` as `to_lsn`: nothing beyond it is returned,
so nothing that could still be lost is replayed to the database. A `LogFollower` keeps
its place between calls, so a replayer reads each record once. A reader in another
process has no durable LSN to stop at: it sees what was written, which after a power
loss (not a crash of ferry alone) may be more than what was synced. `WalLog.
add_durable_listener` hands the in-process replayer each durable batch's bytes as well.
"""

from __future__ import annotations

from wal.errors import (
    BadLength,
    BadPayload,
    BadSegmentHeader,
    ChecksumMismatch,
    CorruptLog,
    CorruptRecord,
    LsnGap,
    LsnNotAvailable,
    NodeIdMismatch,
    RecordError,
    RecordTooLarge,
    SegmentError,
    TornRecord,
    WalError,
    WalLocked,
)
from wal.log import WalLog
from wal.reader import LogFollower, Record, iter_records
from wal.record import ConnectionEvent, MessagePayload
from wal.writer import Batch

__all__ = [
    "BadLength",
    "BadPayload",
    "BadSegmentHeader",
    "Batch",
    "ChecksumMismatch",
    "ConnectionEvent",
    "CorruptLog",
    "CorruptRecord",
    "LogFollower",
    "LsnGap",
    "LsnNotAvailable",
    "MessagePayload",
    "NodeIdMismatch",
    "Record",
    "RecordError",
    "RecordTooLarge",
    "SegmentError",
    "TornRecord",
    "WalError",
    "WalLocked",
    "WalLog",
    "iter_records",
]
