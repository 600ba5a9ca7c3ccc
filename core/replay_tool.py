"""`ferry replay --wal-dir D --db URL [--follow] [--from-lsn N]`: the replayer as a tool.

The same `Replayer` that runs inside `ferry serve`, with a progress bar and a summary.
Without --follow it replays what the WAL holds now and exits; with --follow it keeps
tailing until interrupted. The WAL's lock file keeps it off a WAL that a running
`ferry serve` is already replaying.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

from tqdm import tqdm

from core import config
from wal.errors import ReplayLocked
from wal.lockfile import replay_lock
from wal.reader import scan_segment
from wal.replay.replayer import Replayer, ReplayStatus
from wal.segment import list_segments, read_header
from wal.sinks.base import make_sink, redact_url


def _wal_head(wal_dir: str) -> int:
    """The last LSN on disk: only the newest segment is read."""
    segments = list_segments(wal_dir)
    if not segments:
        return 0
    return scan_segment(segments[-1][1]).last_lsn


def _node_of(wal_dir: str) -> str | None:
    """The node id in the oldest segment's header."""
    segments = list_segments(wal_dir)
    if not segments:
        return None
    path = segments[0][1]
    with open(path, "rb") as fh:
        return read_header(fh, path).node_id


async def _run(args: argparse.Namespace) -> int:
    node = args.node or _node_of(args.wal_dir) or config.default("node_id")
    lock = replay_lock(args.wal_dir)
    try:
        lock.acquire()
    except ReplayLocked as exc:
        print(f"ferry replay: {exc}", file=sys.stderr)
        return 3
    head = _wal_head(args.wal_dir)
    bar = tqdm(
        total=None,
        unit="rec",
        unit_scale=True,
        disable=args.quiet,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    started = time.monotonic()
    first = [True]

    def on_status(status: ReplayStatus) -> None:
        if first[0] and status.checkpoint:
            bar.reset(total=max(0, head - status.checkpoint) if not args.follow else None)
            first[0] = False
        bar.n = status.rows
        bar.set_postfix_str(
            f"db={status.state}" + (f" ({status.last_error})" if status.last_error else "")
        )
        bar.refresh()

    replayer = Replayer(
        args.wal_dir, make_sink(args.db), node, from_lsn=args.from_lsn, on_status=on_status
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, replayer.stop)
    try:
        if args.follow:
            await replayer.run()
        else:
            await replayer.drain()
    finally:
        bar.close()
        await replayer.sink.close()
        lock.release()
    elapsed = time.monotonic() - started
    s = replayer.status
    rate = s.rows / elapsed if elapsed > 0 else 0.0
    print(
        f"replayed {s.rows} records in {elapsed:.2f}s ({rate:,.0f} rows/s) into {redact_url(args.db)}; "
        f"node {node} checkpoint {s.checkpoint}; database {s.state}"
        + (f" ({s.last_error})" if s.last_error else "")
    )
    return 0 if s.state != "down" else 1


# The settings this tool shares with `ferry serve`: same environment variable, same default.
SHARED = {"wal_dir": "wal_dir", "db": "db_url", "node": "node_id"}


def _shared(name: str) -> str:
    return f" (default: ${config.env_name(name)} or {config.shown_default(name)})"


def _resolve_shared(args: argparse.Namespace) -> None:
    """Unset flags take `ferry serve`'s environment variable, then its default (the node
    id's default is the WAL's own, looked up later)."""
    for dest, name in SHARED.items():
        if getattr(args, dest) is None:
            value = config.from_environment(name)
            if value is None and name != "node_id":
                value = config.default(name)
            setattr(args, dest, value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry replay", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--wal-dir", metavar="DIR", help="the WAL directory to drain" + _shared("wal_dir")
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///path or mysql://user:pass@host:port/db" + _shared("db_url"),
    )
    parser.add_argument(
        "--node", help=f"node id (default: ${config.env_name('node_id')}, else the WAL's)"
    )
    parser.add_argument("--follow", action="store_true", help="keep tailing the WAL")
    parser.add_argument(
        "--from-lsn",
        metavar="N",
        type=int,
        default=None,
        help="start here instead of after the checkpoint",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        _resolve_shared(args)
    except config.ConfigError as exc:
        print(f"ferry replay: {exc}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.wal_dir):
        print(f"ferry replay: no WAL directory {args.wal_dir}", file=sys.stderr)
        return 2
    import uvloop

    return uvloop.run(_run(args))
