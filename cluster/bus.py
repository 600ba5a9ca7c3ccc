"""The NATS connection, behind the few operations the cluster uses.

`Bus` is the seam (a fake in tests can stand in for it); `NatsBus` is nats-py. Every
failure of a request comes out as one of two errors, because they mean different things
to a publisher (docs/cluster.md, "Forwarding a publish"):

    Unreachable        nothing was delivered to a responder
    ├── NoResponders   nobody is subscribed (the node is down): nothing was accepted
    └── Timeout        no answer in time: the outcome is unknown
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from common.errors import FerryError
from common.logsetup import Throttle

log = logging.getLogger("ferry.cluster")

# Told (payload, reply): `reply` answers a request (None for a plain publish).
Handler = Callable[[bytes, "Callable[[bytes], None] | None"], None]


class Unreachable(FerryError):
    """A request got no answer."""


class NoResponders(Unreachable):
    """Nobody listens on the subject: the node is down (or not up yet)."""


class Timeout(Unreachable):
    """No answer within the timeout: the request may or may not have been acted on."""


class Bus(Protocol):
    def publish(self, subject: str, payload: bytes) -> None:
        """Send without waiting (in order with this bus's other sends)."""
        ...

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """The answer's payload; raises `Unreachable`."""
        ...

    async def subscribe(self, subject: str, handler: Handler) -> None: ...


class NatsBus:
    """nats-py, reconnecting for ever. Sends are queued in call order: nats-py appends a
    publish to its pending buffer before its first suspension point, and each send here
    is a task started in order."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.nc: NatsClient | None = None
        self.connected = False
        self.disconnects = 0
        self.send_failures = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._throttle = Throttle(log, 10.0)

    async def connect(self, timeout: float) -> None:
        async def disconnected() -> None:
            self.connected = False
            self.disconnects += 1
            log.warning("cluster: disconnected from NATS %s", self.url)

        async def reconnected() -> None:
            self.connected = True
            log.info("cluster: reconnected to NATS %s", self.url)

        async def error(exc: Exception) -> None:
            self._throttle.warning("cluster: NATS client error: %s", exc)

        self.nc = await nats.connect(
            self.url,
            name=self.name,
            connect_timeout=timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            ping_interval=2,
            max_outstanding_pings=2,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        self.connected = True

    def _client(self) -> NatsClient:
        if self.nc is None:
            raise Unreachable("not connected to NATS")
        return self.nc

    def publish(self, subject: str, payload: bytes) -> None:
        self._spawn(self._client().publish(subject, payload))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.send_failures += 1
            self._throttle.warning("cluster: a NATS send failed: %s", task.exception())

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        try:
            msg = await self._client().request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no responders on {subject}") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise Timeout(f"no answer on {subject} within {timeout}s") from None
        except nats.errors.Error as exc:  # closed, reconnecting with a full buffer, ...
            raise Unreachable(f"{subject}: {type(exc).__name__}") from None
        return bytes(msg.data)

    async def subscribe(self, subject: str, handler: Handler) -> None:
        spawn = self._spawn

        async def deliver(msg: Msg) -> None:
            reply = msg.reply
            answer = (lambda data: spawn(msg.respond(data))) if reply else None
            try:
                handler(msg.data, answer)
            except Exception:
                self._throttle.exception("cluster: handling a message on %s failed", subject)

        await self._client().subscribe(subject, cb=deliver, pending_msgs_limit=100_000)

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        if nc is None:
            return
        try:
            if nc.is_connected:
                await nc.flush(timeout=1)  # the answers and feeds already queued
        except (nats.errors.Error, TimeoutError):
            pass
        await nc.close()
        for task in list(self._tasks):
            task.cancel()
