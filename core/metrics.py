"""Prometheus metrics, read from the hub's plain counters at scrape time.

The hot path only bumps integers; this collector turns them into metric families when
/metrics is scraped, so a delivery never takes a prometheus-client lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from common.latency import PUBLISH_STAGES, Stages

if TYPE_CHECKING:
    from core.relay_state import RelayState


def stage_family(stages: Stages) -> HistogramMetricFamily:
    """`ferry_publish_stage_seconds{stage}`: one histogram per stage of the publish path."""
    family = HistogramMetricFamily(
        "ferry_publish_stage_seconds",
        "Time a publish spends in each stage of its path, timed per WAL batch or flush "
        "(stage: " + ", ".join(PUBLISH_STAGES) + ")",
        labels=["stage"],
    )
    for name, hist in stages.hists.items():
        family.add_metric([name], hist.cumulative(), hist.total)
    return family


class RelayCollector(Collector):
    def __init__(self, hub: RelayState) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        router = hub.router
        c = router.counters
        yield GaugeMetricFamily(
            "ferry_connections", "Open WebSocket connections", value=len(hub.connections)
        )
        yield CounterMetricFamily(
            "ferry_connections", "Accepted WebSocket connections", value=hub.connections_total
        )
        yield GaugeMetricFamily(
            "ferry_subscriptions", "Channel subscriptions", value=router.subscription_count
        )
        yield GaugeMetricFamily(
            "ferry_channels", "Channels known to this node", value=len(router.channels)
        )
        yield CounterMetricFamily(
            "ferry_channels_forgotten",
            "Idle channels dropped from memory (their seq continues from the log)",
            value=c.channels_forgotten,
        )
        yield CounterMetricFamily(
            "ferry_channels_refused",
            "New channels refused with limit_exceeded (node or user channel bound)",
            value=c.channels_refused,
        )
        yield GaugeMetricFamily(
            "ferry_history_bytes", "Bytes held by the history rings", value=router.history_bytes
        )
        yield CounterMetricFamily(
            "ferry_history_dropped",
            "History entries dropped to stay within the history bounds",
            value=c.history_dropped,
        )
        yield CounterMetricFamily(
            "ferry_fanout_faults",
            "Channel groups whose fan-out raised (the others were delivered)",
            value=c.fanout_faults,
        )
        yield CounterMetricFamily(
            "ferry_messages_in", "Messages accepted for publishing", value=c.msgs_in
        )
        yield CounterMetricFamily("ferry_acks", "Publishes acknowledged (durable)", value=c.acks)
        yield CounterMetricFamily(
            "ferry_deliveries", "Messages delivered to subscribers", value=c.deliveries
        )
        yield CounterMetricFamily(
            "ferry_publish_failures", "Publishes the log refused", value=c.publish_failures
        )
        dedupe = router.dedupe
        yield GaugeMetricFamily(
            "ferry_dedupe_entries",
            "Publish mids remembered (idempotent publish)",
            value=len(dedupe),
        )
        yield CounterMetricFamily(
            "ferry_dedupe_hits",
            "Publishes answered as duplicates of an earlier mid",
            value=c.duplicates,
        )
        yield CounterMetricFamily(
            "ferry_dedupe_evictions",
            "Mids forgotten before their window ran out (FERRY_DEDUPE_MAX_ENTRIES reached)",
            value=dedupe.evictions,
        )
        yield CounterMetricFamily(
            "ferry_bytes_in", "Payload bytes received from clients", value=hub.bytes_in
        )
        yield CounterMetricFamily(
            "ferry_bytes_out", "Bytes written to clients", value=hub.flusher.bytes_out
        )
        yield CounterMetricFamily(
            "ferry_slow_consumer_closes",
            "Connections closed with 4408",
            value=hub.slow_consumer_closes,
        )
        errors = CounterMetricFamily("ferry_errors", "Error frames sent, by code", labels=["code"])
        for code, count in sorted(hub.errors.by_code.items()):
            errors.add_metric([code], count)
        yield errors
        rejected = CounterMetricFamily(
            "ferry_upgrade_rejections", "Refused upgrades, by reason", labels=["reason"]
        )
        for reason, count in sorted(hub.rejections.items()):
            rejected.add_metric([reason], count)
        yield rejected
        hist = hub.ack_latency
        yield HistogramMetricFamily(
            "ferry_ack_latency_seconds",
            "Publish received -> ack queued (includes the WAL fdatasync)",
            buckets=hist.cumulative(),
            sum_value=hist.total,
        )
        yield stage_family(hub.stages)
        yield GaugeMetricFamily(
            "ferry_log_writable", "1 when the log accepts writes", value=int(hub.log.writable)
        )
        yield GaugeMetricFamily(
            "ferry_ready", "1 when /readyz is green", value=int(hub.not_ready_reason() is None)
        )
        if hub.db_status is not None:
            db = hub.db_status()
            yield GaugeMetricFamily(
                "ferry_db_up", "1 when the replayer's database answers", value=int(db.up)
            )
            yield GaugeMetricFamily(
                "ferry_replay_lag_records",
                "Durable WAL records not yet in the database",
                value=db.lag_records,
            )
            yield GaugeMetricFamily(
                "ferry_replay_lag_seconds",
                "Age of the oldest record not yet in the database",
                value=db.lag_seconds,
            )
            yield GaugeMetricFamily(
                "ferry_replay_checkpoint_lsn",
                "Last LSN committed to the database",
                value=db.checkpoint_lsn,
            )
            yield CounterMetricFamily(
                "ferry_replay_rows",
                "Rows written to the database (rate() gives rows/s)",
                value=db.rows,
            )


def register_relay(registry: CollectorRegistry, hub: RelayState) -> None:
    """The relay's metrics, in the registry the WAL's (wal/metrics.py) are in too."""
    registry.register(RelayCollector(hub))
