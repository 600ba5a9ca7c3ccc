"""One node of a cluster: its NATS connection and the parts that use it, wired to the
relay through `core.remote.Remote` (docs/cluster.md).

    start():  connect -> subscribe fwd.<node>, ctl.<node>, hb.* -> a request to itself
              (the reply inbox exists before the first forward) -> heartbeats
    stop():   heartbeats -> flush what is queued (answers, feeds) -> close
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

from cluster import wire
from cluster.bus import NatsBus
from cluster.feed import FeedPublisher, Follower
from cluster.forward import Forwarder, Intake
from cluster.history import Answers, ClusterHistory
from cluster.slots import SlotMap, slot_of
from common.durability import DurableLog, HistoryStore
from common.service import Loop
from core.config import Config
from core.dedupe import Publisher
from core.protocol import SYS_PREFIX
from core.remote import Forwarded, Ready
from core.router import Router

log = logging.getLogger("ferry.cluster")

CONNECT_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 2.0
HEARTBEAT_S = 1.0


def digest_of(cluster_id: str, nodes: tuple[str, ...]) -> str:
    text = cluster_id + "\n" + ",".join(sorted(nodes))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class ClusterNode:
    name = "cluster"

    def __init__(
        self,
        config: Config,
        router: Router,
        durable_log: DurableLog,
        loop: asyncio.AbstractEventLoop,
        spawn: Callable[[Any], object],
        lsn_now: Callable[[], int],
        local_history: HistoryStore | None,
    ) -> None:
        self.node = config.node_id
        self.cluster_id = cid = config.cluster_id
        self.slots = SlotMap(config.cluster_nodes)
        self.bus = NatsBus(config.nats_url, f"ferry {cid} {self.node}")
        self.incarnation = secrets.token_hex(8)
        digest = digest_of(cid, self.slots.nodes)
        self._router = router
        owners = self.slots.owners
        self.follower = Follower(
            router, owners.__getitem__, self._control, self._subscribe_feed, spawn, lsn_now
        )
        self.forwarder = Forwarder(
            self.bus,
            lambda node: f"{cid}.fwd.{node}",
            self.slots.owner_of,
            digest,
            loop,
            spawn,
            self.follower.epochs,
        )
        self.intake = Intake(router, digest, self._owns)
        self.feed = FeedPublisher(self.bus.publish, cid, self.node, self.incarnation)
        self.answers = Answers(
            router, durable_log, self.feed.counters, self.incarnation, local_history, spawn
        )
        self.history = ClusterHistory(self.slots, self.node, local_history, self._control)
        self._heartbeat = Loop("cluster heartbeat", self._beat, HEARTBEAT_S)
        self._joined = False

    # --- core.remote.Remote ------------------------------------------------------------

    def _owns(self, channel: str) -> bool:
        return self.slots.owners[slot_of(channel)] == self.node

    def elsewhere(self, channel: str) -> bool:
        # `$sys.*` is each node's own (its stats), never forwarded
        return not channel.startswith(SYS_PREFIX) and not self._owns(channel)

    def publish(self, publisher: Publisher | None, request: Forwarded) -> None:
        self.forwarder.publish(publisher, request)

    def ready(self, channel: str) -> bool:
        return not self.elsewhere(channel) or self.follower.ready(channel)

    def epoch_of(self, channel: str) -> str | None:
        if not self.elsewhere(channel):
            return None
        return self.follower.epochs.get(self.slots.owner_of(channel))

    def follow(self, channel: str, then: Ready | None) -> None:
        self.follower.follow(channel, then)

    def owner_of(self, channel: str) -> str:
        return self.node if channel.startswith(SYS_PREFIX) else self.slots.owner_of(channel)

    # --- NATS --------------------------------------------------------------------------

    async def _control(self, owner: str, request: bytes) -> bytes:
        return await self.bus.request(f"{self.cluster_id}.ctl.{owner}", request, CONTROL_TIMEOUT_S)

    async def _subscribe_feed(self, slot: int) -> None:
        follower = self.follower

        def on_feed(payload: bytes, _reply: Callable[[bytes], None] | None) -> None:
            follower.on_feed(slot, wire.FEED.decode(payload))

        await self.bus.subscribe(f"{self.cluster_id}.feed.{slot}", on_feed)

    def _on_heartbeat(self, payload: bytes, _reply: Callable[[bytes], None] | None) -> None:
        hb = wire.HEARTBEAT.decode(payload)
        if hb.node != self.node:
            self.follower.on_heartbeat(hb)

    def not_ready(self) -> str | None:
        """/readyz: red until this node has joined the cluster (NATS connected, its
        subjects served). A NATS outage later leaves it green: its own channels still work."""
        return None if self._joined else "cluster: not joined yet (connecting to NATS)"

    def _beat(self) -> None:
        if self.bus.connected:
            self.feed.heartbeat()

    async def start(self) -> None:
        cid, node = self.cluster_id, self.node
        await self.bus.connect(CONNECT_TIMEOUT_S)
        try:
            await self.bus.subscribe(f"{cid}.fwd.{node}", self.intake.handle)
            await self.bus.subscribe(f"{cid}.ctl.{node}", self.answers.handle)
            await self.bus.subscribe(f"{cid}.hb.*", self._on_heartbeat)
            # A request to itself: NATS works, and the shared reply inbox exists, so the
            # forwards that follow are sent in the order they were made.
            await self._control(node, wire.ENCODE(wire.Sync(0, [])))
            self._router.add_tap(self.feed.tap)
            await self._heartbeat.start()
            self._joined = True
        except BaseException:
            await self.bus.close()
            raise
        log.info(
            "cluster node up",
            extra={
                "node": node,
                "cluster": cid,
                "nodes": ",".join(self.slots.nodes),
                "slots_owned": len(self.slots.slots_of(node)),
                "nats": self.bus.url,
            },
        )

    async def stop(self) -> None:
        await self._heartbeat.stop()
        await self.bus.close()

    def stats(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "nats_connected": self.bus.connected,
            "nats_disconnects": self.bus.disconnects,
            "send_failures": self.bus.send_failures,
            "feeds_published": self.feed.published,
            **self.forwarder.stats(),
            **self.intake.stats(),
            **self.follower.stats(),
        }
