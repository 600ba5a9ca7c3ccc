"""ferry's one latency histogram: fixed buckets, cheap enough for the ack path (one
bisect + one add), quantiles estimated from bucket counts.

It backs the Prometheus `ferry_ack_latency_seconds` histogram, the dashboard's p50/p99
(from the counts of the last interval: `snapshot()` then `quantile(q, since=...)`) and
the WAL's fsync figures (`RecentQuantiles`). Exact percentiles of a finished run are the
benchmark's business (HdrHistogram, bench/report.py), not the server's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

# Seconds; upper bounds of the buckets (the last, +Inf, is implicit): 1-2-5 steps from
# 10 us, fine enough to tell a 0.15 ms fdatasync from a 0.4 ms one.
DEFAULT_BOUNDS: tuple[float, ...] = (
    0.00001, 0.00002, 0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class LatencyHistogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.total += seconds

    def snapshot(self) -> list[int]:
        return list(self.counts)

    def quantile(self, q: float, since: list[int] | None = None) -> float | None:
        """Estimate the q-quantile (seconds) of observations after snapshot `since`."""
        counts = (
            self.counts
            if since is None
            else [a - b for a, b in zip(self.counts, since, strict=True)]
        )
        n = sum(counts)
        if n == 0:
            return None
        rank = q * n
        seen = 0
        lower = 0.0
        for i, c in enumerate(counts):
            upper = self.bounds[i] if i < len(self.bounds) else self.bounds[-1] * 2
            if c and seen + c >= rank:
                # linear interpolation inside the bucket
                return lower + (upper - lower) * ((rank - seen) / c)
            seen += c
            lower = upper
        return self.bounds[-1]

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs in Prometheus form, +Inf last."""
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((repr(bound), float(acc)))
        out.append(("+Inf", float(self.count)))
        return out


class RecentQuantiles:
    """Quantiles of a histogram over roughly the last `window` seconds, the same for every
    reader (the stats publisher and the webhook watch both ask, at their own pace)."""

    __slots__ = ("_at", "_base", "_clock", "_hist", "_next", "window")

    def __init__(self, hist: LatencyHistogram, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self._hist = hist
        self._clock = clock
        self._base = hist.snapshot()  # counts as of the start of the current window
        self._next = self._base  # counts as of the start of the next one
        self._at = clock()

    def quantile(self, q: float) -> float | None:
        now = self._clock()
        if now - self._at >= self.window / 2:
            # the window slides by half: it always spans between window/2 and window
            self._base, self._next = self._next, self._hist.snapshot()
            self._at = now
        return self._hist.quantile(q, self._base)


# The publish path, stage by stage (docs/benchmarks.md, "Where durable latency goes").
# Each is timed once per batch (a WAL batch, a flush), never per message.
PUBLISH_STAGES: dict[str, str] = {
    "queue": "first record of a batch appended -> the sync thread is free for it (handed "
    "over, or the batch ahead of it synced: includes waiting for the batches before it)",
    "handoff": "the sync thread is free for the batch -> it starts writing",
    "write": "write(2) of the batch",
    "fsync": "fdatasync of the batch",
    "wake": "the thread is done -> the event loop runs the batch's completion",
    "deliver": "the completion: bookkeeping, acks queued, fan-out into outboxes",
    "flush": "the completion done -> the next outbox flush has written to the sockets",
}


class Stages:
    """One `LatencyHistogram` per stage of the publish path (`PUBLISH_STAGES`).

    The log observes the stages it has (a memory log has none of the disk ones); the relay
    observes `flush`. `$sys.stats` shows each stage's quantiles over the last interval and
    /metrics exports them as `ferry_publish_stage_seconds{stage=...}`."""

    __slots__ = ("hists",)

    def __init__(self) -> None:
        self.hists: dict[str, LatencyHistogram] = {
            name: LatencyHistogram() for name in PUBLISH_STAGES
        }

    def observe(self, stage: str, seconds: float) -> None:
        self.hists[stage].observe(seconds)

    def snapshot(self) -> dict[str, list[int]]:
        return {name: hist.snapshot() for name, hist in self.hists.items()}
