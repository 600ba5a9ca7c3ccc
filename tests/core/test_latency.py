"""The latency histogram: quantiles within a bucket's width, and per snapshot."""

from __future__ import annotations

from common.latency import LatencyHistogram


def test_quantiles_fall_in_the_observed_values_bucket() -> None:
    h = LatencyHistogram()
    for _ in range(99):
        h.observe(0.0002)
    h.observe(0.2)
    p50 = h.quantile(0.5)
    p999 = h.quantile(0.999)
    assert p50 is not None and 0.0001 <= p50 <= 0.00025
    assert p999 is not None and 0.1 <= p999 <= 0.25


def test_a_quantile_since_a_snapshot_sees_only_later_observations() -> None:
    h = LatencyHistogram()
    h.observe(0.0002)
    snap = h.snapshot()
    assert h.quantile(0.5, snap) is None
    h.observe(0.2)
    p50 = h.quantile(0.5, snap)
    assert p50 is not None and p50 >= 0.1


def test_cumulative_counts_end_with_inf_holding_every_observation() -> None:
    h = LatencyHistogram(bounds=(0.001, 0.01))
    for seconds in (0.0005, 0.005, 0.005, 3.0):
        h.observe(seconds)
    assert h.cumulative() == [("0.001", 1.0), ("0.01", 3.0), ("+Inf", 4.0)]
