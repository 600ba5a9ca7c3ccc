"""Fixtures and helpers for the WAL tests: real files in tmp_path, waits with deadlines."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypedDict, Unpack

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from common.durability import Entry, HistoryLimits, RecoveredState
from common.latency import Stages
from tests.helpers import unavailable
from wal import WalLog
from wal.errors import RecordError
from wal.reader import SegmentReader
from wal.record import RecordSpan
from wal.segment import list_segments

# One time unit for every deadline (FERRYTEST_UNIT seconds, as in tests/helpers.py).
UNIT = float(os.environ.get("FERRYTEST_UNIT", "5"))


class EntryFields(TypedDict, total=False):
    """The Entry fields `message` fills in by itself, when not given."""

    ts_ms: int
    sender: str
    client_msg_id: str | None
    encoding: int
    origin: object


def message(channel: str, seq: int, data: bytes | None = None, **kw: Unpack[EntryFields]) -> Entry:
    return Entry(
        channel,
        seq,
        kw.get("ts_ms", 1_700_000_000_000 + seq),
        kw.get("sender", "alice"),
        kw.get("client_msg_id", f"c-{channel}-{seq}"),
        kw.get("encoding", 0),
        data if data is not None else b'{"n":%d,"ch":"%s"}' % (seq, channel.encode()),
        kw.get("origin"),
    )


class Handlers:
    """Records what the log reports; waits for it with deadlines, never sleeps."""

    def __init__(self) -> None:
        self.batches: list[list[Entry]] = []
        self.failed: list[tuple[list[Entry], str]] = []
        self.durable_lsn = 0
        self._changed = asyncio.Event()

    def on_durable(self, entries: list[Entry]) -> None:
        self.batches.append(list(entries))
        self.durable_lsn = entries[-1].lsn
        self._changed.set()

    def on_failed(self, entries: list[Entry], reason: str) -> None:
        self.failed.append((list(entries), reason))
        self._changed.set()

    @property
    def durable(self) -> list[Entry]:
        return [e for batch in self.batches for e in batch]

    async def until_durable(self, lsn: int, timeout: float = UNIT) -> None:
        """Until `lsn` is durable, or the log failed."""
        await self.until(lambda: self.durable_lsn >= lsn or bool(self.failed), timeout)

    async def until(self, condition: Callable[[], bool], timeout: float = UNIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class WalOptions(TypedDict, total=False):
    """WalLog's keyword parameters but node_id (LogFactory.open defaults it)."""

    sync: str
    segment_bytes: int
    max_batch_delay_ms: float
    max_batch_bytes: int
    history_max_bytes: int
    heads_flush_channels: int
    registry: CollectorRegistry | None
    stages: Stages | None
    keep_recent_s: float
    preallocate: str


class OpenOptions(WalOptions, total=False):
    """LogFactory.open's keyword parameters: a test's one set of options for each open."""

    history_size: int
    limits: HistoryLimits | None
    node_id: str


class LogFactory:
    """Opens WalLogs (closed at teardown) and fills them with messages."""

    def __init__(self) -> None:
        self.logs: list[WalLog] = []

    async def open(
        self,
        path: Path | str,
        history_size: int = 10,
        limits: HistoryLimits | None = None,
        node_id: str = "node-a",
        **kw: Unpack[WalOptions],
    ) -> tuple[WalLog, RecoveredState, Handlers]:
        # Segments as written before preallocation unless a test asks for it: the tests
        # that damage files at given offsets were written for those (test_prealloc.py and
        # the parametrized cases run the same damage on preallocated segments).
        kw.setdefault("preallocate", "off")
        log = WalLog(path, node_id=node_id, **kw)
        state = await log.open(limits if limits is not None else HistoryLimits(size=history_size))
        handlers = Handlers()
        log.set_handlers(handlers.on_durable, handlers.on_failed)
        self.logs.append(log)
        return log, state, handlers


async def fill(
    log: WalLog,
    handlers: Handlers,
    count: int,
    channels: tuple[str, ...] = ("room.1", "room.2", "room.3"),
    heads: dict[str, int] | None = None,
    data: Callable[[str, int], bytes] | None = None,
    per_tick: int = 50,
    wait: bool = False,
) -> list[Entry]:
    """Append `count` messages round-robin over `channels` and wait until all are durable.

    `per_tick` messages are appended per loop iteration; with `wait`, each group waits to
    be durable before the next (one group per batch: predictable segment sizes).
    `heads` carries on each channel's seq (updated in place)."""
    heads = {} if heads is None else heads
    entries = []
    for i in range(count):
        ch = channels[i % len(channels)]
        heads[ch] = heads.get(ch, 0) + 1
        entry = message(ch, heads[ch], data(ch, heads[ch]) if data else None)
        log.append(entry)
        entries.append(entry)
        if i % per_tick == per_tick - 1:
            if wait:
                await handlers.until_durable(entry.lsn)
            await asyncio.sleep(0)  # let batches form and complete, as on a live loop
    await handlers.until_durable(entries[-1].lsn if entries else 0)
    return entries


async def fill_until_failed(
    log: WalLog, handlers: Handlers, channel: str = "big", timeout: float = UNIT
) -> int:
    """Append 2 KB messages to `channel`, 8 at a time, each group waited for, until the
    log fails (a full disk); returns the last seq appended."""
    seq = 0
    async with asyncio.timeout(timeout):
        while not handlers.failed:
            for _ in range(8):
                seq += 1
                log.append(message(channel, seq, b'"%s"' % (b"x" * 2000)))
            await handlers.until_durable(log.head_lsn)
    return seq


async def line_then_sigkill(child: subprocess.Popen[str], timeout: float) -> str:
    """The first line `child` prints (within `timeout`), then SIGKILL it and reap it."""
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), timeout)
        assert line, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(child.wait, UNIT) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return line


@pytest.fixture
async def logs() -> AsyncIterator[LogFactory]:
    factory = LogFactory()
    yield factory
    for log in factory.logs:
        await log.close()


def spans(path: Path | str) -> list[RecordSpan]:
    """The good records of one segment, up to any damage (offsets are file offsets)."""
    good: list[RecordSpan] = []
    with SegmentReader(str(path)) as reader:
        try:
            for f in reader.spans():
                good.append(msgspec.structs.replace(f, payload=memoryview(b"")))
        except RecordError:
            pass
    return good


def segment_paths(wal_dir: Path | str) -> list[Path]:
    return [Path(p) for _, p in list_segments(str(wal_dir))]


class SyncCounter:
    """Wraps os.fdatasync: counts calls and the threads they ran on; can be told to fail."""

    def __init__(self, real: Callable[[int], None]) -> None:
        self.real = real
        self.calls = 0
        self.threads: set[str] = set()
        self.fail_with: OSError | None = None
        self.failures = 0
        self.calls_after_failure = 0
        self.gate: threading.Event | None = None  # when set: block the call until released
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
            self.threads.add(threading.current_thread().name)
            if self.failures:
                self.calls_after_failure += 1
        if self.gate is not None:
            self.entered.set()
            self.gate.wait(UNIT)
        if self.fail_with is not None:
            with self._lock:
                self.failures += 1
            raise self.fail_with
        self.real(fd)


@pytest.fixture
def fdatasync(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncCounter]:
    counter = SyncCounter(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", counter)
    yield counter


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tmpfs(size)` mounts a tmpfs of that size (needs root / CAP_SYS_ADMIN): the full-disk
    tests. Under CI a refused mount fails the test; elsewhere it skips. Unmounted after."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"tmpfs-{len(mounts)}"
        mnt.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            message = f"cannot mount a {size} tmpfs here: {result.stderr.strip()}"
            unavailable(message)
        mounts.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounts:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A 256 KiB tmpfs."""
    return tmpfs("256k")


def grow_disk(mnt: Path, size: str = "4m") -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


Waiter = Callable[[Callable[[], bool]], Awaitable[None]]
