"""Where ferry's publish latency lives during a benchmark: the server's own per-stage
histograms (`ferry_publish_stage_seconds{stage}`, common.latency.PUBLISH_STAGES), read
from /metrics at the start and the end of the measured window and subtracted, so the
figures cover exactly the window.

Quantiles come from the server's fixed buckets (1-2-5 steps from 10 µs), interpolated
inside a bucket: they say which stage holds the time, to within a bucket; the client's
HdrHistogram (publish->deliver) stays the exact end-to-end figure.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from common.latency import PUBLISH_STAGES, LatencyHistogram

METRIC = "ferry_publish_stage_seconds"
Buckets = dict[str, dict[float, float]]  # stage -> upper bound -> cumulative count


def metrics_url(ws_url: str) -> str:
    """ws://host:port/ws -> http://host:port/metrics"""
    scheme, rest = ws_url.split("://", 1)
    host = rest.split("/", 1)[0]
    return f"{'https' if scheme == 'wss' else 'http'}://{host}/metrics"


def parse(text: str) -> Buckets:
    out: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            if sample.name == METRIC + "_bucket":
                bound = float(sample.labels["le"])
                out.setdefault(sample.labels["stage"], {})[bound] = sample.value
    return out


def scrape(url: str, timeout: float = 5.0) -> Buckets:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse(resp.read().decode())


def summarize(before: Buckets, after: Buckets) -> dict[str, dict[str, Any]]:
    """Per stage, in path order: how many batches it timed in between, p50 and p99 (ms)."""
    out: dict[str, dict[str, Any]] = {}
    for stage in PUBLISH_STAGES:
        end = after.get(stage)
        if not end:
            continue
        start = before.get(stage, {})
        bounds = sorted(b for b in end if b != float("inf"))
        hist = LatencyHistogram(tuple(bounds))
        previous = 0.0
        for i, bound in enumerate([*bounds, float("inf")]):
            cumulative = end[bound] - start.get(bound, 0.0)
            hist.counts[i] = round(cumulative - previous)
            previous = cumulative
        hist.count = sum(hist.counts)
        if not hist.count:
            continue
        p50, p99 = hist.quantile(0.5), hist.quantile(0.99)
        out[stage] = {
            "count": hist.count,
            "p50_ms": None if p50 is None else round(p50 * 1000.0, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000.0, 3),
        }
    return out


class StageWatcher:
    """A `bench.runner.Watcher`: the stage breakdown over the measured window."""

    name = "stages"

    def __init__(self, ws_url: str) -> None:
        self.url = metrics_url(ws_url)
        self._before: Buckets | None = None

    def start(self) -> StageWatcher:
        try:
            self._before = scrape(self.url)
        except OSError:
            self._before = None  # not a ferry, or no /metrics: nothing to report
        return self

    def finish(self) -> dict[str, Any]:
        if self._before is None:
            return {}
        try:
            return summarize(self._before, scrape(self.url))
        except OSError:
            return {}


def format_stages(stages: dict[str, dict[str, Any]]) -> str:
    parts = [
        f"{name} {s['p50_ms']:.3f}/{s['p99_ms']:.3f}"
        for name, s in stages.items()
        if s.get("p50_ms") is not None
    ]
    return "stages (server, p50/p99 ms per batch): " + "  ".join(parts)
