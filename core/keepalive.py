"""Keepalive for every connection from ONE timer (RFC 6455 §5.5.2 pings).

The keepalive state is each connection's `WebSocket` (core/websocket.py): an `active`
flag that every data frame sets, the outstanding ping and its payload. This module only
drives it: every `idle_timeout` the sweep looks at all connections; one that was silent
for the whole period gets a ping with a random 8-byte payload (through its outbox, after
what is already queued); one that has not sent the pong carrying that payload
`ping_timeout` after it is closed with 1011 and dropped. The client's own pings and pongs
that do not answer ours count for nothing: they show that it writes, not that it reads.

A timer per connection (picows' auto-ping task) would cost a task and a coroutine frame
for each idle connection; this costs one task for the server and a few attributes each.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from common.service import Loop
from core.guard import PeerLog

if TYPE_CHECKING:
    from core.relay_state import RelayState

log = logging.getLogger("ferry.keepalive")


class Keepalive:
    """A `Service` (common/service.py): the sweep runs in a `Loop`, so a failed sweep is
    logged and counted and the next one runs anyway."""

    name = "keepalive"

    def __init__(self, hub: RelayState, idle_timeout: float, ping_timeout: float) -> None:
        self.hub = hub
        self.idle_timeout = idle_timeout
        self.ping_timeout = ping_timeout
        self.dropped = 0
        self._log = PeerLog(log)
        self._last_sweep = time.monotonic()
        self._loop = Loop("ferry-keepalive", self.sweep, min(idle_timeout, ping_timeout) / 2)

    async def start(self) -> None:
        self._last_sweep = time.monotonic()
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def stats(self) -> dict[str, Any]:
        return {**self._loop.stats(), "dropped": self.dropped}

    def sweep(self) -> None:
        """One look at every connection: ping the idle ones, drop the unanswered."""
        now = time.monotonic()
        check_idle = now - self._last_sweep >= self.idle_timeout
        if check_idle:
            self._last_sweep = now
        for conn in list(self.hub.connections):
            ws, transport = conn.ws, conn.transport
            if ws is None or transport is None:
                continue
            if ws.keepalive(now, check_idle, self.ping_timeout):
                self.dropped += 1
                self._log.info(
                    "dropping %s: no answer to ping within %.1fs", conn.conn_id, self.ping_timeout
                )
                transport.disconnect(graceful=False)  # dead: no close reply will come
