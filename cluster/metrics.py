"""`ferry_cluster_*` in /metrics (docs/cluster.md, "Metrics"), read from the node's counters
at scrape time: nothing is counted twice on the hot path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cluster.node import ClusterNode


class ClusterCollector(Collector):
    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        forwarder, follower, bus = node.forwarder, node.follower, node.bus
        yield GaugeMetricFamily(
            "ferry_cluster_nats_connected", "1 while connected to NATS", value=int(bus.connected)
        )
        counters = (
            ("nats_disconnects", "Times the NATS connection was lost", bus.disconnects),
            ("forwarded", "Publishes forwarded to their channel's owner", forwarder.forwarded),
            ("forward_requests", "Forward requests (one per owner per tick)", forwarder.requests),
            ("forward_no_responders", "Forwards to a node that was down", forwarder.no_responders),
            ("forward_timeouts", "Forwards with no answer in time (unknown)", forwarder.timeouts),
            ("intake", "Forwarded publishes this node took as the owner", node.intake.received),
            ("feeds_published", "Feed messages this node published", node.feed.published),
            ("feed_applied", "Messages delivered from other nodes' feeds", follower.applied),
            ("backfilled", "Messages fetched from an owner to fill a gap", follower.backfilled),
            ("resyncs", "Slot syncs with an owner (follow, gap, restart)", follower.resyncs),
            ("resync_closes", "Subscriptions closed with 4409", follower.resync_closes),
            ("send_failures", "NATS sends that failed", bus.send_failures),
        )
        for name, help_text, value in counters:
            yield CounterMetricFamily(f"ferry_cluster_{name}", help_text, value=value)
        yield GaugeMetricFamily(
            "ferry_cluster_slots_followed",
            "Slots whose feed this node follows",
            value=follower.stats()["slots_followed"],
        )
