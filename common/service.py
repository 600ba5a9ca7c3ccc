"""One lifecycle for background work: the `Service` shape, and `Loop` to run one.

Everything ferry runs beside the connections (the stats publisher, the keepalive sweep,
the webhook watch, the replayer's supervisor, the WAL's sync thread) is a `Service`:

    start()   begin; raises if it can't (then nothing of it is left running)
    stop()    finish, bounded and idempotent; safe after a failed or missing start
    stats()   a small dict of its own health, surfaced in `$sys.stats` ("services")

A periodic body runs in a `Loop`, which is where failures go: an exception in one round
is logged (with its traceback, throttled) and counted, and the next round runs anyway.
Before `Loop`, one exception in the stats publisher's loop silently ended `$sys.stats`
and later made `shutdown()` raise. A body that must not go on after a failure says so by
raising `StopLoop`.

Tasks a service creates are ended with `cancel_and_wait`, never left to the loop's
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger("ferry.service")

__all__ = ["Loop", "Service", "StopLoop", "cancel_and_wait"]


class Service(Protocol):
    """What the server starts after its listener and stops before its log."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        """This service's own health (failures, state); shown in `$sys.stats`."""
        ...


class StopLoop(Exception):
    """Raised by a loop body: end the loop now (logged as the reason, not as a failure)."""


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Loop:
    """Run `body` every `interval` seconds until stopped, surviving its failures.

    A failed round is logged at most once per `log_every` seconds (with the count of the
    ones in between) and counted in `failures`; `last_error` keeps the newest one's type
    and text for `stats()`. `stop()` cancels a round in progress and waits for it.
    """

    def __init__(
        self,
        name: str,
        body: Callable[[], Awaitable[None] | None],
        interval: float,
        *,
        log_every: float = 10.0,
    ) -> None:
        self.name = name
        self.interval = interval
        self.rounds = 0
        self.failures = 0
        self.last_error: str | None = None
        self._body = body
        self._log_every = log_every
        self._logged_at = -log_every
        self._unlogged = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def stats(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "rounds": self.rounds,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                result = self._body()
                if result is not None:
                    await result
            except StopLoop as stop:
                log.info("%s stopped: %s", self.name, stop)
                return
            except Exception as exc:  # a failed round must not end the loop
                self._failed(exc)
            self.rounds += 1

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._logged_at < self._log_every:
            self._unlogged += 1
            return
        skipped, self._unlogged = self._unlogged, 0
        self._logged_at = now
        log.error(
            "%s round failed (%d failures so far, %d not logged since the last line)",
            self.name,
            self.failures,
            skipped,
            exc_info=exc,
        )
