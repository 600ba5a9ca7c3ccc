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

from wal.errors import RecordError, WalError
from wal.reader import DirScan, SegmentScan, iter_records, scan_dir
from wal.record import MESSAGE, ConnectionEvent, Frame, MessagePayload, decode_payload
from wal.recovery import is_torn_tail, tail_window
from wal.repair import repair_dir
from wal.segment import BROKEN_SUFFIX, TMP_SUFFIX, list_segments

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
    p = sub.add_parser("inspect", help="segments, LSN ranges, sizes, record counts")
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


def _others(wal_dir: str) -> list[str]:
    return sorted(n for n in os.listdir(wal_dir) if n.endswith((TMP_SUFFIX, BROKEN_SUFFIX)))


def _inspect(args: argparse.Namespace, out: TextIO) -> int:
    scan = scan_dir(args.dir, stop_at_error=False)
    segs = scan.segments
    node = next((s.header.node_id for s in segs if s.header is not None), None)
    if args.json:
        doc: dict[str, Any] = {
            "dir": args.dir,
            "node": node,
            "segments": [
                {
                    "name": s.name,
                    "first_lsn": s.first_lsn,
                    "last_lsn": s.last_lsn,
                    "records": s.records,
                    "bytes": s.size,
                    "channels_in_header": len(s.header.heads) if s.header else None,
                    "status": _status(s),
                }
                for s in segs
            ],
            "other_files": _others(args.dir),
        }
        out.write(_json.encode(doc).decode() + "\n")
        return EXIT_OK
    total = sum(s.size for s in segs)
    records = sum(s.records for s in segs)
    lsns = f"LSN {segs[0].first_lsn}..{segs[-1].last_lsn}" if segs else "empty"
    print(f"WAL {args.dir}: node {node!r}, {len(segs)} segments, {total} bytes, ", end="", file=out)
    print(f"{records} records, {lsns}", file=out)
    print(
        f"{'segment':<26} {'first LSN':>12} {'last LSN':>12} {'records':>9} {'bytes':>11}  status",
        file=out,
    )
    for s in segs:
        print(
            f"{s.name:<26} {s.first_lsn:>12} {s.last_lsn:>12} {s.records:>9} {s.size:>11}  "
            f"{_status(s)}",
            file=out,
        )
    for name in _others(args.dir):
        print(f"also: {name}", file=out)
    return EXIT_OK


# -- verify ------------------------------------------------------------------------------


class _HeadsCheck:
    """Decode every payload (as recovery does) and follow the channel heads, to compare
    them with each segment header's snapshot."""

    def __init__(self) -> None:
        self.heads: dict[str, int] = {}
        self.per_segment: dict[int, dict[str, int]] = {}

    def __call__(self, index: int, frame: Frame) -> None:
        body = decode_payload(frame.type, frame.payload)
        if frame.type == MESSAGE:
            assert isinstance(body, MessagePayload)
            self.per_segment.setdefault(index, {})[body.channel] = body.seq


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    check = _HeadsCheck()
    scan: DirScan = scan_dir(args.dir, check, stop_at_error=False)
    segs = scan.segments
    damaged = [s for s in segs if s.error is not None]
    heads: dict[str, int] = {}
    for index, s in enumerate(segs):
        if s.header is None:
            continue
        if index == 0:
            heads = dict(s.header.heads)
        elif s.header.heads != heads and segs[index - 1].error is None:
            differ = {
                k
                for k in heads.keys() | s.header.heads.keys()
                if heads.get(k) != s.header.heads.get(k)
            }
            print(
                f"note: {s.name}: heads snapshot differs from the records before it for "
                f"{len(differ)} channels (e.g. {sorted(differ)[:3]})",
                file=out,
            )
        heads.update(check.per_segment.get(index, {}))
    for leftover in _others(args.dir):
        if leftover.endswith(TMP_SUFFIX):
            print(f"note: {leftover}: unfinished rotation, removed at the next start", file=out)
    records = sum(s.records for s in segs)
    if not damaged:
        last = segs[-1].last_lsn if segs else 0
        print(f"ok: {len(segs)} segments, {records} records, LSN up to {last}", file=out)
        return EXIT_OK
    for s in damaged:
        error = s.error
        offset = error.offset if error is not None else 0
        print(f"DAMAGE {s.path} offset {offset}: {_status(s)}", file=out)
    first = damaged[0]
    error = first.error
    # Judged as a WalLog with default settings would (package docstring, "Recovery").
    if is_torn_tail(first, first is segs[-1], tail_window()):
        print(
            f"torn tail: the next start truncates {first.name} at offset {first.end} "
            f"({first.size - first.end} bytes, backup kept)",
            file=out,
        )
        return EXIT_TORN_TAIL
    print(
        f"corrupt: startup will refuse; `ferry wal repair {args.dir}` cuts the log at "
        f"{first.name} offset {error.offset if error else 0}",
        file=out,
    )
    return EXIT_CORRUPT


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
