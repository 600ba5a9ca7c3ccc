"""Startup recovery: read the whole log once, cut a torn tail, rebuild the relay's state.

Blocking file I/O; `WalLog.open` runs it in a thread. See the package docstring
("Recovery") for which damage is cut and which refuses the start.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, field

from core.log import RecoveredState
from wal.errors import BadPayload, CorruptLog, NodeIdMismatch, RecordError
from wal.reader import SegmentScan, scan_dir
from wal.record import (
    EVENT,
    MAX_PAYLOAD_BYTES,
    MESSAGE,
    Frame,
    MessagePayload,
    decode_event,
    decode_message,
    framed_size,
)
from wal.repair import Truncation, remove_leftovers, truncate_segment
from wal.segment import (
    SegmentHeader,
    create_segment,
    encode_header,
    fsync_dir,
    list_segments,
    segment_name,
)

log = logging.getLogger("ferry.wal")

DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024


def tail_window(max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> int:
    """How far back from the end of the newest segment a torn write can reach: the one
    batch that may have been in flight, which can overshoot the cap by one record."""
    return max_batch_bytes + framed_size(MAX_PAYLOAD_BYTES)


def is_torn_tail(scan: SegmentScan, newest: bool, window: int) -> bool:
    """Whether the damage `scan` found is a torn tail that startup truncates by itself."""
    error = scan.error
    return (
        newest
        and isinstance(error, RecordError)
        and scan.header is not None
        and error.offset >= scan.header.size
        and scan.size - error.offset <= window
    )


@dataclass(slots=True)
class SegmentMeta:
    """What the log keeps in memory about one of its segments."""

    first_lsn: int
    path: str
    size: int
    last_lsn: int = 0  # for sealed segments; the active one grows
    # channel -> last seq of that channel in this segment: whether history still needs it
    last_seqs: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Recovery:
    state: RecoveredState
    segments: list[SegmentMeta]  # oldest first; the last one is the active segment
    active_header: SegmentHeader
    truncation: Truncation | None = None
    removed_tmp: list[str] = field(default_factory=list)
    records: int = 0
    seconds: float = 0.0


def recover(wal_dir: str, node_id: str, history_size: int, tail_window: int) -> Recovery:
    """Scan `wal_dir`, repair a torn tail, return the state to resume from.

    `tail_window`: how far from the end of the newest segment a torn write can reach (the
    writer's batch cap plus one record); damage further back refuses the start.
    Raises `CorruptLog` or `NodeIdMismatch`.
    """
    started = time.monotonic()
    if not os.path.isdir(wal_dir):
        os.makedirs(wal_dir)
        fsync_dir(os.path.dirname(os.path.abspath(wal_dir)))  # the new directory's entry
    removed = remove_leftovers(wal_dir)
    for path in removed:
        log.warning("removed %s: a segment an interrupted rotation left half-made", path)

    last_seqs: list[dict[str, int]] = []
    rings: dict[str, collections.deque[tuple[int, MessagePayload]]] = {}

    def visit(index: int, frame: Frame) -> None:
        while len(last_seqs) <= index:
            last_seqs.append({})
        rtype = frame.type
        if rtype == MESSAGE:
            msg = decode_message(frame.payload)
            last_seqs[index][msg.channel] = msg.seq
            if history_size:
                ring = rings.get(msg.channel)
                if ring is None:
                    ring = rings[msg.channel] = collections.deque(maxlen=history_size)
                ring.append((frame.lsn, msg))
        elif rtype == EVENT:
            decode_event(frame.payload)
        else:
            raise BadPayload(f"unknown record type {rtype}", frame.offset)

    scan = scan_dir(wal_dir, visit)
    segments = scan.segments
    truncation = None
    if segments and segments[0].header is not None and segments[0].header.node_id != node_id:
        raise NodeIdMismatch(
            f"{wal_dir} holds the log of node {segments[0].header.node_id!r}, this node is "
            f"{node_id!r}: set FERRY_NODE_ID to the node id the log was written with, or "
            "point FERRY_WAL_DIR at this node's own directory"
        )
    damaged = scan.first_damage
    if damaged is not None:
        bad = segments[damaged]
        error = bad.error
        newest = damaged == len(segments) - 1 and _is_newest(wal_dir, bad.path)
        if is_torn_tail(bad, newest, tail_window):
            truncation = truncate_segment(bad.path, bad.end)
            bad.size = bad.end
            log.warning(
                "WAL torn tail: %s; truncated %s at offset %d, dropped %d bytes (backup %s)",
                error,
                os.path.basename(bad.path),
                bad.end,
                truncation.dropped_bytes,
                truncation.backup,
            )
        else:
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

    if not segments:
        header_bytes = encode_header(node_id, 1, {})
        os.close(create_segment(wal_dir, 1, header_bytes))
        header = SegmentHeader(node_id, 1, {}, len(header_bytes))
        path = os.path.join(wal_dir, segment_name(1))
        metas = [SegmentMeta(1, path, len(header_bytes), 0)]
        state = RecoveredState(next_lsn=1)
        return Recovery(state, metas, header, None, removed, 0, time.monotonic() - started)

    first_header = segments[0].header
    assert first_header is not None
    heads = dict(first_header.heads)
    metas = []
    for index, seg in enumerate(segments):
        seqs = last_seqs[index] if index < len(last_seqs) else {}
        heads.update(seqs)
        metas.append(SegmentMeta(seg.first_lsn, seg.path, seg.end, seg.last_lsn, seqs))
    history = {channel: [msg.to_entry(lsn) for lsn, msg in ring] for channel, ring in rings.items()}
    state = RecoveredState(next_lsn=segments[-1].last_lsn + 1, heads=heads, history=history)
    active_header = segments[-1].header
    assert active_header is not None
    records = sum(seg.records for seg in segments)
    seconds = time.monotonic() - started
    return Recovery(state, metas, active_header, truncation, removed, records, seconds)


def _is_newest(wal_dir: str, path: str) -> bool:
    """No segment sorts after `path` (scan_dir stopped at it, so check the directory)."""
    listed = list_segments(wal_dir)
    return bool(listed) and listed[-1][1] == path
