"""Cutting damage out of the log: back up, truncate, fsync (etcd's repair.go).

Two users: startup recovery (`truncate_segment` on a torn tail of the newest segment) and
`ferry wal repair` (`repair_dir`: the operator's explicit way past corruption anywhere,
which also sets aside every later segment). Nothing is ever deleted here: a truncated
segment is first copied to `<name>.broken`, a dropped one is renamed to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field

from wal.errors import RecordError, SegmentError
from wal.reader import DirScan, SegmentScan, scan_dir
from wal.segment import (
    BROKEN_SUFFIX,
    fsync_dir,
    list_leftovers,
    lock_dir,
    parse_segment_name,
    unlock_dir,
)

log = logging.getLogger("ferry.wal")


@dataclass(frozen=True, slots=True)
class Truncation:
    path: str
    offset: int  # the new size: end of the last good record
    dropped_bytes: int
    backup: str


@dataclass(frozen=True, slots=True)
class DroppedSegment:
    path: str
    backup: str
    first_lsn: int
    last_lsn: int  # as far as it could be read
    records: int


def _backup_name(path: str) -> str:
    candidate = path + BROKEN_SUFFIX
    n = 1
    while os.path.exists(candidate):
        candidate = f"{path}{BROKEN_SUFFIX}.{n}"
        n += 1
    return candidate


def backup_copy(path: str) -> str:
    """Copy `path` to a fresh `<path>.broken[.N]`, durably; return the copy's path."""
    backup = _backup_name(path)
    shutil.copyfile(path, backup)
    fd = os.open(backup, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return backup


def truncate_segment(path: str, offset: int) -> Truncation:
    """Back up `path`, cut it to `offset` bytes, fdatasync it and its directory."""
    size = os.path.getsize(path)
    backup = backup_copy(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, offset)
        os.fdatasync(fd)  # the new size is metadata fdatasync must persist
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path) or ".")
    return Truncation(path, offset, size - offset, backup)


def set_aside(path: str) -> str:
    """Rename a whole segment to `<path>.broken[.N]` (the caller fsyncs the directory)."""
    backup = _backup_name(path)
    os.rename(path, backup)
    return backup


def remove_leftovers(wal_dir: str) -> list[str]:
    """Delete `.tmp` segments an interrupted rotation left behind; return their paths."""
    removed = list_leftovers(wal_dir)
    for path in removed:
        os.unlink(path)
    if removed:
        fsync_dir(wal_dir)
    return removed


@dataclass(slots=True)
class RepairReport:
    damage: RecordError | SegmentError | None = None
    truncated: Truncation | None = None
    dropped: list[DroppedSegment] = field(default_factory=list)
    removed_tmp: list[str] = field(default_factory=list)
    first_lost_lsn: int = 0  # 0: nothing lost

    def lines(self) -> list[str]:
        out = [f"removed leftover {path}" for path in self.removed_tmp]
        if self.damage is None:
            out.append("no damage found; nothing to repair")
            return out
        out.append(f"damage: {self.damage}")
        if self.truncated is not None:
            t = self.truncated
            out.append(
                f"truncated {t.path} at offset {t.offset}: dropped {t.dropped_bytes} bytes "
                f"(backup {t.backup})"
            )
        for d in self.dropped:
            lsns = f"LSN {d.first_lsn}..{d.last_lsn}" if d.records else "no readable record"
            out.append(
                f"dropped {d.path}: {d.records} readable records, {lsns} (moved to {d.backup})"
            )
        if self.first_lost_lsn:
            out.append(
                f"records from LSN {self.first_lost_lsn} on are gone from the log; new records "
                f"will reuse those LSNs. If the database's checkpoint is past "
                f"{self.first_lost_lsn - 1}, it already holds rows with them: check before "
                "starting the node again."
            )
        return out


def repair_dir(wal_dir: str) -> RepairReport:
    """Cut the log at its first damage: truncate that segment there (or set it aside when
    its header is bad), set aside every later segment. Takes the writer lock."""
    lock = lock_dir(wal_dir)
    try:
        report = RepairReport(removed_tmp=remove_leftovers(wal_dir))
        scan: DirScan = scan_dir(wal_dir, stop_at_error=False)
        index = scan.first_damage
        if index is None:
            return report
        bad = scan.segments[index]
        damage = bad.error
        assert damage is not None
        report.damage = damage
        later = scan.segments[index + 1 :]
        header_size = bad.header.size if bad.header is not None else 0
        if isinstance(damage, SegmentError) or damage.offset < header_size:
            # Nothing usable (bad header, or it does not start where the last one ended).
            later = [bad, *later]
            report.first_lost_lsn = scan.segments[index - 1].last_lsn + 1 if index else 1
        else:
            report.truncated = truncate_segment(bad.path, bad.end)
            report.first_lost_lsn = bad.last_lsn + 1
        for seg in later:
            backup = set_aside(seg.path)
            report.dropped.append(
                DroppedSegment(seg.path, backup, _first_lsn_of(seg), seg.last_lsn, seg.records)
            )
        if later:
            fsync_dir(wal_dir)
        for line in report.lines():
            log.warning("wal repair: %s", line)
        return report
    finally:
        with contextlib.suppress(OSError):
            unlock_dir(lock)


def _first_lsn_of(scan: SegmentScan) -> int:
    if scan.header is not None:
        return scan.header.first_lsn
    return parse_segment_name(os.path.basename(scan.path)) or 0
