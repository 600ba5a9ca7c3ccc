"""Application webhooks: channel and user presence, POSTed to a backend in signed batches.

    router.occupancy ─┐                          ┌─ channel.occupied / user.online: now
    on_connect ───────┼─▶ Presence (hold-back) ──┤
    on_disconnect ────┘    sans-I/O, fake-clock  └─ channel.vacated / user.offline: after
                           testable                 `hold_s`, unless cancelled by a return
                                   │
                                   ▼
                     EventQueue (bounded: drop + count when full; batch at `batch_max`
                                 events or `linger_s` after the oldest waiting one)
                                   │ one task, one batch in flight (order is kept)
                                   ▼
                     POST a JSON list, Standard Webhooks headers (webhook-id stays the
                     same on every retry: at-least-once), retried with exponential
                     backoff and jitter for `retry.window_s` on 5xx/408/429/errors/timeouts

Everything the relay calls (`occupancy`, `user_connected`, `user_disconnected`) runs on the
event loop, is O(1), never awaits and never raises: it touches a dict or two and appends to
a deque. Sending happens in this service's own task with its own timeouts (core/http_post.py,
the client the operational notifier uses too), so a slow or dead receiver costs that task
time, never the relay's. docs/webhooks.md is the receiver's side of it.

`signing_key`, `sign` and `verify` follow the Standard Webhooks spec and need nothing but
the standard library: a receiver may copy them as they are.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import random
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.logsetup import Throttle
from common.service import cancel_and_wait
from common.stats_doc import HooksStats
from core.http_post import Target, WebhookError, post
from core.scheduling import Cancellable, Clock, Later

log = logging.getLogger("ferry.hooks")

# The event types (docs/webhooks.md).
CHANNEL_OCCUPIED = "channel.occupied"
CHANNEL_VACATED = "channel.vacated"
USER_ONLINE = "user.online"
USER_OFFLINE = "user.offline"
NODE_STARTED = "ferry.started"
EVENT_TYPES = (CHANNEL_OCCUPIED, CHANNEL_VACATED, USER_ONLINE, USER_OFFLINE, NODE_STARTED)

# How long the oldest waiting event may wait for others to share its POST.
LINGER_S = 0.1
# At shutdown what is left (held events included) gets one attempt, all within this.
FINAL_FLUSH_S = 2.0
# A receiver accepts a webhook-timestamp this far from its own clock (the spec's 5 minutes).
TOLERANCE_S = 300

# Why events were dropped (the `reason` label of ferry_hooks_events_dropped_total).
DROP_REASONS = ("queue_full", "gave_up", "shutdown")


# --- the Standard Webhooks signature (copy these three into a receiver) -------------------


def signing_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part after `whsec_`, or a plain secret's UTF-8."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return secret.encode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`: a webhook-signature entry."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> bool:
    """True when `body` (the raw request body, not re-encoded JSON) was signed with `secret`
    and its webhook-timestamp is within `tolerance_s` of `now` (default: this clock).

    `headers` may use any case. The webhook-signature header is a space-separated list
    (several during a key rotation): one matching `v1` entry is enough. Receivers should
    also remember webhook-ids for a while and skip one seen before (at-least-once)."""
    lower = {name.lower(): value for name, value in headers.items()}
    msg_id = lower.get("webhook-id", "")
    stamp = lower.get("webhook-timestamp", "")
    signatures = lower.get("webhook-signature", "")
    if not msg_id or not stamp.isdigit() or not signatures:
        return False
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    try:
        expected = sign(signing_key(secret), msg_id, timestamp, body)
    except ValueError:
        return False
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split(" "))


# --- presence: transitions in, events out (sans-I/O) --------------------------------------

CHANNEL = "channel"
USER = "user"
_ARRIVE = {CHANNEL: CHANNEL_OCCUPIED, USER: USER_ONLINE}
_LEAVE = {CHANNEL: CHANNEL_VACATED, USER: USER_OFFLINE}

Emit = Callable[[str, float, dict[str, str]], object]  # (type, wall-clock ts, data)


class Presence:
    """Turns occupancy changes and connections into events, holding back each "gone" one.

    `channel(name, True)` / `user_connected(user)` emit `channel.occupied` / `user.online`
    at once, unless a "gone" event of the same channel or user is being held: then that
    one is cancelled instead and nothing is emitted (the receiver never saw it leave).
    A "gone" event waits `hold_s` on the clock; it carries the time it happened, not the
    time it was let out. Users are counted per connection: online at the first, offline
    at the last. One timer at a time is armed (for the oldest held event), through `later`.
    """

    def __init__(
        self, hold_s: float, emit: Emit, *, clock: Clock, wall: Clock, later: Later
    ) -> None:
        self.hold_s = hold_s
        self.cancelled = 0  # held events a return cancelled
        self._emit = emit
        self._clock = clock
        self._wall = wall
        self._later = later
        # (kind, name) -> (due on `clock`, wall-clock time it happened); insertion order
        # is due order, since every hold is as long
        self._held: dict[tuple[str, str], tuple[float, float]] = {}
        self._users: dict[str, int] = {}
        self._timer: Cancellable | None = None

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def users_online(self) -> int:
        return len(self._users)

    def channel(self, name: str, occupied: bool) -> None:
        """The router's occupancy observer (`Router.occupancy`)."""
        if occupied:
            self._arrive(CHANNEL, name)
        else:
            self._leave(CHANNEL, name)

    def user_connected(self, user: str) -> None:
        count = self._users.get(user, 0) + 1
        self._users[user] = count
        if count == 1:
            self._arrive(USER, user)

    def user_disconnected(self, user: str) -> None:
        count = self._users.get(user, 0) - 1
        if count > 0:
            self._users[user] = count
        elif count == 0:
            del self._users[user]
            self._leave(USER, user)

    def expire(self) -> None:
        """Let out every held event that is due (the timer's callback)."""
        self._timer = None
        now = self._clock()
        held = self._held
        while held:
            key, (due, ts) = next(iter(held.items()))
            if due > now:
                break
            del held[key]
            self._emit(_LEAVE[key[0]], ts, {key[0]: key[1]})
        self._arm()

    def flush(self) -> None:
        """Let out every held event now (shutdown: the connections are gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, {}
        for (kind, name), (_, ts) in held.items():
            self._emit(_LEAVE[kind], ts, {kind: name})

    def _arrive(self, kind: str, name: str) -> None:
        if self._held.pop((kind, name), None) is not None:
            self.cancelled += 1  # back within the hold: the receiver never saw it go
            return
        self._emit(_ARRIVE[kind], self._wall(), {kind: name})

    def _leave(self, kind: str, name: str) -> None:
        if self.hold_s <= 0:
            self._emit(_LEAVE[kind], self._wall(), {kind: name})
            return
        key = (kind, name)
        if key not in self._held:
            self._held[key] = (self._clock() + self.hold_s, self._wall())
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        first = next(iter(self._held.values()), None)
        if first is not None:
            self._timer = self._later(max(0.0, first[0] - self._clock()), self.expire)


# --- the queue and its batches (sans-I/O) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Queued:
    type: str
    ts: float  # wall clock, when it happened
    data: dict[str, str]
    queued_at: float  # on the queue's clock


@dataclass(slots=True)
class Counters:
    sent: int = 0  # events the receiver accepted (2xx)
    batches: int = 0  # POSTs the receiver accepted
    failed_attempts: int = 0  # POSTs that failed (status, connection, timeout)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    last_error: str | None = None


class EventQueue:
    """At most `limit` events waiting; a batch is ready at `batch_max` of them or once the
    oldest has waited `linger_s`. `on_ready` is told when a wait may end (the first event
    arrives, or a full batch is there)."""

    def __init__(
        self,
        limit: int,
        batch_max: int,
        linger_s: float,
        clock: Clock,
        counters: Counters,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        if limit < 1 or batch_max < 1:
            raise ValueError("limit and batch_max must be >= 1")
        self.limit = limit
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.closed = False
        self._clock = clock
        self._counters = counters
        self._on_ready = on_ready
        self._items: deque[Queued] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, kind: str, ts: float, data: dict[str, str]) -> bool:
        """Queue one event; False when it was dropped (and counted) instead."""
        items = self._items
        if self.closed:
            self._counters.dropped["shutdown"] += 1
            return False
        if len(items) >= self.limit:
            self._counters.dropped["queue_full"] += 1
            return False
        items.append(Queued(kind, ts, data, self._clock()))
        n = len(items)
        if (n == 1 or n == self.batch_max) and self._on_ready is not None:
            self._on_ready()
        return True

    def wait_s(self, now: float) -> float | None:
        """Seconds until a batch is ready: 0 now, None while nothing waits."""
        items = self._items
        if not items:
            return None
        if len(items) >= self.batch_max:
            return 0.0
        return max(0.0, items[0].queued_at + self.linger_s - now)

    def take(self) -> list[Queued]:
        """The next batch: the oldest `batch_max` events (or fewer), in order."""
        items = self._items
        n = min(len(items), self.batch_max)
        return [items.popleft() for _ in range(n)]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_batch(events: list[Queued], node: str) -> bytes:
    """The POST body: a JSON list of `{"type", "timestamp", "data"}` (Standard Webhooks'
    payload shape), each event's data naming this node."""
    return msgspec.json.encode(
        [
            {"type": e.type, "timestamp": _iso(e.ts), "data": {**e.data, "node": node}}
            for e in events
        ]
    )


@dataclass(slots=True)
class Batch:
    id: str  # webhook-id: the same on every attempt
    body: bytes
    events: int


def new_batch(events: list[Queued], node: str) -> Batch:
    return Batch("msg_" + secrets.token_urlsafe(18), encode_batch(events, node), len(events))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: `first_s`, doubling, at most `cap_s` apart, for
    `window_s` after the first attempt. The defaults try at about 0, 1, 3, 7, 15, 31, 63,
    123, 183, 243 s: ten attempts over five minutes."""

    window_s: float = 300.0
    first_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 60.0
    jitter: float = 0.2  # each wait is up to this fraction shorter or longer

    def delay(
        self, failures: int, elapsed: float, retry_after: float | None = None, rand: float = 0.5
    ) -> float | None:
        """Seconds to wait after `failures` failed attempts, the first `elapsed` seconds ago;
        None: give up (the next attempt would fall outside the window). `retry_after` (the
        receiver's Retry-After) lengthens the wait, up to `cap_s`; `rand` is in [0, 1)."""
        wait = min(self.cap_s, self.first_s * self.factor ** max(0, failures - 1))
        wait *= 1.0 + self.jitter * (2.0 * rand - 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap_s))
        if elapsed + wait > self.window_s:
            return None
        return wait


def retryable(status: int) -> bool:
    """5xx, 408 and 429 are worth another try; another status is the receiver's final no."""
    return status >= 500 or status in (408, 429)


# --- the service --------------------------------------------------------------------------


def _call_later(delay: float, callback: Callable[[], None]) -> Cancellable:
    return asyncio.get_running_loop().call_later(delay, callback)


class Hooks:
    """The application webhooks as a `Service` (name "hooks"): the seams the relay calls,
    and the one task that sends.

    `user_connected`/`user_disconnected`/`occupancy`/`started` may be called before
    `start()` (events wait in the queue); `stop()` lets the held events out and gives
    what is left one attempt, within `FINAL_FLUSH_S`.
    """

    name = "hooks"

    def __init__(
        self,
        url: str,
        secret: str,
        node_id: str,
        *,
        hold_s: float = 5.0,
        queue_size: int = 10_000,
        batch_max: int = 100,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        linger_s: float = LINGER_S,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        later: Later = _call_later,
        rand: Callable[[], float] = random.random,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self._target = Target.parse(url)
        self._key = signing_key(secret)
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.counters = Counters()
        self._clock = clock
        self._wall = wall
        self._rand = rand
        self._ssl = ssl_context
        self._wake = asyncio.Event()
        self.queue = EventQueue(
            queue_size, batch_max, linger_s, clock, self.counters, self._wake.set
        )
        self.presence = Presence(hold_s, self.queue.put, clock=clock, wall=wall, later=later)
        self._task: asyncio.Task[None] | None = None
        self._inflight: Batch | None = None
        self._faults = Throttle(log, 10.0)
        self._failures = Throttle(log, 10.0)

    # -- what the relay calls (on the loop; O(1); never raises) ---------------------------

    def occupancy(self, channel: str, occupied: bool) -> None:
        """`Router.occupancy`."""
        try:
            self.presence.channel(channel, occupied)
        except Exception:
            self._faults.exception("webhook occupancy event for %s lost", channel)

    def user_connected(self, user: str) -> None:
        try:
            self.presence.user_connected(user)
        except Exception:
            self._faults.exception("webhook user.online for %s lost", user)

    def user_disconnected(self, user: str) -> None:
        try:
            self.presence.user_disconnected(user)
        except Exception:
            self._faults.exception("webhook user.offline for %s lost", user)

    def started(self, epoch: str) -> None:
        """`ferry.started`: this node (re)started; what a receiver knew of it is void."""
        self.queue.put(NODE_STARTED, self._wall(), {"epoch": epoch})

    # -- Service --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None and not self.queue.closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ferry-hooks")

    async def stop(self) -> None:
        if self.queue.closed:
            return
        inflight = self._inflight  # cut short: sent again, with its webhook-id
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._inflight = None
        self.presence.flush()
        self.queue.closed = True  # from here on, late events are dropped as "shutdown"
        left = [inflight] if inflight is not None else []
        while len(self.queue):
            left.append(new_batch(self.queue.take(), self.node_id))
        try:
            async with asyncio.timeout(min(FINAL_FLUSH_S, self.timeout_s)):
                while left:
                    error = await self._attempt(left[0])
                    batch = left.pop(0)
                    if error is None:
                        self._delivered(batch)
                    else:
                        self.counters.failed_attempts += 1
                        self.counters.dropped["shutdown"] += batch.events
        except TimeoutError:
            pass
        self.counters.dropped["shutdown"] += sum(batch.events for batch in left)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "running": self._task is not None and not self._task.done(),
            "queued": len(self.queue),
            "held": self.presence.held,
            "sent": c.sent,
            "failed_attempts": c.failed_attempts,
            "dropped": sum(c.dropped.values()),
            "last_error": c.last_error,
        }

    def stats_section(self) -> dict[str, HooksStats]:
        """The `hooks` section of `$sys.stats`."""
        c = self.counters
        inflight = self._inflight
        return {
            "hooks": HooksStats(
                queued=len(self.queue),
                held=self.presence.held,
                in_flight=inflight.events if inflight is not None else 0,
                sent=c.sent,
                batches=c.batches,
                failed_attempts=c.failed_attempts,
                dropped=dict(c.dropped),
                last_error=c.last_error,
            )
        }

    # -- sending ----------------------------------------------------------------------------

    async def _run(self) -> None:
        queue = self.queue
        while True:
            wait = queue.wait_s(self._clock())
            if wait is None or wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            try:
                await self._deliver(new_batch(queue.take(), self.node_id))
            except Exception:  # never expected: the task must not end
                self._inflight = None
                self._faults.exception("webhook batch lost to a fault")

    async def _deliver(self, batch: Batch) -> None:
        """Attempt until accepted, refused for good, or out of the retry window."""
        self._inflight = batch
        first = self._clock()
        failures = 0
        while True:
            error = await self._attempt(batch)
            if error is None:
                self._delivered(batch)
                self._inflight = None
                return
            again, retry_after = error
            failures += 1
            self.counters.failed_attempts += 1
            wait = (
                self.retry.delay(failures, self._clock() - first, retry_after, self._rand())
                if again
                else None
            )
            if wait is None:
                self.counters.dropped["gave_up"] += batch.events
                self._inflight = None
                self._failures.warning(
                    "webhook batch %s (%d events) dropped after %d attempts: %s",
                    batch.id,
                    batch.events,
                    failures,
                    self.counters.last_error,
                )
                return
            await asyncio.sleep(wait)

    def _delivered(self, batch: Batch) -> None:
        self.counters.sent += batch.events
        self.counters.batches += 1

    async def _attempt(self, batch: Batch) -> tuple[bool, float | None] | None:
        """One signed POST. None: accepted; else (worth retrying, Retry-After)."""
        timestamp = int(self._wall())
        headers = {
            "webhook-id": batch.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, batch.id, timestamp, batch.body),
        }
        try:
            response = await post(
                self._target,
                batch.body,
                timeout_s=self.timeout_s,
                headers=headers,
                user_agent="ferry-hooks",
                ssl_context=self._tls_context() if self._target.tls else None,
            )
        except WebhookError as exc:
            self.counters.last_error = str(exc)
            return True, None
        if 200 <= response.status < 300:
            return None
        self.counters.last_error = f"HTTP {response.status}"
        return retryable(response.status), response.retry_after

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl


class HooksCollector(Collector):
    """`ferry_hooks_*` in /metrics, read from the service's counters at scrape time."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks

    def collect(self) -> Iterator[Metric]:
        hooks = self.hooks
        c = hooks.counters
        yield CounterMetricFamily(
            "ferry_hooks_events_sent", "Webhook events the receiver accepted", value=c.sent
        )
        yield CounterMetricFamily(
            "ferry_hooks_batches_sent", "Webhook POSTs the receiver accepted", value=c.batches
        )
        yield CounterMetricFamily(
            "ferry_hooks_failed_attempts",
            "Webhook POSTs that failed (HTTP status, connection error, timeout)",
            value=c.failed_attempts,
        )
        dropped = CounterMetricFamily(
            "ferry_hooks_events_dropped",
            "Webhook events dropped (queue_full, gave_up: retries over or refused, shutdown)",
            labels=["reason"],
        )
        for reason, count in c.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
        yield GaugeMetricFamily(
            "ferry_hooks_queue_depth", "Webhook events waiting to be sent", value=len(hooks.queue)
        )
        yield GaugeMetricFamily(
            "ferry_hooks_held",
            "channel.vacated / user.offline events in their hold-back",
            value=hooks.presence.held,
        )
