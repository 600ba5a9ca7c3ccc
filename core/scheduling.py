"""How the pure parts of core schedule work, as plain callables.

The outbox's flusher, the session and the memory log never reach for the event loop
themselves: they are handed `loop.call_soon` / `loop.call_later` / `time.monotonic` (or a
test's hand-turned stand-ins, tests/core/world.py), so they run without a loop the way
h11's and websockets' sans-I/O cores do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


# loop.call_soon's shape: run the callback at the next loop iteration.
Soon = Callable[[Callable[[], None]], object]
# loop.call_later's shape: run the callback after a delay, unless cancelled.
Later = Callable[[float, Callable[[], None]], Cancellable]
# time.monotonic's shape.
Clock = Callable[[], float]


def soon_in_running_loop(callback: Callable[[], None]) -> None:
    """The default `Soon`: the running loop's call_soon, looked up at each call, so an
    object built before the loop runs (or in a test's loop) still schedules on it."""
    asyncio.get_running_loop().call_soon(callback)
