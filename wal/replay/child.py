"""The replayer's child process (`python -m wal.replay.child`), started and supervised by
`wal.replay.service.ReplayService`; the pipe protocol is described there."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import signal
import sys
import time
from typing import Any

import uvloop

from common import logsetup
from wal.errors import ReplayLocked
from wal.lockfile import replay_lock
from wal.replay.replayer import Replayer, ReplayStatus
from wal.replay.service import STATUS_INTERVAL
from wal.sinks.base import make_sink


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _fault_injector() -> Any:
    """FERRYTEST_REPLAY_FAULT=point:n SIGKILLs parent and child at the n-th `point` (tests only)."""
    spec = os.environ.get("FERRYTEST_REPLAY_FAULT", "")
    if not spec:
        return lambda point: None
    target, _, count = spec.partition(":")
    remaining = [int(count or 1)]

    def fault(point: str) -> None:
        if point != target:
            return
        remaining[0] -= 1
        if remaining[0] <= 0:
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    return fault


async def child_main(wal_dir: str, db_url: str, node_id: str) -> int:
    loop = asyncio.get_running_loop()
    last_sent: list[Any] = [0.0, ""]

    def emit(status: ReplayStatus, force: bool = False) -> None:
        doc = json.dumps(status.as_dict())
        now = time.monotonic()
        if force or (
            doc != last_sent[1] and (now - last_sent[0] >= STATUS_INTERVAL or status.state != "up")
        ):
            sys.stdout.write(doc + "\n")
            sys.stdout.flush()
            last_sent[0], last_sent[1] = now, doc

    lock = replay_lock(wal_dir)
    status = ReplayStatus()
    while True:
        try:
            lock.acquire()
            break
        except ReplayLocked as exc:
            status.last_error = str(exc)
            emit(status, force=True)
            await asyncio.sleep(1.0)

    replayer = Replayer(
        wal_dir, make_sink(db_url), node_id, on_status=emit, fault=_fault_injector()
    )
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    durable_known = asyncio.Event()

    async def control() -> None:
        async for raw in reader:
            line = raw.strip()
            if line.startswith(b"D "):
                replayer.set_durable(int(line[2:]))
                durable_known.set()
            elif line == b"STOP":
                break
        replayer.stop()
        durable_known.set()

    control_task = loop.create_task(control())
    ticker_running = True

    async def ticker() -> None:
        while ticker_running:
            await asyncio.sleep(1.0)
            emit(replayer.status, force=True)

    tick_task = loop.create_task(ticker())
    try:
        # Nothing is read before the relay's durable head is known (the first "D" line,
        # sent right after "DB"): never past what the writer has synced.
        await durable_known.wait()
        await replayer.run()
    finally:
        ticker_running = False
        tick_task.cancel()
        control_task.cancel()
        emit(replayer.status, force=True)
        await replayer.sink.close()
        lock.release()
    return 0


def _read_db_url(fd: int = 0) -> str:
    """The parent's first line, "DB <url>", read byte by byte from the raw pipe so that
    nothing after it is buffered away from the control loop."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    text = line.decode().strip()
    if not text.startswith("DB "):
        raise SystemExit("ferry-replay-child: expected the database URL first on stdin")
    return text[3:]


def main() -> int:
    _die_with_parent()
    # Below the relay in the CPU queue: on a busy 2-core box the relay's acks come first
    # and the replayer catches up when there is slack (the WAL holds the backlog).
    try:
        os.nice(5)
    except OSError:
        pass
    parser = argparse.ArgumentParser(prog="ferry-replay-child")
    parser.add_argument("--wal-dir", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="database URL (visible in ps: not for passwords)")
    source.add_argument("--db-from-stdin", action="store_true", help='first line "DB <url>"')
    parser.add_argument("--node", required=True)
    # As `ferry serve` resolved them: its flags and TOML file never reach this environment.
    parser.add_argument("--log-level", required=True)
    parser.add_argument("--log-format", required=True)
    args = parser.parse_args()
    db_url = _read_db_url() if args.db_from_stdin else args.db
    logsetup.setup(args.log_level, args.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return uvloop.run(child_main(args.wal_dir, db_url, args.node))


if __name__ == "__main__":
    sys.exit(main())
