"""Startup recovery: read the whole log once, cut a torn tail, bring the heads store up to
date and rebuild the relay's state within its `HistoryLimits`.

Blocking file I/O; `WalLog.open` runs it in a thread. See the package docstring
("Recovery") for which damage is cut and which refuses the start.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, field
from typing import cast

from common.durability import ENTRY_OVERHEAD_BYTES, Entry, HistoryLimits, RecoveredState
from wal.errors import CorruptLog, HeadsStoreError, NodeIdMismatch, RecordError, SegmentError
from wal.heads import (
    FLUSH_CHANNELS,
    Head,
    HeadsStore,
    StoredHead,
    heads_behind,
)
from wal.pipeline import is_pipeline_file
from wal.reader import DirScan, SegmentScan, scan_dir
from wal.record import (
    MAX_PAYLOAD_BYTES,
    MESSAGE,
    MessagePayload,
    RecordSpan,
    decode_payload,
    framed_size,
)
from wal.repair import Truncation, remove_leftovers, truncate_segment
from wal.segment import (
    PREALLOC_VERSION,
    VERSION,
    SegmentHeader,
    create_segment,
    encode_header,
    fsync_dir,
    list_segments,
    load_header,
    segment_name,
)

log = logging.getLogger("ferry.wal")

DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024


def tail_window(max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> int:
    """How far back from the end of the newest segment a torn write can reach: the one
    batch that may have been in flight, which can overshoot the cap by one record."""
    return max_batch_bytes + framed_size(MAX_PAYLOAD_BYTES)


def is_torn_tail(scan: SegmentScan, newest: bool, window: int) -> bool:
    """Whether the damage `scan` found is a torn tail that startup truncates by itself.

    Measured to the end of the data, not of the file: a preallocated segment goes on with
    zeros that no write reached (`SegmentScan.data_end`)."""
    error = scan.error
    return (
        newest
        and isinstance(error, RecordError)
        and scan.header is not None
        and error.offset >= scan.header.size
        and scan.data_end - error.offset <= window
    )


@dataclass(slots=True)
class SegmentMeta:
    """What the log keeps in memory about one of its segments."""

    first_lsn: int
    path: str
    size: int
    last_lsn: int = 0  # for sealed segments; the active one grows
    # when it was last written (wall clock; the file's mtime after a restart): retention
    # keeps what was written within the dedupe window, whose mids recovery reads back
    written_at: float = 0.0


@dataclass(slots=True)
class Recovery:
    state: RecoveredState
    segments: list[SegmentMeta]  # oldest first; the last one is the active segment
    active_header: SegmentHeader
    store: HeadsStore  # open; as_of is where `dirty` starts
    dirty: dict[str, Head]  # heads of the records after store.as_of: the initial dirty set
    truncation: Truncation | None = None
    removed_tmp: list[str] = field(default_factory=list)
    records: int = 0
    seconds: float = 0.0
    history_floor: int = 0  # oldest LSN in the recovered rings (0: none)
    migrated: int = 0  # heads taken from a version 1 header snapshot into heads.db
    ahead: int = 0  # > 0: heads.db was complete up to this LSN, past the end of the log


class _Channel:
    """A channel recovery holds: its last seq and its ring of (lsn, message)."""

    __slots__ = ("bytes", "ring", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.bytes = 0  # entry_bytes() of the ring
        self.ring: collections.deque[tuple[int, MessagePayload]] = collections.deque()


class _Rebuild:
    """Builds the `RecoveredState` during the scan, within `HistoryLimits` all along:
    at most `max_channels` channels (least recently written evicted first), each ring
    within `size` and `channel_bytes`, all rings within `total_bytes` (the globally oldest
    entry dropped first, through `_order`: (lsn, channel) in LSN order, compacted when
    mostly stale). Heads of records after the store's as_of collect in `dirty`, flushed to
    the store every `flush_channels` channels so that they stay bounded too."""

    def __init__(self, limits: HistoryLimits, store: HeadsStore, flush_channels: int) -> None:
        self.size = limits.size
        self.channel_bytes = limits.channel_bytes
        self.total_bytes = limits.total_bytes
        self.max_channels = limits.max_channels
        self.store = store
        self.as_of = store.as_of
        self.flush_channels = max(1, flush_channels)
        self.dirty: dict[str, Head] = {}
        self.channels: collections.OrderedDict[str, _Channel] = collections.OrderedDict()
        self._order: collections.deque[tuple[int, _Channel]] = collections.deque()
        self.total = 0  # entry_bytes() over all rings
        self.live = 0  # entries in all rings
        # the newest publishes with a `mid` (RecoveredState.mids)
        self.mids: collections.deque[tuple[str, str, str, int, int]] = collections.deque(
            maxlen=max(0, limits.mids)
        )

    def message(self, lsn: int, msg: MessagePayload) -> None:
        name, seq = msg.channel, msg.seq
        if msg.mid is not None:
            self.mids.append((msg.sender, name, msg.mid, seq, msg.ts_ms))
        if lsn > self.as_of:
            dirty = self.dirty
            dirty[name] = StoredHead(seq, lsn)
            if len(dirty) >= self.flush_channels:
                self.store.write(dirty, lsn)  # complete up to lsn: the records scanned so far
                self.dirty = {}
                self.as_of = lsn
        if self.max_channels <= 0:
            return
        channels = self.channels
        ch = channels.get(name)
        if ch is None:
            ch = channels[name] = _Channel()
            if len(channels) > self.max_channels:
                _, old = channels.popitem(last=False)
                self._drop_ring(old)
        else:
            channels.move_to_end(name)
        if self.size > 0:
            ring = ch.ring
            if ch.seq and seq != ch.seq + 1 and ring:
                self._drop_ring(ch)  # not consecutive (a repair's gap): start over
            cost = len(msg.data) + ENTRY_OVERHEAD_BYTES  # = common.durability.entry_bytes(entry)
            ring.append((lsn, msg))
            ch.bytes += cost
            self.total += cost
            self.live += 1
            self._order.append((lsn, ch))
            while len(ring) > self.size or ch.bytes > self.channel_bytes:
                self._pop_oldest(ch)
            if self.total > self.total_bytes:
                self._trim_total()
            if len(self._order) > 2 * self.live + 1024:
                self._compact()
        ch.seq = seq

    def _pop_oldest(self, ch: _Channel) -> None:
        _, msg = ch.ring.popleft()
        cost = len(msg.data) + ENTRY_OVERHEAD_BYTES
        ch.bytes -= cost
        self.total -= cost
        self.live -= 1

    def _drop_ring(self, ch: _Channel) -> None:
        self.total -= ch.bytes
        self.live -= len(ch.ring)
        ch.bytes = 0
        ch.ring.clear()

    def _trim_total(self) -> None:
        order = self._order
        while self.total > self.total_bytes and order:
            lsn, ch = order.popleft()
            ring = ch.ring
            if ring and ring[0][0] == lsn:  # else stale: already dropped
                self._pop_oldest(ch)

    def _compact(self) -> None:
        live = [(lsn, ch) for ch in self.channels.values() for lsn, _ in ch.ring]
        live.sort(key=lambda item: item[0])
        self._order = collections.deque(live)

    def state(self, next_lsn: int, heads_ahead: dict[str, int]) -> tuple[RecoveredState, int]:
        """The recovered state, and the oldest LSN its rings hold (0: none).
        `heads_ahead`: stored seqs above the log's (the store is ahead of a cut log)."""
        heads: dict[str, int] = {}
        history: dict[str, list[Entry]] = {}
        floor = 0
        for name, ch in self.channels.items():
            head = max(ch.seq, heads_ahead.get(name, 0))
            heads[name] = head
            ring = ch.ring
            if ring and ring[-1][1].seq == head:
                history[name] = [msg.to_entry(lsn) for lsn, msg in ring]
                if not floor or ring[0][0] < floor:
                    floor = ring[0][0]
        state = RecoveredState(
            next_lsn=next_lsn, heads=heads, history=history, mids=list(self.mids)
        )
        return state, floor


def recover(
    wal_dir: str,
    node_id: str,
    limits: HistoryLimits,
    tail_window: int,
    *,
    flush_channels: int = FLUSH_CHANNELS,
    preallocate: str = "off",
    segment_bytes: int = 0,
) -> Recovery:
    """Scan `wal_dir`, repair a torn tail, bring heads.db up to date, return the state to
    resume from (bounded by `limits`).

    `tail_window`: how far from the end of the newest segment a torn write can reach (the
    writer's batch cap plus one record); damage further back refuses the start.
    Raises `CorruptLog` or `NodeIdMismatch`. `preallocate`, `segment_bytes`: how the first
    segment of an empty directory is made (`segment.create_segment`).

    In four steps: scan (every record, feeding the rebuild), judge (is the first damage a
    torn tail?), repair (cut it), rebuild (reconcile heads.db with the log's end, then the
    state and segment list to resume from).
    """
    started = time.monotonic()
    removed = _prepare_dir(wal_dir)
    listed = list_segments(wal_dir)
    oldest = _oldest_header(listed)
    if oldest is not None and oldest.node_id != node_id:
        raise _node_mismatch(wal_dir, oldest.node_id, node_id)
    store = _open_store(wal_dir)
    try:
        migrated = _migrate(wal_dir, store, oldest, listed)
        rebuild = _Rebuild(limits, store, flush_channels)
        scan = _scan(wal_dir, node_id, rebuild)
        bad = _judge(wal_dir, scan, tail_window)
        truncation = _repair(bad) if bad is not None else None
        recovery = _rebuilt(wal_dir, node_id, scan.segments, rebuild, preallocate, segment_bytes)
    except BaseException:
        store.close()
        raise
    recovery.truncation = truncation
    recovery.removed_tmp = removed
    recovery.migrated = migrated
    recovery.seconds = time.monotonic() - started
    return recovery


def _prepare_dir(wal_dir: str) -> list[str]:
    """Create the directory if need be; remove what an interrupted rotation left."""
    if not os.path.isdir(wal_dir):
        os.makedirs(wal_dir)
        fsync_dir(os.path.dirname(os.path.abspath(wal_dir)))  # the new directory's entry
    removed = remove_leftovers(wal_dir)
    for path in removed:
        if is_pipeline_file(os.path.basename(path)):
            log.info("removed %s: a preallocated segment file that no rotation used", path)
        else:
            log.warning("removed %s: a segment an interrupted rotation left half-made", path)
    return removed


def _oldest_header(listed: list[tuple[int, str]]) -> SegmentHeader | None:
    """The oldest segment's header, or None (no segment, or unreadable: the scan reports it
    and refuses)."""
    if not listed:
        return None
    try:
        return load_header(listed[0][1])
    except (SegmentError, OSError):
        return None


def _open_store(wal_dir: str) -> HeadsStore:
    try:
        return HeadsStore.open(wal_dir)
    except HeadsStoreError as exc:
        raise CorruptLog(
            f"refusing to start: heads store {exc}. `ferry wal repair {wal_dir}` sets it "
            "aside and starts a new one from the log (channels whose last message was in a "
            "deleted segment then restart at seq 1)",
            exc.path,
            0,
        ) from None


def _migrate(
    wal_dir: str, store: HeadsStore, oldest: SegmentHeader | None, listed: list[tuple[int, str]]
) -> int:
    """Bring a store that ends before the log begins up to it: from the oldest version 1
    header's heads snapshot (a directory from before heads.db), else refuse. Returns the
    heads migrated."""
    if oldest is None:
        return 0
    first = oldest.first_lsn
    if first - 1 <= store.as_of:
        return 0
    if heads_behind(store.as_of, first, oldest.version):
        raise CorruptLog(
            heads_behind_message(wal_dir, store.path, store.as_of, first), store.path, 0
        )
    # The oldest header's snapshot holds every channel's head as of first - 1.
    snapshot = load_header(listed[0][1], decode_heads=True).heads or {}
    store.write({ch: StoredHead(seq, 0) for ch, seq in snapshot.items()}, first - 1)
    migrated = len(snapshot)
    del snapshot
    log.warning(
        "WAL %s: no heads store yet; took %d channel heads from the header of %s into %s",
        wal_dir,
        migrated,
        os.path.basename(listed[0][1]),
        store.path,
    )
    return migrated


def _scan(wal_dir: str, node_id: str, rebuild: _Rebuild) -> DirScan:
    """Read every record in LSN order up to the first damage, MESSAGE ones into `rebuild`."""

    def visit(index: int, span: RecordSpan) -> None:
        body = decode_payload(span.type, span.payload)
        if span.type == MESSAGE:
            rebuild.message(span.lsn, cast(MessagePayload, body))

    scan = scan_dir(wal_dir, visit)
    segments = scan.segments
    if segments and segments[0].header is not None and segments[0].header.node_id != node_id:
        raise _node_mismatch(wal_dir, segments[0].header.node_id, node_id)
    return scan


def _judge(wal_dir: str, scan: DirScan, tail_window: int) -> SegmentScan | None:
    """The segment whose torn tail is to be cut (None: the log is clean); `CorruptLog` for
    damage that no torn write explains."""
    damaged = scan.first_damage
    if damaged is None:
        return None
    segments = scan.segments
    bad = segments[damaged]
    newest = damaged == len(segments) - 1 and _is_newest(wal_dir, bad.path)
    if is_torn_tail(bad, newest, tail_window):
        return bad
    error = bad.error
    assert error is not None
    where = "" if newest else ", not in the newest segment"
    raise CorruptLog(
        f"refusing to start: {error}{where}, so no torn write explains it. "
        f"`ferry wal verify {wal_dir}` shows the damage; `ferry wal repair {wal_dir}` "
        f"cuts the log at {os.path.basename(bad.path)} offset {error.offset} "
        "(what it drops is backed up as *.broken)",
        bad.path,
        error.offset,
    )


def _repair(bad: SegmentScan) -> Truncation:
    """Cut a torn tail at the end of the last good record (the file backed up first)."""
    truncation = truncate_segment(bad.path, bad.end, backup_bytes=bad.data_end)
    bad.size = bad.end
    log.warning(
        "WAL torn tail: %s; truncated %s at offset %d, dropped %d bytes (backup %s)",
        bad.error,
        os.path.basename(bad.path),
        bad.end,
        truncation.dropped_bytes,
        truncation.backup,
    )
    return truncation


def _rebuilt(
    wal_dir: str,
    node_id: str,
    segments: list[SegmentScan],
    rebuild: _Rebuild,
    preallocate: str,
    segment_bytes: int,
) -> Recovery:
    """The state and segments to resume from, heads.db reconciled with the log's end; a
    first segment is created in an empty directory (preallocated unless `off`)."""
    store = rebuild.store
    last_lsn = segments[-1].last_lsn if segments else 0
    ahead, heads_ahead = _store_ahead(wal_dir, rebuild, last_lsn)
    if not segments:
        header_bytes, version = _first_segment(wal_dir, node_id, preallocate, segment_bytes)
        header = SegmentHeader(node_id, 1, len(header_bytes), version)
        path = os.path.join(wal_dir, segment_name(1))
        metas = [SegmentMeta(1, path, len(header_bytes), 0)]
        state = RecoveredState(next_lsn=1, mids=list(rebuild.mids), epoch=store.epoch)
        return Recovery(state, metas, header, store, {}, ahead=ahead)
    metas = [
        SegmentMeta(seg.first_lsn, seg.path, seg.end, seg.last_lsn, _mtime(seg.path))
        for seg in segments
    ]
    state, floor = rebuild.state(last_lsn + 1, heads_ahead)
    state.epoch = store.epoch
    active_header = segments[-1].header
    assert active_header is not None
    return Recovery(
        state,
        metas,
        active_header,
        store,
        rebuild.dirty,
        records=sum(seg.records for seg in segments),
        history_floor=floor,
        ahead=ahead,
    )


def _first_segment(
    wal_dir: str, node_id: str, preallocate: str, segment_bytes: int
) -> tuple[bytes, int]:
    """Create segment 1, preallocated unless `off` or the space cannot be had (ENOSPC,
    EFBIG: then a plain one, as a rotation does when the pipeline has no file ready; if
    that fails too, the error is raised). Returns its header and version."""
    if preallocate != "off":
        header = encode_header(node_id, 1, PREALLOC_VERSION)
        try:
            os.close(
                create_segment(wal_dir, 1, header, preallocate=preallocate, size=segment_bytes)
            )
            return header, PREALLOC_VERSION
        except OSError as exc:
            log.warning(
                "WAL %s: could not preallocate the first segment (%s): created without",
                wal_dir,
                exc.strerror or exc,
            )
    header = encode_header(node_id, 1, VERSION)
    os.close(create_segment(wal_dir, 1, header))
    return header, VERSION


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _store_ahead(wal_dir: str, rebuild: _Rebuild, last_lsn: int) -> tuple[int, dict[str, int]]:
    """When heads.db is complete past the log's end (the log lost records the store had
    seen: a repair cut acked records, or a power loss with wal_sync=write), stored heads win,
    so those channels continue after a gap and never reuse a seq; as_of comes back to the
    end of the log, where new LSNs start. Returns (the store's old as_of or 0, the stored
    seqs above the log's)."""
    if rebuild.as_of <= last_lsn:
        return 0, {}
    store = rebuild.store
    ahead = rebuild.as_of
    stored = store.seqs(rebuild.channels)
    heads_ahead = {ch: seq for ch, seq in stored.items() if seq > rebuild.channels[ch].seq}
    store.write({}, last_lsn)
    rebuild.as_of = last_lsn
    log.warning(
        "WAL %s: heads store was complete up to LSN %d, the log ends at %d: %d channels "
        "keep heads from records no longer in the log (their seqs continue after a gap)",
        wal_dir,
        ahead,
        last_lsn,
        store.count_from(last_lsn + 1),
    )
    return ahead, heads_ahead


def heads_behind_message(wal_dir: str, path: str, as_of: int, first_lsn: int) -> str:
    return (
        f"refusing to start: heads store {path} is complete up to LSN {as_of}, but the log "
        f"begins at LSN {first_lsn}: the heads of channels last written in LSN "
        f"{as_of + 1}..{first_lsn - 1} are gone, and those channels would restart at seq 1. "
        f"Put back the heads.db this directory was written with, or run `ferry wal repair "
        f"{wal_dir}` to accept the loss"
    )


def _node_mismatch(wal_dir: str, found: str, node_id: str) -> NodeIdMismatch:
    return NodeIdMismatch(
        f"{wal_dir} holds the log of node {found!r}, this node is "
        f"{node_id!r}: set FERRY_NODE_ID to the node id the log was written with, or "
        "point FERRY_WAL_DIR at this node's own directory"
    )


def _is_newest(wal_dir: str, path: str) -> bool:
    """No segment sorts after `path` (scan_dir stopped at it, so check the directory)."""
    listed = list_segments(wal_dir)
    return bool(listed) and listed[-1][1] == path
