"""py-spy on the server during the measured window, and what dominates it.

`py-spy record --format raw` writes folded stacks ("outer;…;leaf COUNT" per line); the
leaf of a stack is where the sample's own time went. Functions are grouped without their
line number, so `flush (core/outbox.py)` is one row however many lines it spans. Idle
samples (threads waiting in epoll or on a lock) are not recorded by py-spy by default, so
the percentages are of the time the server was actually running Python (or, with
`--native`, C under it).
"""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

_LINE_NO = re.compile(r":\d+\)$")
# With --native py-spy keeps samples of a thread waiting in the kernel's event wait: they
# are idle, not work, and are counted apart.
_IDLE_LEAF = re.compile(r"^(epoll_p?wait|e?poll|ppoll|p?select6?|(clock_)?nanosleep) \(")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _function(frame: str) -> str:
    return _LINE_NO.sub(")", frame.strip())


def _rank(own: Counter[str], total: Counter[str], samples: int, limit: int) -> list[dict[str, Any]]:
    return [
        {
            "function": name,
            "own_pct": round(100.0 * own[name] / samples, 2),
            "total_pct": round(100.0 * total[name] / samples, 2),
        }
        for name, _ in own.most_common(limit)
    ]


def top_functions(folded: str, limit: int = 25) -> dict[str, Any]:
    """Own and total sample shares per function from py-spy's raw (folded) output.

    With `--threads` every stack starts with a `thread (TID): NAME` frame: the shares per
    thread are reported, and the functions ranked again for each thread on its own
    (`by_thread`), so that e.g. the event loop is not diluted by a thread that waits
    in fdatasync (py-spy counts a thread in uninterruptible disk wait as active).
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    per_thread: dict[str, tuple[Counter[str], Counter[str]]] = {}
    thread_samples: Counter[str] = Counter()
    samples = 0
    idle = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        thread = "all"
        if frames and frames[0].startswith("thread ("):
            thread = frames[0].partition("): ")[2] or frames[0]
            frames = frames[1:]
        frames = [_function(f) for f in frames]
        if not frames:
            continue
        if _IDLE_LEAF.match(frames[-1]):
            idle += count
            continue
        samples += count
        thread_samples[thread] += count
        t_own, t_total = per_thread.setdefault(thread, (Counter(), Counter()))
        own[frames[-1]] += count
        t_own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
            t_total[name] += count
    if not samples:
        return {"samples": 0, "idle_samples": idle, "top_own": [], "threads": [], "by_thread": {}}
    return {
        "samples": samples,
        "idle_samples": idle,
        "top_own": _rank(own, total, samples, limit),
        "threads": [
            {"thread": t, "samples": n, "pct": round(100.0 * n / samples, 2)}
            for t, n in thread_samples.most_common()
        ],
        "by_thread": {
            t: _rank(t_own, t_total, thread_samples[t], limit)
            for t, (t_own, t_total) in per_thread.items()
        },
    }


class Profiler:
    """Runs `py-spy record` on `pid` for the window; `finish()` returns the analysis."""

    name = "profile"

    def __init__(
        self, pid: int, prefix: str, *, native: bool = False, rate: int = 200, phase: str = "window"
    ) -> None:
        self.pid = pid
        self.phase = phase
        self.raw = f"{prefix}.folded"
        self.native = native
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.seconds: float | None = 0.0
        self.t0 = 0.0
        self.error = ""

    def start(self, seconds: float | None) -> Profiler:
        """Sample for `seconds`, or (None) until `finish()`."""
        exe = py_spy()
        if exe is None:
            self.error = "py-spy is not installed (pip install py-spy)"
            return self
        Path(self.raw).parent.mkdir(parents=True, exist_ok=True)
        self.seconds = seconds
        self.t0 = time.monotonic()
        cmd = [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate)]
        if seconds is not None:
            cmd += ["--duration", str(max(1, math.floor(seconds)))]
        cmd += ["--format", "raw", "--threads", "--output", self.raw]
        # --nonblocking: never stop the server to sample it (less overhead, rare torn
        # stacks). --native needs to stop the process, so it rules --nonblocking out.
        cmd.append("--native" if self.native else "--nonblocking")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def finish(self) -> dict[str, Any]:
        info: dict[str, Any] = {"raw": self.raw, "native": self.native, "rate_hz": self.rate}
        info["phase"] = self.phase
        if self.proc is None:
            info["error"] = self.error
            return info
        if self.seconds is None:
            self.seconds = time.monotonic() - self.t0
            self.proc.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        try:
            _, err = self.proc.communicate(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if self.proc.returncode != 0 or not Path(self.raw).exists():
            info["error"] = (
                f"py-spy exited {self.proc.returncode}: {err.decode(errors='replace')[-500:]}"
            )
            return info
        info.update(top_functions(Path(self.raw).read_text()))
        expected = self.rate * max(1.0, self.seconds or 0.0)
        info["busy_fraction"] = round(info["samples"] / expected, 3) if expected else None
        return info
