"""Server lifecycle in one place: startup -> serve -> shutdown, in a fixed order.

    start():    open the log (recovery) -> restore router -> extensions -> listen
                -> stats and flow, keepalive -> services; a failed step undoes the earlier
                ones
    shutdown(): stop accepting -> close the log (in-flight batches become durable or
                fail: their acks or `unavailable` are queued) -> close every client with
                1001 -> wait for them (bounded) -> stop services (newest first) -> stats
                and flow, keepalive
A first SIGTERM/SIGINT starts the graceful shutdown; a second one forces exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from common.durability import DurableLog
from common.service import Service
from core.accept import create_server
from core.config import Config
from core.errors import ShuttingDown
from core.flow import FlowService
from core.guard import Guard
from core.keepalive import Keepalive
from core.metrics import register_relay
from core.relay_state import RelayState, history_limits
from core.stats import StatsPublisher

log = logging.getLogger("ferry.server")


Extension = Callable[["Server"], Iterable[Service]]


class Server:
    """One relay process: its durable log, listener, background services and their order.

    `extensions` run once the relay state exists, before the listener opens: each wires
    what it needs (hooks, stats sections) and returns the services to start after the
    listener. `core.compose.build` fills them in; tests may use a bare `Server`.
    """

    def __init__(
        self,
        config: Config,
        durable_log: DurableLog,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.log = durable_log
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.extensions: list[Extension] = []
        self.services: list[Service] = []  # started after the listener, stopped before the log
        self.stats_sections: list[Callable[[], dict[str, Any]]] = []
        self.stats: StatsPublisher | None = None
        self.flow: FlowService | None = None  # `$sys.flow`, the dashboard's flow view
        self.keepalive: Keepalive | None = None
        self.guard: Guard | None = None
        self.port: int = config.port
        self._relay: RelayState | None = None
        self._server: asyncio.Server | None = None
        self._stopping: asyncio.Event | None = None
        self._closed = False
        self._signals = 0

    @property
    def relay(self) -> RelayState:
        """The relay state (exists from `start()` on)."""
        if self._relay is None:
            raise RuntimeError("the server has not been started")
        return self._relay

    async def start(self) -> None:
        """Open the log, restore, listen, start services. If a step fails, what the
        earlier ones started is undone (the WAL's lock and sync thread included) and the
        error is raised."""
        async with contextlib.AsyncExitStack() as undo:
            await self._start(undo)
            undo.pop_all()  # started: from now on shutdown() owns the order

    async def _start(self, undo: contextlib.AsyncExitStack) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        t0 = time.monotonic()
        state = await self.log.open(history_limits(config))
        undo.push_async_callback(self.log.close)
        relay = self._relay = RelayState(config, self.log, loop)
        relay.router.restore(state)
        for extend in self.extensions:
            self.services.extend(extend(self))
        register_relay(self.registry, relay)
        relay.http.registry = self.registry
        await relay.http.load()  # the dashboard's files, read off the loop
        # What exists now (modules, recovered history) lives as long as the process: keep
        # it out of every collection, and collect the young generation less often (an
        # accept burst allocates a lot of short-lived objects).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        guard = self.guard = Guard(config)
        relay.on_connect.append(guard.connected)
        relay.on_disconnect.append(guard.disconnected)
        # ferry reads request heads itself (slowloris bounds, HEAD, fixed error bodies)
        # and hands accepted upgrades to picows: core/accept.py.
        self._server = await create_server(relay, guard, config)
        undo.callback(self._server.close)
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else config.port
        self.stats = StatsPublisher(relay, self._extra_stats)
        await self.stats.start()
        undo.push_async_callback(self.stats.stop)
        self.flow = FlowService(relay)
        await self.flow.loop.start()
        undo.push_async_callback(self.flow.loop.stop)
        self.keepalive = Keepalive(relay, config.idle_timeout, config.ping_timeout)
        await self.keepalive.start()
        undo.push_async_callback(self.keepalive.stop)
        for service in self.services:
            await service.start()
            undo.push_async_callback(service.stop)
        if not relay.auth.enabled:
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

    def _extra_stats(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for section in self.stats_sections:
            extra.update(section())
        services = {service.name: service.stats() for service in self.services}
        for own in (self.stats, self.flow.loop if self.flow else None, self.keepalive):
            if own is not None:
                services[own.name] = own.stats()
        extra["services"] = services
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
        if self._closed or self._relay is None:
            return
        self._closed = True
        relay = self._relay
        relay.closing = True
        relay.router.draining = True  # later WebSocket publishes wait for the next server
        timeout = self.config.shutdown_timeout
        t0 = time.monotonic()
        if self._server is not None:
            self._server.close()  # stop accepting
        # In-flight batches become durable (acks queued) or fail (`unavailable` queued).
        try:
            await asyncio.wait_for(self.log.close(), timeout)
        except TimeoutError:
            log.error("log did not finish in-flight batches within %.1fs", timeout)
        connections = list(relay.connections)
        for conn in connections:
            if conn.session is not None:
                conn.session.fail(ShuttingDown("server shutting down"))
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
                log.error("%s did not stop in time", service.name)
        if self.stats is not None:
            await self.stats.stop()
        if self.flow is not None:
            await self.flow.loop.stop()
        if self.keepalive is not None:
            await self.keepalive.stop()
        log.info(
            "ferry stopped",
            extra={
                "closed_connections": len(connections),
                "shutdown_s": round(time.monotonic() - t0, 3),
            },
        )
