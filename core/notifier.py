"""Operational notifications to a Discord-compatible webhook, kept off the relay's hot path.

    relay code ──notify(event, text)──▶ rate limit per event kind ──▶ bounded queue
                 (O(1), never awaits,            │ drop + count         │ drop + count
                  never raises)                  ▼                      ▼ when full
                                          one background task: build JSON, POST over
                                          asyncio streams with a deadline, honour 429

A slow or dead webhook costs the background task time, never the event loop's: `notify()`
only reads a clock, touches two dicts and does `put_nowait`. The POST is plain HTTP/1.1 over
`asyncio.open_connection` (TLS for https; core/http_post.py, shared with the application
webhooks), so it is cancellable at any point and `close()` returns promptly even while a
request hangs; no thread, no extra dependency.

Events the server sends (`EVENTS`): start, db_down, db_up, wal_unwritable, wal_writable,
wal_backlog (past a threshold), slow_fsync. Unknown kinds are accepted and shown with a
neutral colour.

Rate limiting never hides a state change. Events that report a state (`STATE_OF`: db_down
and db_up are the two states of "db") are always sent when the state differs from the last
one sent, so a down -> up -> down flap within the interval sends all three and the channel
never ends on a stale "back up". Only a repeat of the state already reported is limited, like
any other kind; a state change that finds the queue full makes room by dropping the oldest
message waiting.

Call `notify()` from the event loop's thread. From another thread (the WAL's fsync thread,
say) hand it over with `loop.call_soon_threadsafe(notifier.notify, event, text)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.http_post import Target, WebhookError, post

log = logging.getLogger("ferry.notifier")

# Discord's limits (https://discord.com/developers/docs/resources/webhook#execute-webhook):
# `content` up to 2000 characters, an embed description up to 4096.
CONTENT_LIMIT = 2000
DESCRIPTION_LIMIT = 4096
# A 429 asks us to wait `Retry-After` seconds; a webhook that asks for longer than this is
# treated as failed for that message rather than stalling every later one.
MAX_RETRY_AFTER_S = 30.0

EVENTS: dict[str, int] = {  # event kind -> embed colour (0xRRGGBB)
    "start": 0x2ECC71,
    "db_down": 0xE74C3C,
    "db_up": 0x2ECC71,
    "wal_unwritable": 0x992D22,  # the most severe: acks have stopped
    "wal_writable": 0x2ECC71,
    "wal_backlog": 0xF1C40F,
    "slow_fsync": 0xE67E22,
}
# Event kinds that report the state of something (event -> that something): a change of
# state is always sent; only repeats of the same state are rate-limited.
STATE_OF: dict[str, str] = {
    "db_down": "db",
    "db_up": "db",
    "wal_unwritable": "wal",
    "wal_writable": "wal",
}
DEFAULT_COLOUR = 0x95A5A6


@dataclass(slots=True)
class NotifierStats:
    """Counters for /metrics and the dashboard."""

    sent: int = 0
    failed: int = 0
    dropped_rate_limited: int = 0
    dropped_queue_full: int = 0
    dropped_closed: int = 0


@dataclass(frozen=True, slots=True)
class _Item:
    event: str
    text: str
    ts: float  # wall clock when notify() was called
    suppressed: int  # same-kind events dropped by the rate limit since the last one sent


class Notifier:
    """Posts operational events to a Discord-compatible webhook without slowing the relay.

    `min_interval_s` is per event kind: a kind is sent at most once per interval, and the
    next one sent says how many were suppressed; a change of state (`STATE_OF`) is always
    sent. `timeout_s` bounds one whole POST
    (connect, TLS, request, response head). `queue_size` bounds what waits to be sent.
    `ssl_context` replaces the default (system CAs, hostname checked) for https URLs.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        min_interval_s: float = 60.0,
        timeout_s: float = 5.0,
        queue_size: int = 64,
        username: str = "ferry",
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_interval_s < 0:
            raise ValueError("min_interval_s must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self._target = Target.parse(url)
        self._node_id = node_id
        self._min_interval_s = min_interval_s
        self._timeout_s = timeout_s
        self._username = username
        self._clock = clock
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._last_queued: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._states: dict[str, str] = {}  # STATE_OF group -> the last state event queued
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._ssl = ssl_context  # None: the system's trust store, created on first use
        self.stats = NotifierStats()

    # -- public API ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the background sender on the running loop (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ferry-notifier")

    def notify(self, event: str, text: str) -> None:
        """Queue `event` for sending; O(1), never awaits, never raises, may drop."""
        try:
            if self._closed:
                self.stats.dropped_closed += 1
                return
            now = self._clock()
            group = STATE_OF.get(event)
            changes_state = group is not None and self._states.get(group) != event
            last = self._last_queued.get(event)
            if not changes_state and last is not None and now - last < self._min_interval_s:
                self.stats.dropped_rate_limited += 1
                self._suppressed[event] = self._suppressed.get(event, 0) + 1
                return
            item = _Item(event, str(text), time.time(), self._suppressed.get(event, 0))
            if changes_state and self._queue.full():
                self._queue.get_nowait()  # the oldest waiting message gives way
                self.stats.dropped_queue_full += 1
            self._queue.put_nowait(item)
            self._last_queued[event] = now
            self._suppressed.pop(event, None)
            if group is not None:
                self._states[group] = event
        except asyncio.QueueFull:
            self.stats.dropped_queue_full += 1
        except Exception:  # never let a notification hurt the caller
            self.stats.failed += 1

    async def close(self) -> None:
        """Stop sending; what is still queued is dropped. Idempotent, returns promptly."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            self._queue.get_nowait()
            self.stats.dropped_closed += 1

    @property
    def pending(self) -> int:
        """Messages waiting to be sent."""
        return self._queue.qsize()

    # -- payload ---------------------------------------------------------------------------

    def _payload(self, item: _Item) -> dict[str, Any]:
        """The Discord webhook body for one event (plain `content` plus one embed)."""
        note = f" ({item.suppressed} similar suppressed)" if item.suppressed else ""
        content = f"**{item.event}** on `{self._node_id}`: {item.text}{note}"
        return {
            "username": self._username,
            "content": _clip(content, CONTENT_LIMIT),
            "embeds": [
                {
                    "title": item.event,
                    "description": _clip(item.text + note, DESCRIPTION_LIMIT),
                    "color": EVENTS.get(item.event, DEFAULT_COLOUR),
                    "timestamp": datetime.fromtimestamp(item.ts, UTC).isoformat(),
                    "footer": {"text": f"node {self._node_id}"},
                }
            ],
            # Event text may quote user input (channel names): never ping anyone with it.
            "allowed_mentions": {"parse": []},
        }

    # -- sender ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            body = json.dumps(self._payload(item), separators=(",", ":")).encode()
            try:
                await self._deliver(body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.failed += 1
                log.warning("webhook notification %r not delivered: %s", item.event, exc)
            else:
                self.stats.sent += 1

    async def _deliver(self, body: bytes) -> None:
        """POST once; after a 429 wait what the webhook asks (bounded) and POST once more."""
        status, retry_after = await self._post(body)
        if status == 429 and retry_after is not None and retry_after <= MAX_RETRY_AFTER_S:
            await asyncio.sleep(retry_after)
            status, _ = await self._post(body)
        if not 200 <= status < 300:
            raise WebhookError(f"HTTP {status}")

    async def _post(self, body: bytes) -> tuple[int, float | None]:
        """One HTTP/1.1 POST; returns (status, Retry-After seconds or None)."""
        target = self._target
        response = await post(
            target,
            body,
            timeout_s=self._timeout_s,
            user_agent="ferry-notifier",
            ssl_context=self._tls_context() if target.tls else None,
        )
        return response.status, response.retry_after

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
