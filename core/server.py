"""Server lifecycle in one place: startup -> serve -> shutdown, in a fixed order.

    start():    open the log (recovery) -> restore router -> listen -> stats
    shutdown(): stop accepting -> finish in-flight log batches (their acks go out)
                -> close every client with 1001 -> wait (bounded) -> close the log
A first SIGTERM/SIGINT starts the graceful shutdown; a second one forces exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from typing import Any

from common.durability import DurableLog, LogUnavailable
from core.accept import create_server
from core.config import Config
from core.errors import CloseCode
from core.guard import Guard
from core.keepalive import Keepalive
from core.listener import Connection
from core.memory_log import MemoryLog
from core.metrics import make_registry
from core.relay_state import RelayState, history_limits
from core.stats import StatsPublisher

log = logging.getLogger("ferry.server")


def make_log(config: Config) -> DurableLog:
    if config.durability == "memory":
        return MemoryLog()
    from wal.log import WalLog

    return WalLog.from_config(config)


class Server:
    def __init__(self, config: Config, durable_log: DurableLog | None = None) -> None:
        self.config = config
        self.log = durable_log if durable_log is not None else make_log(config)
        self.hub: RelayState | None = None
        self.stats: StatsPublisher | None = None
        self.keepalive: Keepalive | None = None
        self.guard: Guard | None = None
        self.port: int = config.port
        self._server: asyncio.Server | None = None
        self._stopping: asyncio.Event | None = None
        self._closed = False
        self._signals = 0
        self.services: list[Any] = []  # started after the listener, stopped before the log

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        t0 = time.monotonic()
        state = await self.log.open(history_limits(config))
        hub = self.hub = RelayState(config, self.log, loop)
        hub.router.restore(state)
        self._log_connection_events(hub)
        registry = make_registry(hub)
        wal_registry = getattr(self.log, "registry", None)
        if wal_registry is not None:
            for collector in list(wal_registry._collector_to_names):
                registry.register(collector)
        hub.http.registry = registry
        self.registry = registry
        await hub.http.load()  # the dashboard's files, read off the loop
        # What exists now (modules, recovered history) lives as long as the process: keep
        # it out of every collection, and collect the young generation less often (an
        # accept burst allocates a lot of short-lived objects).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        guard = self.guard = Guard(config)
        hub.on_connect.append(guard.connected)
        hub.on_disconnect.append(guard.disconnected)
        # ferry reads request heads itself (slowloris bounds, HEAD, fixed error bodies)
        # and hands accepted upgrades to picows: core/accept.py.
        self._server = await create_server(hub, guard, config)
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else config.port
        self.stats = StatsPublisher(hub, self._extra_stats)
        self.stats.start()
        self.keepalive = Keepalive(hub, config.idle_timeout, config.ping_timeout)
        self.keepalive.start()
        for service in self.services:
            await service.start(self)
        if not hub.auth.enabled:
            log.warning(
                "AUTH IS OFF: any client may publish and subscribe to any channel (except $sys.*). "
                "Set FERRY_AUTH=jwt and FERRY_JWT_SECRET for production."
            )
        log.info(
            "ferry serving",
            extra={
                "node": config.node_id,
                "listen": f"{config.host}:{self.port}",
                "log": config.durability,
                "wal_dir": config.wal_dir if config.durability == "wal" else "-",
                "wal_sync": config.wal_sync,
                "channels_recovered": len(state.heads),
                "next_lsn": state.next_lsn,
                "startup_s": round(time.monotonic() - t0, 3),
            },
        )

    def _log_connection_events(self, hub: RelayState) -> None:
        """Connects and disconnects go through the log into `ferry_events` (when it can)."""
        append_event = getattr(self.log, "append_event", None)
        if append_event is None:
            return
        from wal.record import ConnectionEvent

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
                append_event(event)
            except LogUnavailable:
                pass  # the log is failing: publishers hear about it; events are best effort then

        hub.on_connect.append(lambda conn: record(conn, "connect"))
        hub.on_disconnect.append(lambda conn: record(conn, "disconnect"))

    def _extra_stats(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for service in self.services:
            section = getattr(service, "stats_section", None)
            if section is not None:
                extra.update(section())
        return extra

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info(
                "received %s: shutting down gracefully (send again to force)",
                signal.Signals(sig).name,
            )
            self.request_stop()
        else:
            log.warning("received %s again: forcing exit", signal.Signals(sig).name)
            os._exit(1)

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def serve_forever(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Graceful, bounded, idempotent."""
        if self._closed or self.hub is None:
            return
        self._closed = True
        hub = self.hub
        hub.closing = True
        timeout = self.config.shutdown_timeout
        t0 = time.monotonic()
        if self._server is not None:
            self._server.close()  # stop accepting
        # In-flight batches become durable (acks queued) or fail (`unavailable` queued).
        try:
            await asyncio.wait_for(self.log.close(), timeout)
        except TimeoutError:
            log.error("log did not finish in-flight batches within %.1fs", timeout)
        connections = list(hub.connections)
        for conn in connections:
            if conn.session is not None:
                conn.session.close(CloseCode.GOING_AWAY, "server shutting down")
        remaining = max(0.5, timeout - (time.monotonic() - t0))
        waits = [
            conn.transport.wait_disconnected() for conn in connections if conn.transport is not None
        ]
        if waits:
            _done, pending = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waits], timeout=remaining
            )
            for fut in pending:
                fut.cancel()
        for service in reversed(self.services):
            try:
                await asyncio.wait_for(service.stop(), max(0.5, timeout - (time.monotonic() - t0)))
            except TimeoutError:
                log.error("%s did not stop in time", type(service).__name__)
        if self.stats is not None:
            await self.stats.stop()
        if self.keepalive is not None:
            self.keepalive.stop()
        log.info(
            "ferry stopped",
            extra={
                "closed_connections": len(connections),
                "shutdown_s": round(time.monotonic() - t0, 3),
            },
        )


def default_services(config: Config) -> list[Any]:
    """The replayer child runs next to a WAL (not next to the memory log); the webhook
    watch runs when FERRY_WEBHOOK_URL is set."""
    services: list[Any] = []
    if config.replayer and config.durability == "wal":
        from wal.replay.service import ReplayService

        services.append(ReplayService(config.wal_dir, config.db_url, config.node_id))
    if config.webhook_url:
        from core.watch import OpsWatch

        services.append(
            OpsWatch(
                config.webhook_url,
                config.node_id,
                config.alert_backlog_records,
                config.alert_fsync_ms,
            )
        )
    return services


async def run(config: Config, announce_admin_token: str | None = None) -> int:
    server = Server(config)
    server.services.extend(default_services(config))
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
