"""Recovery within `HistoryLimits`: the returned state obeys every bound (checked against a
plain reference model of the documented rules), and memory stays bounded while a WAL of
300k+ channels is scanned."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.durability import HistoryLimits, RecoveredState, entry_bytes
from tests.wal.conftest import UNIT, LogFactory, message
from tests.wal.faults import REPO
from wal.heads import HEADS_NAME

Written = list[tuple[str, int, int]]  # (channel, seq, data length), in LSN order 1..n


def _model(written: Written, limits: HistoryLimits) -> dict[str, list[int]]:
    """The documented rules, applied record by record as the scan goes (the naive way):
    channel -> the LSNs its ring keeps."""
    channels: collections.OrderedDict[str, list[tuple[int, int]]] = collections.OrderedDict()
    for lsn, (ch, _seq, size) in enumerate(written, start=1):
        if limits.max_channels <= 0:
            break
        if ch in channels:
            channels.move_to_end(ch)
        else:
            channels[ch] = []
            if len(channels) > limits.max_channels:
                channels.popitem(last=False)
        if limits.size <= 0:
            continue
        ring = channels[ch]
        ring.append((lsn, size + 192))
        while len(ring) > limits.size or sum(c for _, c in ring) > limits.channel_bytes:
            ring.pop(0)
        while sum(c for r in channels.values() for _, c in r) > limits.total_bytes:
            oldest = min((r[0][0], name) for name, r in channels.items() if r)
            channels[oldest[1]].pop(0)
    return {ch: [lsn for lsn, _ in ring] for ch, ring in channels.items()}


def _check(state: RecoveredState, written: Written, limits: HistoryLimits) -> None:
    heads: dict[str, int] = {}
    last_lsn: dict[str, int] = {}
    for lsn, (ch, seq, _) in enumerate(written, start=1):
        heads[ch] = seq
        last_lsn[ch] = lsn
    newest = sorted(last_lsn, key=last_lsn.__getitem__)[-limits.max_channels :]
    if limits.max_channels <= 0:
        newest = []
    assert list(state.heads) == newest  # the most recently written, oldest first
    assert state.heads == {ch: heads[ch] for ch in newest}
    assert set(state.history) <= set(state.heads)
    total = 0
    for ch, ring in state.history.items():
        assert ring, ch
        assert len(ring) <= limits.size
        used = sum(entry_bytes(e) for e in ring)
        assert used <= limits.channel_bytes
        total += used
        seqs = [e.seq for e in ring]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # consecutive
        assert seqs[-1] == state.heads[ch]  # ending at the head
        assert all(e.channel == ch for e in ring)
    assert total <= limits.total_bytes
    expected = {ch: lsns for ch, lsns in _model(written, limits).items() if lsns}
    assert {ch: [e.lsn for e in ring] for ch, ring in state.history.items()} == expected


async def _write(logs: LogFactory, path: Path, written: Written) -> None:
    log, _, handlers = await logs.open(path, history_size=0, segment_bytes=2048)
    for i, (ch, seq, size) in enumerate(written):
        log.append(message(ch, seq, b"x" * size))
        if i % 7 == 6:
            await asyncio.sleep(0)
    await handlers.until_durable(len(written))
    await log.close()


def _written(draws: list[tuple[int, int]]) -> Written:
    seqs: dict[str, int] = {}
    out = []
    for ch_no, size in draws:
        ch = f"c{ch_no}"
        seqs[ch] = seqs.get(ch, 0) + 1
        out.append((ch, seqs[ch], size))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    draws=st.lists(st.tuples(st.integers(0, 7), st.integers(1, 300)), min_size=1, max_size=120),
    size=st.integers(0, 12),
    channel_bytes=st.integers(0, 3000),
    total_bytes=st.integers(0, 8000),
    max_channels=st.integers(0, 9),
)
def test_recovered_state_obeys_every_bound(
    draws: list[tuple[int, int]],
    size: int,
    channel_bytes: int,
    total_bytes: int,
    max_channels: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    written = _written(draws)
    limits = HistoryLimits(size, channel_bytes, total_bytes, max_channels)
    path = tmp_path_factory.mktemp("bounds")

    async def run() -> None:
        logs = LogFactory()
        try:
            await _write(logs, path, written)
            log, state, _ = await logs.open(path, limits=limits, segment_bytes=2048)
            _check(state, written, limits)
            # channels not held are still known to the log
            assert {ch: log.head_of(ch) for ch, seq, _ in written} == {
                ch: seq for ch, seq, _ in written
            }
        finally:
            for log in logs.logs:
                await log.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("limits", "draws"),
    [
        # the total bound drops the globally oldest entry (c0's), not c1's newer ones
        (HistoryLimits(10, 10_000, 3 * 202, 10), [(0, 10), (1, 10), (1, 10), (1, 10)]),
        # a channel over its byte bound keeps only what fits; an entry too big for it: none
        (HistoryLimits(10, 2 * 292, 10**9, 10), [(0, 100), (0, 100), (0, 100), (1, 500)]),
        # the least recently written channel is evicted, its ring with it
        (HistoryLimits(10, 10**9, 10**9, 2), [(0, 1), (1, 1), (2, 1), (0, 1), (1, 1)]),
        # history off: heads only
        (HistoryLimits(0, 10**9, 10**9, 3), [(0, 1), (1, 1), (2, 1), (3, 1)]),
    ],
)
async def test_recovery_bounds_table(
    logs: LogFactory, tmp_path: Path, limits: HistoryLimits, draws: list[tuple[int, int]]
) -> None:
    written = _written(draws)
    await _write(logs, tmp_path, written)
    _, state, _ = await logs.open(tmp_path, limits=limits, segment_bytes=2048)
    _check(state, written, limits)


async def test_a_gap_in_a_channel_starts_its_ring_over(logs: LogFactory, tmp_path: Path) -> None:
    """After a repair gap (seq 3 then 9) a ring cannot be consecutive across it."""
    log, _, handlers = await logs.open(tmp_path)
    for seq in (1, 2, 3, 9, 10):
        log.append(message("g", seq))
    await handlers.until_durable(5)
    await log.close()
    _, state, _ = await logs.open(tmp_path)
    assert [e.seq for e in state.history["g"]] == [9, 10] and state.heads == {"g": 10}


# -- memory while scanning a WAL of 300k+ channels ---------------------------------------

CHANNELS = 320_000
NAME_WIDTH = 200
# Peak RSS of the recovering process over its RSS after the imports. The limits below
# hold <= 1000 channels of <= 10 entries; what remains is the dirty heads (<= 50,000
# channels before a flush to heads.db), the scan's buffers and SQLite's page cache.
# (Measured here: +9 MB with heads.db, +31 MB without; the previous build: +1.2 GB.)
RSS_BOUND_MB = 64

_WRITE = """
import asyncio, sys
from common.durability import Entry, HistoryLimits
from wal import WalLog

async def main():
    log = WalLog(sys.argv[1], node_id="node-a", sync="write", segment_bytes=16 * 1024 * 1024)
    await log.open(HistoryLimits(size=0))
    done = asyncio.Event()
    log.set_handlers(lambda es: es[-1].lsn == {count} and done.set(), lambda es, r: None)
    for i in range({count}):
        log.append(Entry(f"ch.{{i}}.".ljust({width}, "x"), 1, 0, "u", None, 0, b"1"))
        if i % 5000 == 4999:
            await asyncio.sleep(0)
    await asyncio.wait_for(done.wait(), 120)
    await log.close()

asyncio.run(main())
"""

_RECOVER = """
import asyncio, json, sys
from common.durability import HistoryLimits
from wal import WalLog

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

async def main():
    base = rss_mb()
    log = WalLog(sys.argv[1], node_id="node-a")
    limits = HistoryLimits(size=10, channel_bytes=64 * 1024, total_bytes=4 * 2**20,
                           max_channels=1000)
    state = await log.open(limits)
    sample = log.head_of("ch.7.".ljust({width}, "x"))
    await log.close()
    # VmHWM: this process image's peak RSS (ru_maxrss would include the forking parent's)
    with open("/proc/self/status") as f:
        peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    print(json.dumps({{"base": base, "peak": peak, "channels": len(state.heads),
                      "entries": sum(len(r) for r in state.history.values()),
                      "sample": sample}}))

asyncio.run(main())
"""


def _child(code: str, wal_dir: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, str(wal_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("heads_db", [True, False], ids=["heads.db", "no-heads.db"])
def test_recovery_of_300k_channels_keeps_rss_bounded(tmp_path: Path, heads_db: bool) -> None:
    """With heads.db the records after its as_of are few; without (a log whose heads.db
    is gone, first segment at LSN 1, so nothing is lost) every record is "after as_of":
    the dirty heads go to heads.db every 50,000 channels instead of piling up."""
    wal_dir = tmp_path / "wal"
    _child(textwrap.dedent(_WRITE.format(count=CHANNELS, width=NAME_WIDTH)), wal_dir)
    if not heads_db:
        (wal_dir / HEADS_NAME).unlink()
    out = _child(textwrap.dedent(_RECOVER.format(width=NAME_WIDTH)), wal_dir)
    doc = json.loads(out.strip().splitlines()[-1])
    grown = doc["peak"] - doc["base"]
    print(f"recovery of {CHANNELS} channels: +{grown:.1f} MB peak RSS ({doc})")
    assert doc["channels"] == 1000 and doc["entries"] == 1000 and doc["sample"] == 1
    assert grown < RSS_BOUND_MB, doc
