"""The composition root: the one place that puts a durable log under the relay.

core (the relay) and wal (the write-ahead log) don't import each other: both speak
`common.durability`. This module picks the log the config asks for (`WalLog`, or the
in-memory `MemoryLog`), gives it and the relay one Prometheus registry, and wires what
crosses the seam:

    WalLog.append_event   <- connect/disconnect hooks of the relay   (ferry_events)
    ReplayService         <- the WalLog (durable head, checkpoint -> retention)
    relay.db_status       <- ReplayService.database_view            (core decides)
    $sys.stats "db"       <- ReplayService.stats_section
    OpsWatch              <- the server (webhook notifications)
    Hooks                 <- router.occupancy, connect/disconnect hooks (application
                             webhooks, FERRY_HOOKS_URL); $sys.stats "hooks", /metrics
    ClusterNode           <- router.remote, router.deep (over the local one), a router
                             tap (the feeds); the node list checked against the WAL's
                             fingerprint before the log opens (FERRY_CLUSTER_NODES)

`core.cli` runs `run()`; tests build servers with `build()`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from cluster.fingerprint import check_and_record
from common.durability import DurableLog, LogUnavailable
from common.service import Service
from core.api import Api
from core.api_server import ApiServer
from core.config import Config, ConfigError, hooks_problem
from core.hooks import Hooks, HooksCollector, RetryPolicy
from core.listener import Connection
from core.memory_log import MemoryLog
from core.server import Server
from core.watch import OpsWatch
from wal.history import DeepHistory
from wal.log import WalLog
from wal.record import ConnectionEvent
from wal.replay.service import ReplayService

log = logging.getLogger("ferry.server")


def wal_log(config: Config, registry: CollectorRegistry | None = None) -> WalLog:
    return WalLog(
        config.wal_dir,
        node_id=config.node_id,
        sync=config.wal_sync,
        segment_bytes=config.wal_segment_bytes,
        max_batch_delay_ms=config.wal_max_batch_delay_ms,
        preallocate=config.wal_preallocate,
        registry=registry,
        keep_recent_s=config.dedupe_window_s,
    )


def make_log(config: Config, registry: CollectorRegistry) -> DurableLog:
    if config.durability == "memory":
        return MemoryLog()
    return wal_log(config, registry)


def build(config: Config, durable_log: DurableLog | None = None) -> Server:
    """A server as `ferry serve` runs it (services included), not yet started."""
    registry = CollectorRegistry(auto_describe=False)
    if durable_log is None:
        durable_log = make_log(config, registry)
    server = Server(config, durable_log, registry=registry)
    if isinstance(durable_log, WalLog):
        wal = durable_log
        server.extensions.append(lambda srv: _connection_events(srv, wal))
        if config.replayer:
            server.extensions.append(lambda srv: _replayer(srv, wal))
            server.extensions.append(lambda srv: _deep_history(srv, wal))
    if config.webhook_url:
        server.extensions.append(_watch)
    if config.api_keys:
        server.extensions.append(_api)
    if config.hooks_url:
        problem = hooks_problem(config.hooks_url, config.hooks_secret)
        if problem:  # `load()` says so too; a Config built by hand is checked here
            raise ConfigError(problem)
        server.extensions.append(_hooks)
    if config.cluster_nodes:
        if config.durability == "wal":  # before the log opens (and makes its first segment)
            check_and_record(config.wal_dir, config.node_id, config.cluster_nodes)
        wal_or_none = durable_log if isinstance(durable_log, WalLog) else None
        server.extensions.append(lambda srv: _cluster(srv, wal_or_none))  # after deep history
    return server


def _cluster(server: Server, wal: WalLog | None) -> Iterable[Service]:
    """This node's part of a cluster (docs/cluster.md): remote channels' publishes go to
    their owners, their deliveries come from the owners' feeds, `since` reads reach the
    owner's history."""
    from cluster.metrics import ClusterCollector
    from cluster.node import ClusterNode  # nats-py is loaded only by a cluster node

    relay = server.relay
    router = relay.router
    node = ClusterNode(
        server.config,
        router,
        relay.log,
        relay.loop,
        relay.spawn,
        (lambda: wal.durable_lsn + 1) if wal is not None else (lambda: 0),
        router.deep,
    )
    router.remote = node
    relay.readiness.append(node.not_ready)
    router.deep = node.history
    router.spawn = relay.spawn
    server.registry.register(ClusterCollector(node))
    return (node,)


def _api(server: Server) -> Iterable[Service]:
    """The HTTP API for backends, on its own port, when a key is configured."""
    return (ApiServer(server.relay, Api(server.relay)),)


def _connection_events(server: Server, wal: WalLog) -> Iterable[Service]:
    """Connects and disconnects go through the WAL into `ferry_events` (when it can)."""

    def record(conn: Connection, kind: str) -> None:
        closed = kind == "disconnect"
        event = ConnectionEvent(
            kind=kind,
            user=conn.principal.user,
            remote=conn.remote,
            close_code=((conn.session.close_code if conn.session else None) or 1006)
            if closed
            else None,
            duration_ms=int((time.monotonic() - conn.connected_at) * 1000) if closed else None,
            ts_ms=time.time_ns() // 1_000_000,
            conn_id=conn.conn_id,
        )
        try:
            wal.append_event(event)
        except LogUnavailable:
            pass  # the log is failing: publishers hear about it; events are best effort then

    relay = server.relay
    relay.on_connect.append(lambda conn: record(conn, "connect"))
    relay.on_disconnect.append(lambda conn: record(conn, "disconnect"))
    return ()


def _replayer(server: Server, wal: WalLog) -> Iterable[Service]:
    config = server.config
    replay = ReplayService(
        wal,
        config.wal_dir,
        config.db_url,
        config.node_id,
        log_level=config.log_level,
        log_format=config.log_format,
    )
    # The relay stays ready while the database is down (the WAL holds the backlog); the
    # database's state is reported in /metrics and $sys.stats instead.
    server.relay.db_status = replay.database_view
    server.stats_sections.append(replay.stats_section)
    return (replay,)


def _deep_history(server: Server, wal: WalLog) -> Iterable[Service]:
    """`sub … since` below the ring, and the API's older pages: from the database the
    replayer fills, and from the WAL for what it has not written yet."""
    config = server.config
    store = DeepHistory(config.db_url, config.node_id, config.wal_dir, lambda: wal.durable_lsn)
    relay = server.relay
    relay.router.deep = store
    relay.router.spawn = relay.spawn
    return (store,)


def _watch(server: Server) -> Iterable[Service]:
    config = server.config
    return (
        OpsWatch(
            server,
            config.webhook_url,
            config.node_id,
            config.alert_backlog_records,
            config.alert_fsync_ms,
        ),
    )


def _hooks(server: Server) -> Iterable[Service]:
    """Application webhooks (docs/webhooks.md). Channel events come from the router's
    occupancy observer (inboxes and `$sys.*` never report); user events from the connect
    and disconnect hooks, except the admin's (the dashboard is an operator, not a user of
    the application). `ferry.started` is queued here, before the listener opens, so it
    is the first event a receiver gets from this run."""
    config = server.config
    relay = server.relay
    hooks = Hooks(
        config.hooks_url,
        config.hooks_secret,
        config.node_id,
        hold_s=config.hooks_hold_s,
        queue_size=config.hooks_queue_size,
        batch_max=config.hooks_batch_max,
        timeout_s=config.hooks_timeout_s,
        retry=RetryPolicy(window_s=config.hooks_retry_s),
        clock=relay.loop.time,
        later=relay.loop.call_later,
    )
    hooks.started(relay.router.epoch)
    relay.router.occupancy = hooks.occupancy

    def connected(conn: Connection) -> None:
        if not conn.principal.admin:
            hooks.user_connected(conn.principal.user)

    def disconnected(conn: Connection) -> None:
        if not conn.principal.admin:
            hooks.user_disconnected(conn.principal.user)

    relay.on_connect.append(connected)
    relay.on_disconnect.append(disconnected)
    server.stats_sections.append(hooks.stats_section)
    server.registry.register(HooksCollector(hooks))
    return (hooks,)


async def run(config: Config, announce_admin_token: str | None = None) -> int:
    server = build(config)
    await server.start()
    if announce_admin_token is not None:
        host = config.host if config.host not in ("0.0.0.0", "::", "") else "localhost"
        # The token rides in the URL's fragment, which browsers never send to a server.
        log.warning(
            "dashboard: http://%s:%d/#token=%s (FERRY_ADMIN_TOKEN is not set: this admin "
            "token was made for this run only; set FERRY_ADMIN_TOKEN to keep one)",
            host,
            server.port,
            announce_admin_token,
        )
    server.install_signal_handlers()
    await server.serve_forever()
    return 0
