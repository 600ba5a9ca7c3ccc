"""The state one relay process shares between its connections. Built once by the server
(core/server.py) and handed to every `Connection`; nothing in it does I/O of its own.

What it holds, and who reads it:

    routing     router, flusher, log, loop      Connection, Session (through the router)
    admission   config, auth, limits            accept path (core/accept.py), Session
    live set    connections, next_conn_id(),    Keepalive, shutdown, stats; on_connect /
                on_connect, on_disconnect       on_disconnect are the extensions' hooks
    counters    errors, ack_latency, bytes_in,  StatsPublisher, /metrics (core/metrics.py)
                slow_consumer_closes,
                connections_total, rejections
    health      closing, started_at, db_status  /healthz, /readyz (core/http.py); db_status
                                                is set by the composition root, never by wal
    http        http                            the request-head reader (core/accept.py)

It is a record of shared parts, not a locator: nothing looks a part up by name, and
each part is an object with its own typed interface. Per-connection state lives in
`Session` and `WebSocket`, per-channel state in the router.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from common.durability import DurableLog, HistoryLimits
from common.latency import LatencyHistogram
from common.stats_doc import DbStatus
from core.auth import Authenticator
from core.config import Config
from core.dedupe import DedupeIndex
from core.http import HttpRoutes
from core.outbox import Flusher
from core.router import Router
from core.session import ErrorCounter, Limits

if TYPE_CHECKING:
    from core.listener import Connection

log = logging.getLogger("ferry.relay")


def history_limits(config: Config) -> HistoryLimits:
    return HistoryLimits(
        size=config.history_size,
        channel_bytes=config.history_channel_bytes,
        total_bytes=config.history_total_bytes,
        max_channels=config.max_channels,
        mids=config.dedupe_max_entries if config.dedupe_window_s > 0 else 0,
    )


class RelayState:
    def __init__(
        self, config: Config, durable_log: DurableLog, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.config = config
        self.loop = loop
        self.log = durable_log
        self.ack_latency = LatencyHistogram()
        self.router = Router(
            durable_log,
            history_limits(config),
            self.ack_latency.observe,
            max_channels_per_user=config.max_channels_per_user,
            dedupe=DedupeIndex(config.dedupe_window_s, config.dedupe_max_entries, time.time),
        )
        self.stages = durable_log.stages  # the log's stages, then the relay's (flush)
        self.flusher = Flusher(loop.call_soon, self.stages.hists["flush"])
        self.router.add_tap(lambda _entries: self.flusher.time_next_flush())
        self.auth = Authenticator(config)
        self.limits = Limits(
            max_subscriptions=config.max_subscriptions,
            max_data_bytes=config.data_limit,
            publish_rate=config.publish_rate,
            publish_burst=config.publish_burst,
            rate_abuse_limit=config.rate_abuse_limit,
            max_data_depth=config.max_data_depth,
            max_frame_bytes=config.max_frame_bytes,
            history_size=config.history_size,
            dedupe_window_s=config.dedupe_window_s,
            idle_timeout_s=config.idle_timeout,
        )
        self.errors = ErrorCounter()
        self.connections: dict[Connection, None] = {}
        self.bytes_in = 0
        self.slow_consumer_closes = 0
        self.connections_total = 0
        self.rejections: dict[str, int] = {}
        self.closing = False
        self.started_at = time.time()
        self.http = HttpRoutes(self)
        # Connection event hooks (the log records connects and disconnects).
        self.on_connect: list[Callable[[Connection], None]] = []
        # The database log's state for /metrics (set by the replay service when it runs).
        self.db_status: Callable[[], DbStatus] | None = None
        self.on_disconnect: list[Callable[[Connection], None]] = []
        # Extensions' say on /readyz: each returns why the node is not ready, or None.
        self.readiness: list[Callable[[], str | None]] = []
        self._ids = itertools.count(1)
        self._by_id: dict[str, Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._id_prefix = f"{config.node_id}-{int(self.started_at) % 100000:05d}-"

    def next_conn_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` on the loop, held until it ends (a failure is logged, not lost)."""
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    def connection(self, conn_id: str) -> Connection | None:
        """The connection whose `welcome.client` this is (the HTTP API's `exclude_client`)."""
        return self._by_id.get(conn_id)

    def waiting(self, conn: Connection) -> None:
        """A connection waiting for its first-frame `auth`: counted and closed at
        shutdown like any other, but the connect hooks wait until it is in."""
        self.connections[conn] = None
        self._by_id[conn.conn_id] = conn

    def stopped_waiting(self, conn: Connection) -> None:
        self.connections.pop(conn, None)
        self._by_id.pop(conn.conn_id, None)

    def connected(self, conn: Connection) -> None:
        self.connections[conn] = None
        self._by_id[conn.conn_id] = conn
        self.connections_total += 1
        for hook in self.on_connect:
            hook(conn)

    def disconnected(self, conn: Connection) -> None:
        self._by_id.pop(conn.conn_id, None)
        if self.connections.pop(conn, 0) is None:
            for hook in self.on_disconnect:
                hook(conn)

    def metrics_rejected(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def not_ready_reason(self) -> str | None:
        """Why /readyz is red, or None."""
        if self.closing:
            return "shutting down"
        if not self.log.writable:
            return f"log not writable: {self.log.failure}"
        for check in self.readiness:
            reason = check()
            if reason is not None:
                return reason
        return None
