"""ferry's write-ahead log: every published message is here, synced, before it is acked.

Package map: `record` (framing + CRC, pure), `segment` (files, header, rotation, lock),
`writer` (group commit), `pipeline` (the next segment's file, made ahead), `heads` (the
heads store), `reader` (iterate, classify damage),
`recovery` (startup scan), `repair` (back up, truncate, fsync), `log` (`WalLog`, the
`common.durability.DurableLog`), `metrics` (Prometheus), `tool` (`ferry wal ...`), `errors` (the
error tree).

Directory
---------
A WAL is one directory, written by one process at a time (`writer.lock`, flock'ed):

    00000000000000000001.wal     segments, named by the LSN of their first record
    00000000000000048213.wal     (20 digits, so names sort in LSN order)
    00000000000000048213.wal.tmp a rotation that did not finish: removed at startup
    prealloc-<pid>-<n>.wal.tmp   the next segment's file, preallocated (`pipeline`): renamed
                                 into place at a rotation; an unused one is removed at close
                                 and at startup
    00000000000000000001.wal.broken  what recovery or repair cut away: never read again
    heads.db                     the heads store (SQLite; with heads.db-wal, heads.db-shm)
    writer.lock

A segment is rotated once the next batch would take it past `wal_segment_bytes`
(64 MiB by default), so a segment only exceeds it when a single batch does.

Preallocation (`wal_preallocate`, default `fallocate`): a segment file is made
`wal_segment_bytes` long before any record goes in (posix_fallocate, or with `zero` zeros
written), so that an fdatasync after a write commits no block allocation and no new file
size (measured here: p50 0.08-0.13 ms against 0.12-0.18 ms appending, `bench/micro/
test_fsync_micro.py`, docs/benchmarks.md). Records are written with pwrite at the end of the last one, into
the zeros. The next segment's file is made ahead by the pipeline thread, off the ack
path; a rotation renames it into place (`pipeline`, `writer`). Such a file is a version
3 segment; with `off` segments are version 2, byte for byte what builds before
preallocation wrote.

Segment header (`segment.py`; little endian)
--------------------------------------------
    magic "FERRYWAL" | u16 version | u16 node id length | u32 heads length
    | u64 first LSN | 64-byte node id | u32 CRC | 4 zero bytes         (96 bytes)
    [version 1 only: | heads: msgpack {channel: last seq as of first LSN - 1}
                     | zeros to 8 bytes]

This build writes version 2, or 3 for a preallocated segment: heads length 0, the header
is always exactly 96 bytes whatever the number of channels (a version 2 or 3 header with a
non-zero heads length is a bad header). Version 3 differs from 2 only in what may follow
the last record: zeros to the end of the file (the preallocated space). A build that
knows only versions 1 and 2 refuses a version 3 segment by its version, rather than
taking its zeros for damage. It reads version 1 too, what builds before the heads store wrote: every header
held the head of every channel ever written, which grew without bound. A version 1
snapshot is checksummed and counted, and decoded only for the migration (below). The CRC
(zlib.crc32) covers the first 88 bytes and, in version 1, the heads. A build that only
knows version 1 refuses a directory with version 2 segments (it would not know heads.db
and restart channels at seq 1), rather than running on it.

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

A record that fails its CRC is torn (a write the crash cut short) when a 512-byte sector
that begins inside it, counted from file offset 0 as the disk writes them, is all zeros
(the sector may run past the record's end: a record cut short by a preallocated file's
zeros): that is what an unwritten sector reads back as (etcd's wal decoder does the same,
`isTornEntry`). Otherwise it is corrupt, even if its payload holds 512 zeros elsewhere.
A zero-filled header is torn too; so is data that ends inside a record.

The end of the log in a segment: where the file ends at a record boundary, or, in a
version 3 segment, where a zero-filled record header starts a stretch of zeros that goes
on to the end of the file (the preallocated space no write reached). A zero-filled header
followed by anything non-zero is not an end: it is a torn write (the in-flight batch's
first sectors never reached the disk, later ones did) or damage, judged as below. A
follower beside the writer takes the first zero header as the live end and does not read
on (the writer goes on there).

Heads store (`heads.py`): heads.db
----------------------------------
Each channel's last durable seq, outside the segments. Stdlib sqlite3, journal_mode=WAL,
synchronous=FULL (a commit is fsync'ed before it returns), `WITHOUT ROWID` tables:

    heads(channel TEXT PRIMARY KEY, seq INTEGER NOT NULL, lsn INTEGER NOT NULL)
    meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL): 'version' = 1, 'as_of' = X

It is complete up to `as_of` = X: every channel with a MESSAGE record at an LSN <= X has
a row with the seq and LSN of its last such record (lsn 0: taken from a version 1 header,
the record's LSN unknown). Rows and `as_of` change in one transaction. A row's seq never
goes down. It only ever holds durable information: when a batch is durable the writer
stores each of its MESSAGE entries (seq, lsn) in a dirty dict, on the loop; the
dirty heads are upserted, with as_of = the last durable LSN, in a thread of their own
(never the fdatasync thread), one flush at a time: when a segment rotates, when 50,000
channels are dirty, and at close. `WalLog.head_of(channel)` reads the dirty heads, then
those being flushed, then heads.db (a point lookup on a second, read-only connection):
~5 us from the page cache, hit or miss. An error writing heads.db makes the log
unwritable, as a write error does.


---------------------------------------------
`append` frames the record on the event loop and gives it the next LSN. Records that
arrive while one batch is being written and fdatasync'ed form the next batch: one
`write` + one `fdatasync` per batch, in a dedicated thread, with one more batch queued
behind it (the thread goes from one sync straight to the next write; it writes a batch
only once the one before it is synced, so one batch at most is written and unsynced). Only
then does `on_durable(entries)` run (on the loop, per batch, in LSN order), and only
then may the relay ack or fan out. `wal_sync=write` skips the fdatasync: a batch is
"durable" once in the page cache, which survives a crash of ferry but NOT a power loss
or kernel crash (sealed segments are still synced at rotation, and the active one at a
clean close). `wal_max_batch_delay_ms` lets a batch wait that long to grow (default 0).
A batch is at most `max_batch_bytes` (4 MiB) plus one record.

Failure: the first write, fdatasync or segment-creation error (EIO, ENOSPC, ...) makes
the log unwritable for good, and so does any exception in the writer's loop side
(preparing or rotating a batch, its completion's bookkeeping) or a heads.db flush error.
The failed batch and everything pending go to `on_failed`, each entry once, `failure`
says why, `writable` is False (/readyz 503, `ferry_wal_writable` 0,
`ferry_wal_write_errors` counts it), every later append raises
`common.durability.LogUnavailable`, and nothing is retried: after a failed fsync the kernel may have dropped the dirty pages, so a later
"successful" fsync would prove nothing. A restart (after the disk is fixed) recovers.
A failed record was never acknowledged, but its write may still have reached the disk and
be found after the restart (like a commit whose outcome is unknown): failure means "not
acked", not "certainly absent".

Preallocation failing (ENOSPC, EFBIG, a file system without fallocate; with less than
twice the segment size free the pipeline does not try, since a failing fallocate holds the
free space while it tries) is not a write error: it is logged and counted (`stats()` preallocation_failures), the log goes on in
the current segment, and a rotation that finds no file ready creates a version 2 segment
inline as before (so does the first segment of a new directory). Only when the disk
cannot take the records themselves does the log turn unwritable, as above.

Recovery (`recovery.py`, at `WalLog.open`)
------------------------------------------
Leftover `.tmp` segments are removed, heads.db is opened (created, as_of 0, if missing;
unreadable: refuse with `CorruptLog`). Every segment is read in LSN order: header (magic,
version, CRC, first LSN = name, one node id), then each record (length bounds, CRC, LSN
continuity within and across segments, decodable payload). The first damage decides:

* in the newest segment, within `tail_window` bytes of the end of its data (`max_batch_
  bytes` plus one record: as far back as the one batch that may have been written and
  unsynced at a crash can reach; the end of the data is the end of the file, or in a version 3 segment
  the end of its last non-zero byte, since zeros are what no write reached): a torn
  tail. The file is copied to `<name>.broken` (up to the end of its data), truncated to
  the end of the last good record and fdatasync'ed; the log line says how many bytes
  were dropped. Only records that were never acked can be in that stretch
  (wal_sync=fsync). Cutting (rather than stopping at the first zero header) matters in
  a preallocated file: what a torn batch left after the zeros would otherwise stay in
  the file, and new records written over the spot could later be read on into it.
* anywhere else (an older segment, a bad header, further back in the newest segment):
  refuse to start with `CorruptLog` naming the file and offset. No torn write can explain
  it, so truncating there would silently drop acked messages. `ferry wal repair DIR` is
  the operator's explicit way out.

With wal_sync=write several batches may be unsynced at a power loss, so damage can reach
further back than the window: startup then refuses and `ferry wal repair` cuts it.
An empty newest segment (header only, or header and zeros: a crash right after a
rotation or a start) is fine. Checking that a zero tail is zeros to the end means
reading it once per start: ~10 ms for a 64 MiB segment from the page cache here, ~140 ms
cold (unwritten extents read back as zeros without touching the disk).

Sizes: the WAL's size (`ferry_wal_size_bytes`, `$sys.stats` wal.bytes, what retention
counts, `ferry wal inspect`'s bytes) is the bytes of data, header and records, not the
preallocated files' size (`inspect --json` gives that as `file_bytes`).

Heads: heads.db (as_of X) updated with every record after X; those heads are the
initial dirty set (stored to heads.db during the scan whenever 50,000 are dirty, so they
stay bounded). The oldest segment begins at F. F - 1 > X is refused (`CorruptLog`: the
heads of LSN X+1..F-1 are gone and those channels would restart at seq 1; `ferry wal
repair` accepts the loss) unless that segment is version 1: the migration. A directory
written before heads.db (no heads.db, heads in the oldest header) opens by storing the
oldest header's snapshot in heads.db with as_of F - 1, then the records as above: every
channel keeps its head. If X is past the end of the log (a repair cut records heads.db had
seen, or a power loss with wal_sync=write), stored heads win: those channels continue
after a gap, never reusing a seq, and as_of is set back to the end of the log.
`ferry wal repair` leaves such a store alone (and says how many channels it concerns);
it sets an unreadable heads.db aside (`heads.db.broken`, with its -wal and -shm) and moves
a store that is behind up to F - 1, both of which accept, and say, that channels whose
last message was only in a deleted segment restart at seq 1. `ferry wal inspect` and
`verify` show the store's as_of and channel count; `verify` flags what startup refuses.

The returned `RecoveredState` is bounded by the `HistoryLimits` given to `open`, during
the scan too (nothing is built and trimmed later): at most `max_channels` channels, the
most recently written among those with records in the log (the least recently written
evicted as the scan goes; the others are still answered by `head_of`); each ring at most
`size` messages and `channel_bytes` (`common.durability.entry_bytes`), all rings at most
`total_bytes`, the globally oldest entries dropped first; every ring has consecutive
seqs ending at its channel's head (a ring that cannot is dropped); `heads` has exactly
the channels returned, `history` those with a ring.

Retention (`WalLog.set_checkpoint`, `set_history_floor`)
-------------------------------------------------------
The replayer reports its committed checkpoint; the router reports the history floor, the
oldest LSN any in-memory ring holds (0: none; until it does, the oldest LSN of the
recovered rings, or the first new LSN if there are none and history is on). The oldest
segments are deleted while: the segment is not the active one, its last LSN <= the
checkpoint (the database has all of it), its last LSN <= heads.db's as_of (no head is
lost), and its last LSN < the history floor (so the rings are rebuilt as they were after
a restart). That last rule is a bound, not a promise: once the WAL is larger than
`history_max_bytes` (1 GiB), history alone keeps no segment, and a channel whose newest
messages were deleted comes back with its head (from heads.db) but a shorter history, so
a `since` reaching further answers `recovered: false`. The checkpoint and heads rules
are never relaxed.

Reading while the writer appends (`reader.LogFollower`, `reader.iter_records`)
-----------------------------------------------------------------------------
Segments are only written at the end of their last record (into zeros, in a preallocated
one), created by rename, and deleted whole, so a reader can run beside the writer. Pass `WalLog.durable_lsn` as `to_lsn`: nothing beyond it is returned,
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
from wal.writer import CommitBatch

__all__ = [
    "BadLength",
    "BadPayload",
    "BadSegmentHeader",
    "ChecksumMismatch",
    "CommitBatch",
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
