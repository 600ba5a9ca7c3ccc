"""`ferry serve` with bench-only instrumentation, for what-if runs of the bench:

    BENCH_TRACEMALLOC_DIR=D      trace allocations; SIGUSR1 dumps a snapshot into D
                                 (snapN.pickle, then snapN.done) — see bench/memtrace.py
    BENCH_PICOWS_SERVER='{...}'  picows protocol arguments forced onto ferry's server
                                 (core/accept.py: max_frame_size, enable_auto_ping,
                                 enable_auto_pong, read_buffer_init_size),
                                 e.g. {"read_buffer_init_size": 16384}

Nothing of ferry is changed on disk: the overrides are applied in this process before
the server starts.

    python -m bench.serve_wrapper [ferry serve flags]
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tracemalloc
from types import FrameType
from typing import Any

TRACEMALLOC_ENV = "BENCH_TRACEMALLOC_DIR"
PICOWS_ENV = "BENCH_PICOWS_SERVER"


def _snapshots(directory: str) -> None:
    tracemalloc.start(1)
    taken = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        taken += 1
        path = os.path.join(directory, f"snap{taken}")
        tracemalloc.take_snapshot().dump(path + ".pickle")
        open(path + ".done", "w").close()

    signal.signal(signal.SIGUSR1, dump)


def _force_picows(overrides: dict[str, Any]) -> None:
    from core import accept

    unknown = set(overrides) - set(accept.PICOWS_OPTIONS)
    if unknown:
        raise SystemExit(f"{PICOWS_ENV}: not a picows option ferry sets: {sorted(unknown)}")
    accept.PICOWS_OVERRIDES.update(overrides)


def main(argv: list[str]) -> int:
    directory = os.environ.get(TRACEMALLOC_ENV)
    if directory:
        _snapshots(directory)
    overrides = json.loads(os.environ.get(PICOWS_ENV) or "{}")
    if overrides:
        _force_picows(overrides)
    from core.cli import main as ferry

    return ferry(["serve", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
