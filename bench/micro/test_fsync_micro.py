"""fdatasync after a small write: a growing file vs a preallocated one, and what a
rotation costs on the sync thread with and without a file the pipeline made ahead.

    pytest bench/micro/test_fsync_micro.py --benchmark-enable   # timed rounds
    pytest bench/micro/test_fsync_micro.py                      # each runs once (smoke)
    python -m bench.micro.test_fsync_micro [DIR]                # p50/p99 of each

`append`: each 400-byte write extends the file (what a segment without preallocation
does), so every fdatasync also commits the new size and block allocation. `fallocate`:
the same writes into space `posix_fallocate` reserved (unwritten extents: fdatasync
commits their conversion, no allocation). `zero`: into zeros written and synced up front.
`rotate_inline`: create a segment as a rotation did before the pipeline (create, header,
fdatasync, rename, directory fsync) and write + fdatasync the first batch into it.
`rotate_ready`: the same with a file made ahead (`wal.segment.install_segment`: header and
batch in one write, one fdatasync, rename, directory fsync). `prepare_*` (script only):
what making one 64 MiB file costs the pipeline's thread, per mode. DIR (default: a new temp
dir) must be on the disk the WAL uses: a tmpfs measures nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wal.segment import (
    PREALLOC_VERSION,
    create_segment,
    encode_header,
    install_segment,
    prepare_file,
    pwrite_all,
)

pytestmark = pytest.mark.bench

RECORD = b"r" * 400  # about one publish, framed
FILE_BYTES = 64 * 1024 * 1024  # the default segment size
MODES = ("append", "fallocate", "zero")


class SyncFile:
    """One file written 400 bytes at a time, each write fdatasync'ed."""

    def __init__(self, path: str, mode: str) -> None:
        self.fd = prepare_file(path, 0 if mode == "append" else FILE_BYTES, _prepare(mode))
        self.offset = 0

    def write_and_sync(self) -> float:
        """One write + fdatasync; returns the fdatasync's seconds."""
        if self.offset + len(RECORD) > FILE_BYTES:
            os.ftruncate(self.fd, 0)  # (only after 160k rounds: start over)
            self.offset = 0
        pwrite_all(self.fd, self.offset, RECORD)
        self.offset += len(RECORD)
        start = time.perf_counter()
        os.fdatasync(self.fd)
        return time.perf_counter() - start

    def close(self) -> None:
        os.close(self.fd)


def _prepare(mode: str) -> str:
    return "off" if mode == "append" else mode


def rotate_inline(wal_dir: str, first_lsn: int) -> float:
    """Seconds a rotation batch spends before it is durable, creating the segment inline."""
    start = time.perf_counter()
    fd = create_segment(wal_dir, first_lsn, encode_header("bench", first_lsn))
    pwrite_all(fd, 96, RECORD)
    os.fdatasync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


def rotate_ready(wal_dir: str, first_lsn: int) -> float:
    """The same with a file made ahead (its making is not timed: the pipeline's thread)."""
    tmp = os.path.join(wal_dir, f"ready-{first_lsn}.wal.tmp")
    fd = prepare_file(tmp, FILE_BYTES, "fallocate")
    start = time.perf_counter()
    install_segment(
        wal_dir, fd, tmp, first_lsn, encode_header("bench", first_lsn, PREALLOC_VERSION), RECORD
    )
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


@pytest.fixture(params=MODES)
def sync_file(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SyncFile]:
    f = SyncFile(str(tmp_path / "f"), request.param)
    yield f
    f.close()


def test_fdatasync_after_a_small_write(benchmark: object, sync_file: SyncFile) -> None:
    seconds = benchmark(sync_file.write_and_sync)  # type: ignore[operator]
    assert seconds > 0 and sync_file.offset > 0


@pytest.mark.parametrize("rotate", [rotate_inline, rotate_ready], ids=["inline", "ready"])
def test_rotation_batch(
    benchmark: object, tmp_path: Path, rotate: Callable[[str, int], float]
) -> None:
    lsns = iter(range(1, 1_000_000))
    seconds = benchmark(lambda: rotate(str(tmp_path), next(lsns)))  # type: ignore[operator]
    assert seconds > 0 and any(p.name.endswith(".wal") for p in tmp_path.iterdir())


def _quantiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return samples[len(samples) // 2] * 1e3, samples[int(len(samples) * 0.99)] * 1e3


def measure(base: str, rounds: int = 3000, rotations: int = 200) -> dict[str, float]:
    """fdatasync p50/p99 (ms) per mode, the modes interleaved in slices so that a noisy
    neighbour on the shared disk hits all of them alike; rotation p50/p99 (ms)."""
    files = {mode: SyncFile(os.path.join(base, f"sync-{mode}"), mode) for mode in MODES}
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for _ in range(rounds // 100):
            for mode, f in files.items():
                samples[mode] += [f.write_and_sync() for _ in range(100)]
    finally:
        for f in files.values():
            f.close()
    figures: dict[str, float] = {}
    for mode in MODES:
        figures[f"fdatasync_{mode}_p50_ms"], figures[f"fdatasync_{mode}_p99_ms"] = _quantiles(
            samples[mode]
        )
    for mode in ("fallocate", "zero"):  # what the pipeline's thread spends per segment
        taken = []
        for n in range(5):
            path = os.path.join(base, f"prepare-{mode}-{n}")
            start = time.perf_counter()
            os.close(prepare_file(path, FILE_BYTES, mode))
            taken.append(time.perf_counter() - start)
            os.unlink(path)
        figures[f"prepare_{mode}_64MiB_ms"] = sorted(taken)[len(taken) // 2] * 1e3
    for name, rotate in (("inline", rotate_inline), ("ready", rotate_ready)):
        wal_dir = os.path.join(base, f"rotate-{name}")
        os.makedirs(wal_dir)
        taken = []
        for lsn in range(1, rotations + 1):
            taken.append(rotate(wal_dir, lsn))
            os.unlink(os.path.join(wal_dir, f"{lsn:020d}.wal"))
        figures[f"rotation_{name}_p50_ms"], figures[f"rotation_{name}_p99_ms"] = _quantiles(taken)
    return figures


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory(prefix="ferry-fsync-bench-", dir=root) as base:
        for key, value in measure(base).items():
            print(f"{key:32} {value:10.3f}")
