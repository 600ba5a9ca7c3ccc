"""Where the server's memory per connection goes: tracemalloc snapshots of `ferry serve`
taken before and after the connections arrive (`ferry bench connections --tracemalloc`).

The server runs under bench/serve_wrapper.py, which traces allocations and dumps a
snapshot on SIGUSR1. Everything allocated through Python's allocators is traced, which
includes picows' buffers (PyMem_Malloc) and the Python objects of each connection;
kernel socket buffers and memory malloc'ed directly by C libraries are not. Tracing
costs memory of its own: the RSS figures of such a run are inflated, the diff is not.
"""

from __future__ import annotations

import os
import signal
import time
import tracemalloc
from pathlib import Path
from typing import Any

SNAPSHOT_TIMEOUT_S = 120.0


class MemorySnapshots:
    """`start()` snapshots now; `finish()` snapshots again and ranks the growth by line."""

    name = "memory"

    def __init__(self, pid: int, directory: str, limit: int = 20) -> None:
        self.pid = pid
        self.dir = Path(directory)
        self.limit = limit
        self.taken = 0
        self.before: Path | None = None

    def _take(self) -> Path:
        self.taken += 1
        done = self.dir / f"snap{self.taken}.done"
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + SNAPSHOT_TIMEOUT_S
        while not done.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no tracemalloc snapshot from pid {self.pid}")
            time.sleep(0.05)
        return self.dir / f"snap{self.taken}.pickle"

    def start(self) -> MemorySnapshots:
        self.before = self._take()
        return self

    def finish(self) -> dict[str, Any]:
        assert self.before is not None
        after = tracemalloc.Snapshot.load(str(self._take()))
        before = tracemalloc.Snapshot.load(str(self.before))
        stats = after.compare_to(before, "lineno")
        grown = sorted((s for s in stats if s.size_diff > 0), key=lambda s: -s.size_diff)
        return {
            "traced_growth_bytes": sum(s.size_diff for s in stats),
            "top": [
                {
                    "site": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                    "bytes": s.size_diff,
                    "blocks": s.count_diff,
                }
                for s in grown[: self.limit]
            ],
        }
