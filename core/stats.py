"""`$sys.stats` (aggregates, every `stats_interval`) and `$sys.tail` (a sampled, capped tail;
`$sys.flow` is core/flow.py).

Both are ephemeral server channels: delivered to admin subscribers, never logged. The
page only ever receives these aggregates and at most `tail_rate` tail items a second,
whatever the traffic through the relay.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from common.durability import Encoding, Entry
from common.service import Loop
from common.stats_doc import DB_OFF, StageLatency, Stats, TailEntry, TopChannel, WalStats
from core.protocol import STATS_CHANNEL, SYS_PREFIX, TAIL_CHANNEL, transcode
from core.relay_state import RelayState
from core.router import Router

TOP_CHANNELS = 10
PREVIEW_CHARS = 200

_json = msgspec.json.Encoder()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _subscribers(router: Router, name: str) -> int:
    ch = router.get(name)
    return ch.subscriber_count if ch is not None else 0


class StatsPublisher:
    def __init__(
        self, hub: RelayState, extra: Callable[[], Mapping[str, Any]] | None = None
    ) -> None:
        self.hub = hub
        self.extra = extra  # services' sections by `Stats` field name ("db")
        self._loop = Loop("ferry-stats", self._round, hub.config.stats_interval)
        self._prev: dict[str, float] = {}
        self._prev_at = time.monotonic()
        self._prev_hist = hub.ack_latency.snapshot()
        self._prev_stages = hub.stages.snapshot()
        self._tail_tokens = float(hub.config.tail_rate)
        self._tail_at = time.monotonic()
        hub.router.add_tap(self._tail)

    name = "stats"

    async def start(self) -> None:
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def stats(self) -> dict[str, Any]:
        return self._loop.stats()

    def _round(self) -> None:
        # A failed snapshot is logged and counted by the Loop; the next one runs anyway.
        ch = self.hub.router.get(STATS_CHANNEL)
        snapshot = self.snapshot()
        if ch is not None and ch.subscriber_count:
            self.hub.router.publish_ephemeral(STATS_CHANNEL, _json.encode(snapshot))

    def snapshot(self) -> Stats:
        """One stats message (the `$sys.stats` data); rates are since the previous call."""
        hub = self.hub
        router = hub.router
        c = router.counters
        now = time.monotonic()
        elapsed = max(now - self._prev_at, 1e-6)
        totals = {
            "msgs_in": float(c.msgs_in),
            "deliveries": float(c.deliveries),
            "bytes_in": float(hub.bytes_in),
            "bytes_out": float(hub.flusher.bytes_out),
        }
        rates = {k: round((v - self._prev.get(k, 0.0)) / elapsed, 1) for k, v in totals.items()}
        hist = hub.ack_latency
        since = self._prev_hist
        # O(channels that got messages in the interval), never O(all channels)
        top = [
            (delta, ch.name, ch.subscriber_count)
            for ch, delta in router.take_active()
            if delta and not ch.name.startswith(SYS_PREFIX)
        ]
        top = heapq.nlargest(TOP_CHANNELS, top)
        log_stats = hub.log.stats()
        doc = Stats(
            node=hub.config.node_id,
            uptime_s=round(time.time() - hub.started_at, 1),
            ts_ms=int(time.time() * 1000),
            connections=len(hub.connections),
            subscriptions=router.subscription_count,
            # what users publish on: not the server's $sys.* nor the connections' inboxes
            channels=len(router.channels) - router.internal_channels,
            history_bytes=router.history_bytes,
            msgs_in_per_s=rates["msgs_in"],
            deliveries_per_s=rates["deliveries"],
            bytes_in_per_s=rates["bytes_in"],
            bytes_out_per_s=rates["bytes_out"],
            ack_p50_ms=_ms(hist.quantile(0.5, since)),
            ack_p99_ms=_ms(hist.quantile(0.99, since)),
            slow_consumer_closes=hub.slow_consumer_closes,
            errors=dict(hub.errors.by_code),
            top_channels=[
                TopChannel(ch=name, rate=round(delta / elapsed, 1), subscribers=subs)
                for delta, name, subs in top
            ],
            wal=WalStats(
                writable=hub.log.writable,
                failure=hub.log.failure,
                sync=hub.config.wal_sync,
                head_lsn=log_stats.get("head_lsn"),
                bytes=log_stats.get("bytes"),
                segments=log_stats.get("segments"),
                fsync_p50_ms=log_stats.get("fsync_p50_ms"),
                fsync_p99_ms=log_stats.get("fsync_p99_ms"),
                records_per_fsync=log_stats.get("records_per_fsync"),
            ),
            db=DB_OFF,
            stages=self._stage_latency(),
        )
        if self.extra is not None:
            # Services' sections (the replayer's "db") replace the fields of the same name.
            doc = msgspec.structs.replace(doc, **self.extra())
        self._prev = totals
        self._prev_at = now
        self._prev_hist = hist.snapshot()
        return doc

    def _stage_latency(self) -> dict[str, StageLatency]:
        """Each stage over the interval since the last snapshot."""
        out: dict[str, StageLatency] = {}
        prev = self._prev_stages
        for name, hist in self.hub.stages.hists.items():
            since = prev[name]
            count = hist.count - sum(since)
            if hist.count:  # a stage this log has (it has timed something, ever)
                out[name] = StageLatency(
                    p50_ms=_ms(hist.quantile(0.5, since)),
                    p99_ms=_ms(hist.quantile(0.99, since)),
                    count=count,
                )
        self._prev_stages = self.hub.stages.snapshot()
        return out

    def _tail(self, entries: list[Entry]) -> None:
        """Sample durable messages into `$sys.tail`, at most `tail_rate` per second."""
        router = self.hub.router
        ch = router.get(TAIL_CHANNEL)
        if ch is None or not ch.subscriber_count:
            return
        rate = self.hub.config.tail_rate
        now = time.monotonic()
        self._tail_tokens = min(float(rate), self._tail_tokens + (now - self._tail_at) * rate)
        self._tail_at = now
        now_ms = time.time() * 1000.0
        for entry in entries:
            if self._tail_tokens < 1.0:
                return
            if entry.channel.startswith(SYS_PREFIX):
                continue
            self._tail_tokens -= 1.0
            try:
                text = (
                    entry.data
                    if entry.encoding == Encoding.JSON
                    else transcode(entry.data, Encoding.MSGPACK, Encoding.JSON)
                )
            except Exception:  # only a value logged before `pub` checked values
                text = b"(a value JSON cannot show)"
            item = TailEntry(
                ch=entry.channel,
                seq=entry.seq,
                sender=entry.sender,
                ts=entry.ts_ms,
                size=len(entry.data),
                preview=text[:PREVIEW_CHARS].decode("utf-8", "replace"),
                lsn=entry.lsn,
                # taps run after the batch's acks and fan-out (Router.on_durable)
                durable_ms=round(max(0.0, now_ms - entry.ts_ms), 3),
                delivered=_subscribers(router, entry.channel),
            )
            router.publish_ephemeral(TAIL_CHANNEL, _json.encode(item))
