"""A fixed-bucket latency histogram cheap enough for the ack path (one bisect + one add).

It backs the Prometheus `ferry_ack_latency_seconds` histogram and the dashboard's
p50/p99, which are estimated from the bucket counts of the last interval.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds; upper bounds of the buckets (the last, +Inf, is implicit).
DEFAULT_BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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
