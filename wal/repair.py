"""Cutting damage out of the log: back up, truncate, fsync (etcd's repair.go).

Two users: startup recovery (`truncate_segment` on a torn tail of the newest segment) and
`ferry wal repair` (`repair_dir`: the operator's explicit way past corruption anywhere,
which also sets aside every later segment). Nothing is ever deleted here: a truncated
segment is first copied to `<name>.broken`, a dropped one is renamed to it.

`repair_dir` also deals with the heads store (`wal.heads`): an unreadable heads.db is set
aside (`heads.db.broken`, with its -wal and -shm) and a new one started; one that is
behind the log (its as_of before the oldest segment, which has no heads snapshot) is
moved up to the log. Both accept that channels whose last message was only in a deleted
segment restart at seq 1, and say so. A heads store *ahead* of the cut log is left alone:
those channels keep their seqs (a gap, never a reuse), and the next start brings as_of
back to the end of the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field

from wal.errors import HeadsStoreError, RecordError, SegmentError
from wal.heads import HeadsStore, heads_behind, heads_path, read_summary
from wal.lockfile import writer_lock
from wal.reader import DirScan, SegmentScan, scan_dir
from wal.segment import BROKEN_SUFFIX, fsync_dir, list_leftovers, parse_segment_name

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


def backup_copy(path: str, length: int | None = None) -> str:
    """Copy `path` (its first `length` bytes: a preallocated segment's zero tail is left
    out) to a fresh `<path>.broken[.N]`, durably; return the copy's path."""
    backup = _backup_name(path)
    if length is None:
        shutil.copyfile(path, backup)
    else:
        with open(path, "rb") as src, open(backup, "wb") as dst:
            left = length
            while left > 0:
                chunk = src.read(min(left, 1024 * 1024))
                if not chunk:
                    break
                dst.write(chunk)
                left -= len(chunk)
    fd = os.open(backup, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return backup


def truncate_segment(path: str, offset: int, backup_bytes: int | None = None) -> Truncation:
    """Back up `path` (up to `backup_bytes`: the end of its data, zeros past it left out),
    cut it to `offset` bytes, fdatasync it and its directory. `dropped_bytes` counts the
    data cut (to `backup_bytes`), not a preallocated zero tail."""
    file_size = os.path.getsize(path)
    size = file_size if backup_bytes is None else min(file_size, max(backup_bytes, offset))
    backup = backup_copy(path, size if size < file_size else None)
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
    heads: list[str] = field(default_factory=list)  # what was found / done to heads.db

    def lines(self) -> list[str]:
        out = [f"removed leftover {path}" for path in self.removed_tmp]
        if self.damage is None:
            if not self.heads:
                out.append("no damage found; nothing to repair")
            out.extend(self.heads)
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
        out.extend(self.heads)
        return out


def repair_dir(wal_dir: str) -> RepairReport:
    """Cut the log at its first damage: truncate that segment there (or set it aside when
    its header is bad), set aside every later segment. Takes the writer lock."""
    lock = writer_lock(wal_dir)
    lock.acquire()
    try:
        report = RepairReport(removed_tmp=remove_leftovers(wal_dir))
        scan: DirScan = scan_dir(wal_dir, stop_at_error=False)
        index = scan.first_damage
        if index is None:
            last = scan.segments[-1].last_lsn if scan.segments else 0
            _repair_heads(wal_dir, scan.segments, last, report)
            for line in report.heads:
                log.warning("wal repair: %s", line)
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
            report.truncated = truncate_segment(bad.path, bad.end, backup_bytes=bad.data_end)
            report.first_lost_lsn = bad.last_lsn + 1
        for seg in later:
            backup = set_aside(seg.path)
            report.dropped.append(
                DroppedSegment(seg.path, backup, _first_lsn_of(seg), seg.last_lsn, seg.records)
            )
        if later:
            fsync_dir(wal_dir)
        kept = scan.segments[: index + (0 if later and later[0] is bad else 1)]
        _repair_heads(wal_dir, kept, report.first_lost_lsn - 1, report)
        for line in report.lines():
            log.warning("wal repair: %s", line)
        return report
    finally:
        with contextlib.suppress(OSError):
            lock.release()


def _repair_heads(
    wal_dir: str, kept: list[SegmentScan], last_lsn: int, report: RepairReport
) -> None:
    """See the module docstring. `kept`: the segments left, `last_lsn`: the log's end."""
    path = heads_path(wal_dir)
    try:
        summary = read_summary(wal_dir, check=True)
        if summary is not None and summary.integrity != "ok":
            raise HeadsStoreError(path, f"integrity check: {summary.integrity}")
    except HeadsStoreError as exc:
        backups = [set_aside(name) for name in _store_files(path)]
        fsync_dir(wal_dir)
        report.heads.append(f"heads store unreadable ({exc}): moved to {', '.join(backups)}")
        summary = None
    oldest = kept[0].header if kept else None
    as_of = summary.as_of if summary is not None else 0
    if oldest is not None and heads_behind(as_of, oldest.first_lsn, oldest.version):
        store = HeadsStore.open(wal_dir)
        try:
            store.write({}, oldest.first_lsn - 1)
        finally:
            store.close()
        report.heads.append(
            f"heads store was complete up to LSN {as_of}, the log begins at "
            f"{oldest.first_lsn}: set it to LSN {oldest.first_lsn - 1}. Channels whose last "
            "message was in a deleted segment (and is not in heads.db) will restart at seq 1: "
            "clients resuming them with `since` get wrong answers"
        )
    elif summary is not None and summary.as_of > last_lsn:
        store = HeadsStore.open(wal_dir)
        try:
            ahead = store.count_from(last_lsn + 1)
        finally:
            store.close()
        report.heads.append(
            f"heads store is complete up to LSN {summary.as_of}, past the end of the log "
            f"(LSN {last_lsn}): {ahead} channels keep heads from records no longer in the "
            "log; their next seqs leave a gap (never a reuse)"
        )


def _store_files(path: str) -> list[str]:
    return [name for name in (path, path + "-wal", path + "-shm") if os.path.exists(name)]


def _first_lsn_of(scan: SegmentScan) -> int:
    if scan.header is not None:
        return scan.header.first_lsn
    return parse_segment_name(os.path.basename(scan.path)) or 0
