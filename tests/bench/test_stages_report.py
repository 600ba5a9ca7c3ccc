"""bench/stages.py: the per-stage breakdown a benchmark reports is the server's histograms
(as /metrics exposes them) subtracted over the window."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from bench.stages import Buckets, metrics_url, parse, summarize
from common.latency import PUBLISH_STAGES, Stages
from core.metrics import stage_family


class _Stages(Collector):
    def __init__(self, stages: Stages) -> None:
        self.stages = stages

    def collect(self) -> Iterator[Metric]:
        yield stage_family(self.stages)


def _scrape(registry: CollectorRegistry) -> Buckets:
    return parse(generate_latest(registry).decode())


def test_the_window_is_the_difference_of_two_scrapes() -> None:
    stages = Stages()
    registry = CollectorRegistry()
    registry.register(_Stages(stages))
    for _ in range(100):
        stages.observe("fsync", 0.004)  # before the window: 4 ms
    before = _scrape(registry)
    assert set(before) == set(PUBLISH_STAGES)  # every stage is exposed, timed or not
    for _ in range(300):
        stages.observe("fsync", 0.00012)  # in the window: 0.12 ms
        stages.observe("flush", 0.0009)
    summary = summarize(before, _scrape(registry))
    assert list(summary) == ["fsync", "flush"]  # path order, only stages that timed anything
    assert summary["fsync"]["count"] == 300
    assert 0.1 <= summary["fsync"]["p50_ms"] <= 0.15  # its bucket, not the 4 ms before
    assert 0.75 <= summary["flush"]["p99_ms"] <= 1.0


def test_metrics_url_from_the_websocket_url() -> None:
    assert metrics_url("ws://127.0.0.1:8080/ws") == "http://127.0.0.1:8080/metrics"
    assert metrics_url("wss://relay.example/ws") == "https://relay.example/metrics"
