"""WAL micro-benchmarks: records/s through the group-commit writer, fdatasync included.

    pytest bench/micro/test_wal_micro.py --benchmark-enable     # timed rounds
    pytest bench/micro/test_wal_micro.py                        # each runs once (smoke)
    python -m bench.micro.test_wal_micro [DIR]                  # print the figures

`batch1000`: append 1000 records, wait until they are durable, repeat (one fdatasync per
1000 records). `publishers50`: 50 publishers each with one publish in flight, waiting for
its ack before the next (batches of ~50: the fdatasync latency bound). `head_of_hit` /
`head_of_miss`: `WalLog.head_of` answered by heads.db (100k channels of 200 characters,
none dirty), from the page cache.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.durability import Entry, HistoryLimits
from wal import WalLog

pytestmark = pytest.mark.bench

DATA = b'{"text":"hello world, this is a benchmark message","n":12345}'


class Harness:
    """One WalLog on its own event loop; `on_durable` wakes whoever waits for an LSN."""

    def __init__(self, wal_dir: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.log = WalLog(wal_dir, node_id="bench")
        self.loop.run_until_complete(self.log.open(HistoryLimits(size=0)))
        self.log.set_handlers(self._durable, lambda entries, reason: None)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.seq = 0

    def _durable(self, entries: list[Entry]) -> None:
        last = entries[-1].lsn
        for entry in entries:
            origin = entry.origin
            if origin is not None and not origin.done():  # type: ignore[attr-defined]
                origin.set_result(None)  # type: ignore[attr-defined]
        keep = []
        for lsn, future in self._waiters:
            if lsn <= last:
                future.set_result(None)
            else:
                keep.append((lsn, future))
        self._waiters = keep

    async def batch(self, size: int = 1000) -> int:
        append = self.log.append
        for _ in range(size):
            self.seq += 1
            append(Entry("room.1", self.seq, 0, "alice", None, 0, DATA))
        future = self.loop.create_future()
        self._waiters.append((self.log.head_lsn, future))
        await future
        return size

    async def publishers(self, count: int = 50, each: int = 200) -> int:
        loop = self.loop

        async def publisher(n: int) -> None:
            channel = f"room.{n}"
            for seq in range(1, each + 1):
                ack = loop.create_future()
                self.log.append(Entry(channel, seq, 0, "alice", None, 0, DATA, ack))
                await ack

        await asyncio.gather(*(publisher(n) for n in range(count)))
        return count * each

    def close(self) -> None:
        self.loop.run_until_complete(self.log.close())
        self.loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(str(tmp_path / "wal"))
    yield h
    h.close()


def test_wal_batch1000(benchmark: object, harness: Harness) -> None:
    records = benchmark(lambda: harness.loop.run_until_complete(harness.batch(1000)))  # type: ignore[operator]
    assert records == 1000


def test_wal_publishers50(benchmark: object, harness: Harness) -> None:
    records = benchmark(lambda: harness.loop.run_until_complete(harness.publishers(50, 100)))  # type: ignore[operator]
    assert records == 5000


HEAD_CHANNELS = 100_000


def _name(i: int) -> str:
    return f"room.{i}.".ljust(200, "x")


def store_heads(harness: Harness) -> Harness:
    """100k channels durable and flushed to heads.db (nothing left dirty)."""
    append = harness.log.append

    async def fill() -> None:
        for i in range(HEAD_CHANNELS):
            append(Entry(_name(i), 1, 0, "alice", None, 0, DATA))
            if i % 5000 == 4999:
                await asyncio.sleep(0)
        future = harness.loop.create_future()
        harness._waiters.append((harness.log.head_lsn, future))
        await future
        await harness.log.flush_heads()

    harness.loop.run_until_complete(fill())
    assert harness.log.stats()["heads_dirty"] == 0
    return harness


@pytest.fixture
def stored_heads(harness: Harness) -> Harness:
    return store_heads(harness)


def test_wal_head_of_hit(benchmark: object, stored_heads: Harness) -> None:
    names = [_name(i) for i in range(0, HEAD_CHANNELS, 101)]
    head_of = stored_heads.log.head_of
    found = benchmark(lambda: sum(head_of(n) for n in names))  # type: ignore[operator]
    assert found == len(names)


def test_wal_head_of_miss(benchmark: object, stored_heads: Harness) -> None:
    names = [_name(i) + "?" for i in range(0, HEAD_CHANNELS, 101)]
    head_of = stored_heads.log.head_of
    found = benchmark(lambda: sum(head_of(n) for n in names))  # type: ignore[operator]
    assert found == 0


def measure(wal_dir: str) -> dict[str, float]:
    """records/s for both shapes, plus the log's own fsync figures."""
    figures: dict[str, float] = {}
    for name, rounds in (("batch1000", 300), ("publishers50", 20)):
        shutil.rmtree(wal_dir, ignore_errors=True)
        h = Harness(wal_dir)
        try:
            run = h.batch if name == "batch1000" else h.publishers
            h.loop.run_until_complete(run())  # warm-up
            start, records = time.perf_counter(), 0
            for _ in range(rounds):
                records += h.loop.run_until_complete(run())
            figures[f"{name}_records_per_s"] = records / (time.perf_counter() - start)
            stats = h.log.stats()
            figures[f"{name}_records_per_fsync"] = stats["records_per_fsync"]
            figures[f"{name}_fsync_p50_ms"] = stats["fsync_p50_ms"]
            figures[f"{name}_fsync_p99_ms"] = stats["fsync_p99_ms"]
        finally:
            h.close()
    shutil.rmtree(wal_dir, ignore_errors=True)
    h = Harness(wal_dir)
    try:
        store_heads(h)
        for kind, suffix in (("hit", ""), ("miss", "?")):
            names = [_name(i) + suffix for i in range(0, HEAD_CHANNELS, 7)]
            start = time.perf_counter()
            for name in names:
                h.log.head_of(name)
            figures[f"head_of_{kind}_us"] = (time.perf_counter() - start) / len(names) * 1e6
    finally:
        h.close()
    return figures


if __name__ == "__main__":
    base = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ferry-wal-bench-")
    for key, value in measure(str(Path(base) / "wal")).items():
        print(f"{key:32} {value:12,.2f}")
