"""`ferry wal inspect|verify|dump|repair DIR`: the operator's view of a WAL directory.

Exit codes: 0 fine; 1 corruption (startup would refuse) or an error; 2 usage;
3 (`verify` only) a torn tail that the next start will truncate by itself.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import msgspec

from wal.errors import HeadsStoreError, RecordError, WalError
from wal.heads import HeadsSummary, heads_behind, read_summary
from wal.pipeline import is_pipeline_file
from wal.reader import DirScan, SegmentScan, iter_records, scan_dir
from wal.record import ConnectionEvent, MessagePayload, RecordSpan, decode_payload
from wal.recovery import is_torn_tail, tail_window
from wal.repair import repair_dir
from wal.segment import BROKEN_SUFFIX, TMP_SUFFIX, V1_HEADS, list_segments

EXIT_OK, EXIT_CORRUPT, EXIT_USAGE, EXIT_TORN_TAIL = 0, 1, 2, 3
_json = msgspec.json.Encoder()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    if not os.path.isdir(args.dir):
        print(f"ferry wal: {args.dir}: no such directory", file=sys.stderr)
        return EXIT_CORRUPT
    try:
        result: int = args.func(args, sys.stdout)
        return result
    except WalError as exc:
        print(f"ferry wal {args.cmd}: {exc}", file=sys.stderr)
        return EXIT_CORRUPT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry wal", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = sub.add_parser("inspect", help="segments, LSN ranges, sizes, records, heads store")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("verify", help="read everything; exit non-zero on damage")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=_verify)
    p = sub.add_parser("dump", help="records as JSON lines")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--channel", help="only messages of this channel")
    p.add_argument("--from-lsn", type=int, default=None, metavar="N")
    p.add_argument("--to-lsn", type=int, default=None, metavar="N")
    p.set_defaults(func=_dump)
    p = sub.add_parser(
        "repair",
        help="cut the log at its first damage (backups as *.broken); server must be stopped",
    )
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=_repair)
    return parser


# -- inspect -----------------------------------------------------------------------------


def _status(scan: SegmentScan) -> str:
    error = scan.error
    if error is None:
        return "ok"
    if isinstance(error, RecordError):
        return f"{error.kind} at offset {error.offset}: {error.reason}"
    return f"bad header: {error.reason}"


def _used(scan: SegmentScan) -> int:
    """Bytes of data in the segment: a preallocated segment's zero tail is not counted
    (`file_bytes` in `--json` is the file's size)."""
    return scan.data_end if scan.error is not None else scan.end


def _others(wal_dir: str) -> list[str]:
    return sorted(n for n in os.listdir(wal_dir) if n.endswith((TMP_SUFFIX, BROKEN_SUFFIX)))


def _heads_store(wal_dir: str, check: bool = False) -> tuple[HeadsSummary | None, str | None]:
    """The directory's heads store, or why it cannot be read."""
    try:
        return read_summary(wal_dir, check=check), None
    except HeadsStoreError as exc:
        return None, str(exc)


def _heads_line(summary: HeadsSummary | None, error: str | None) -> str:
    if error is not None:
        return f"heads store: UNREADABLE: {error}"
    if summary is None:
        return "heads store: none (heads.db is created at the next start)"
    return f"heads store: {summary.path}, as of LSN {summary.as_of}, {summary.channels} channels"


def _inspect(args: argparse.Namespace, out: TextIO) -> int:
    scan = scan_dir(args.dir, stop_at_error=False)
    segs = scan.segments
    node = next((s.header.node_id for s in segs if s.header is not None), None)
    summary, error = _heads_store(args.dir)
    if args.json:
        doc: dict[str, Any] = {
            "dir": args.dir,
            "node": node,
            "heads_store": (
                {"path": summary.path, "as_of": summary.as_of, "channels": summary.channels}
                if summary is not None
                else None
            ),
            "heads_store_error": error,
            "segments": [
                {
                    "name": s.name,
                    "first_lsn": s.first_lsn,
                    "last_lsn": s.last_lsn,
                    "records": s.records,
                    "bytes": _used(s),
                    "file_bytes": s.size,
                    "version": s.header.version if s.header else None,
                    "channels_in_header": s.header.heads_count if s.header else None,
                    "status": _status(s),
                }
                for s in segs
            ],
            "other_files": _others(args.dir),
        }
        out.write(_json.encode(doc).decode() + "\n")
        return EXIT_OK
    total = sum(_used(s) for s in segs)
    reserved = sum(s.size - _used(s) for s in segs)
    records = sum(s.records for s in segs)
    lsns = f"LSN {segs[0].first_lsn}..{segs[-1].last_lsn}" if segs else "empty"
    print(f"WAL {args.dir}: node {node!r}, {len(segs)} segments, {total} bytes, ", end="", file=out)
    print(f"{records} records, {lsns}", file=out)
    if reserved:
        print(f"preallocated and not yet used: {reserved} bytes", file=out)
    print(_heads_line(summary, error), file=out)
    print(
        f"{'segment':<26} {'first LSN':>12} {'last LSN':>12} {'records':>9} {'bytes':>11}  status",
        file=out,
    )
    for s in segs:
        print(
            f"{s.name:<26} {s.first_lsn:>12} {s.last_lsn:>12} {s.records:>9} {_used(s):>11}  "
            f"{_status(s)}",
            file=out,
        )
    for name in _others(args.dir):
        print(f"also: {name}", file=out)
    return EXIT_OK


# -- verify ------------------------------------------------------------------------------


def _decode(index: int, span: RecordSpan) -> None:
    """Decode every payload, as recovery does (a bad one is damage)."""
    decode_payload(span.type, span.payload)


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    scan: DirScan = scan_dir(args.dir, _decode, stop_at_error=False)
    segs = scan.segments
    damaged = [s for s in segs if s.error is not None]
    for leftover in _others(args.dir):
        if is_pipeline_file(leftover):
            print(
                f"note: {leftover}: an unused preallocated file, removed at the next start",
                file=out,
            )
        elif leftover.endswith(TMP_SUFFIX):
            print(f"note: {leftover}: unfinished rotation, removed at the next start", file=out)
    heads_damage = _verify_heads(args.dir, segs, out)
    records = sum(s.records for s in segs)
    if not damaged and heads_damage is None:
        last = segs[-1].last_lsn if segs else 0
        print(f"ok: {len(segs)} segments, {records} records, LSN up to {last}", file=out)
        return EXIT_OK
    if heads_damage is not None:
        print(f"DAMAGE {heads_damage}", file=out)
    for s in damaged:
        error = s.error
        offset = error.offset if error is not None else 0
        print(f"DAMAGE {s.path} offset {offset}: {_status(s)}", file=out)
    if not damaged:
        print(
            f"corrupt: startup will refuse; `ferry wal repair {args.dir}` accepts the heads "
            "store as it is (see above)",
            file=out,
        )
        return EXIT_CORRUPT
    first = damaged[0]
    error = first.error
    # Judged as a WalLog with default settings would (package docstring, "Recovery").
    if heads_damage is None and is_torn_tail(first, first is segs[-1], tail_window()):
        print(
            f"torn tail: the next start truncates {first.name} at offset {first.end} "
            f"({first.data_end - first.end} bytes, backup kept)",
            file=out,
        )
        return EXIT_TORN_TAIL
    print(
        f"corrupt: startup will refuse; `ferry wal repair {args.dir}` cuts the log at "
        f"{first.name} offset {error.offset if error else 0}",
        file=out,
    )
    return EXIT_CORRUPT


def _verify_heads(wal_dir: str, segs: list[SegmentScan], out: TextIO) -> str | None:
    """Print what the heads store looks like against the log; return damage (startup
    would refuse), or None."""
    summary, error = _heads_store(wal_dir, check=True)
    print(_heads_line(summary, error), file=out)
    if error is not None:
        return error
    oldest = segs[0].header if segs else None
    if summary is None:
        if oldest is not None and oldest.version == V1_HEADS and oldest.heads_count:
            print(
                f"note: {segs[0].name} is a version 1 segment: the next start takes its "
                f"{oldest.heads_count} channel heads into heads.db",
                file=out,
            )
        elif oldest is not None and heads_behind(0, oldest.first_lsn, oldest.version):
            return (
                f"{wal_dir}: no heads store, and the log begins at LSN {oldest.first_lsn}: "
                "the heads of channels last written before it are gone"
            )
        return None
    if summary.integrity != "ok":
        return f"{summary.path}: integrity check: {summary.integrity}"
    if oldest is not None and heads_behind(summary.as_of, oldest.first_lsn, oldest.version):
        return (
            f"{summary.path} is complete up to LSN {summary.as_of}, but the log begins at "
            f"LSN {oldest.first_lsn}: the heads of LSN {summary.as_of + 1}.."
            f"{oldest.first_lsn - 1} are gone"
        )
    last = _last_good_lsn(segs)
    if segs and summary.as_of > last:
        print(
            f"note: {summary.path} is complete up to LSN {summary.as_of}, past the end of the "
            f"log (LSN {last}): records it saw were cut (repair, or a power loss with "
            "wal_sync=write). Those channels keep their seqs: they continue after a gap, "
            "never reusing one",
            file=out,
        )
    return None


def _last_good_lsn(segs: list[SegmentScan]) -> int:
    """The last LSN recovery would keep (up to the first damage)."""
    last = 0
    for s in segs:
        if s.header is None:
            break
        last = s.last_lsn
        if s.error is not None:
            break
    return last


# -- dump --------------------------------------------------------------------------------


def _render(lsn: int, body: MessagePayload | ConnectionEvent) -> bytes:
    if isinstance(body, MessagePayload):
        doc: dict[str, Any] = {
            "lsn": lsn,
            "type": "message",
            "ch": body.channel,
            "seq": body.seq,
            "ts": body.ts_ms,
            "from": body.sender,
            "id": body.client_msg_id,
            "mid": body.mid,
            "encoding": "json" if body.encoding == 0 else "msgpack",
        }
        data = body.data
        if body.encoding == 0 and _valid_json(data):
            doc["data"] = msgspec.Raw(data)
        else:
            doc["data"] = base64.b64encode(data).decode()
            doc["base64"] = True
        return _json.encode(doc)
    return _json.encode(
        {
            "lsn": lsn,
            "type": "event",
            "kind": body.kind,
            "user": body.user,
            "remote": body.remote,
            "close_code": body.close_code,
            "duration_ms": body.duration_ms,
            "ts": body.ts_ms,
        }
    )


def _valid_json(data: bytes) -> bool:
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return True


def _dump(args: argparse.Namespace, out: TextIO) -> int:
    segments = list_segments(args.dir)
    if not segments:
        return EXIT_OK
    start = args.from_lsn if args.from_lsn is not None else segments[0][0]
    channel = args.channel
    for record in iter_records(args.dir, max(start, segments[0][0]), args.to_lsn):
        body = record.body
        if channel is not None and (
            not isinstance(body, MessagePayload) or body.channel != channel
        ):
            continue
        out.write(_render(record.lsn, body).decode() + "\n")
    return EXIT_OK


# -- repair ------------------------------------------------------------------------------


def _repair(args: argparse.Namespace, out: TextIO) -> int:
    report = repair_dir(args.dir)
    for line in report.lines():
        print(line, file=out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
