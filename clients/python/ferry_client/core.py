"""The sans-I/O core of the client: a pure state machine.

Inputs are method calls carrying the time (`now`: monotonic seconds; `wall`: Unix
seconds, only where a token's `exp` is read): the transport's events (`connected`,
`receive`, `closed`, `connect_failed`), the application's calls (`subscribe`, `publish`,
`take`, `close`) and `tick` when `next_deadline()` has passed. Outputs are appended to
`self.out`: effects for the I/O layer to perform (`Connect`, `Send`, `Close`, `Abort`,
`FetchToken`) and events for the application (`PublishDone`, `SubscribeDone`, `Ready`,
`GapFound`, `SubEnded`, `StateChanged`, `Terminal`). Nothing here awaits, sleeps or
touches a socket, so every rule below is unit-tested with a fake clock
(tests/clients/test_core.py).

Each connection attempt has a number (`conn`); input from an older attempt is ignored, so
a late callback from a dropped transport cannot disturb the current one.

The rules, in one place:

* Position. Each subscription keeps `position`, the last seq accepted (queued for the
  application). A `msg` with seq <= position is a duplicate and dropped; seq ==
  position + 1 is accepted (the position moves BEFORE the application sees it); a larger
  seq is a live gap: it is dropped and the channel resubscribed with `since=position`,
  which replays what was skipped.
* Reconnect. After `welcome`, every subscription is sent again with `since=position` and
  the `epoch` it last saw; publishes wait until all are answered (SYNCING), then the
  unacked ones are resent in their order, each with its original `mid`.
* Gaps. `recovered:false` (history too short, epoch changed, seq went backwards) is
  reported as a `Gap` with the exact range, never skipped silently.
* Queue. Each subscription's queue is bounded; when full, arriving messages are dropped
  (the position does not move) until the application has drained the queue, then the
  channel is resubscribed from the last consumed seq. The socket is always read, so a
  consumer that publishes (and awaits the ack) cannot deadlock.
* Inbox. `welcome.inbox` names the user's inbox and its head; it is tracked like any
  subscription (the server subscribes it by itself), and after a reconnect it is
  resubscribed with `since` when the head moved, so DMs sent while offline arrive once.
* Pacing. Publishes are paced by a token bucket below `welcome.limits` (publish_rate,
  publish_burst) so the server's bucket never runs dry; `max_data_bytes` is checked
  before anything is sent.
"""

from __future__ import annotations

import base64
import heapq
import json
import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ferry_client.frames import (
    AckFrame,
    Auth,
    ClientFrame,
    Codec,
    Encoding,
    ErrorFrame,
    Limits,
    MsgFrame,
    Ping,
    Pong,
    Pub,
    Refreshed,
    Sub,
    Subscribed,
    Unsub,
    Unsubscribed,
    Welcome,
)
from ferry_client.machine import FINAL, LIVE, Event, State, transition
from ferry_client.policy import SILENCE_POLICY, Action, Backoff, Policy, close_policy, http_policy
from ferry_client.types import (
    Ack,
    ClientClosed,
    FerryError,
    Gap,
    Message,
    PayloadTooLarge,
    PublishQueueFull,
    PublishRejected,
    PublishTimeout,
    SubscribeError,
    SubscriptionEnded,
    TerminalError,
)

# --- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    encoding: Encoding = Encoding.JSON
    auth: str = "header"  # how the token travels: "header", "query" or "frame" (first frame)
    token_source: bool = False  # a get_token callable exists (new tokens can be fetched)
    backoff: Backoff = field(default_factory=Backoff)
    connect_timeout: float = 10.0  # TCP + upgrade
    ping_interval: float = 10.0  # send {"op":"ping"} after this long without a frame
    silence_timeout: float = 25.0  # no frame at all for this long: the link is dead
    stable_after: float = 5.0  # a connection open this long resets the backoff
    publish_timeout: float | None = 30.0  # default deadline of a publish (None: no deadline)
    max_pending: int = 10_000  # publishes queued or unacked
    max_inflight: int = 1_000  # publishes sent and unacked on one connection
    queue_size: int = 1_000  # messages queued per subscription
    pace_rate: float = 0.9  # fraction of welcome.limits.publish_rate used
    pace_burst: float = 0.5  # fraction of welcome.limits.publish_burst used
    refresh_lead: float = 0.2  # refresh a token this fraction of its lifetime before exp


# --- outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Connect:
    conn: int
    token: str | None  # to present at the upgrade (None with first-frame auth)


@dataclass(frozen=True)
class Send:
    conn: int
    payload: bytes


@dataclass(frozen=True)
class Close:
    conn: int
    code: int
    reason: str


@dataclass(frozen=True)
class Abort:
    """Drop the transport without a close handshake (it is silent: nobody would answer)."""

    conn: int


@dataclass(frozen=True)
class FetchToken:
    pass


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class Ready:
    """The queue of `ch` went from empty to non-empty."""

    ch: str


@dataclass(frozen=True)
class SubscribeDone:
    """The first answer to subscribe(ch): `error` is None when subscribed."""

    ch: str
    error: FerryError | None


@dataclass(frozen=True)
class SubEnded:
    ch: str
    error: FerryError | None


@dataclass(frozen=True)
class PublishDone:
    id: str
    ack: Ack | None
    error: FerryError | None


@dataclass(frozen=True)
class GapFound:
    gap: Gap


@dataclass(frozen=True)
class Terminal:
    error: FerryError


Output = (
    Connect
    | Send
    | Close
    | Abort
    | FetchToken
    | StateChanged
    | Ready
    | SubscribeDone
    | SubEnded
    | PublishDone
    | GapFound
    | Terminal
)

# --- internal records ------------------------------------------------------------------


class SubStatus:
    NEW = "new"  # never sent on the current connection
    PENDING = "pending"  # `sub` sent, no answer yet
    ACTIVE = "active"
    ENDED = "ended"


@dataclass
class Subscription:
    ch: str
    capacity: int
    since: int | None = None  # what the application asked for (first request only)
    position: int | None = None  # last seq accepted
    head: int | None = None  # the channel's last seq when the server last answered `sub`
    consumed: int | None = None  # last seq the application took
    epoch: str | None = None
    status: str = SubStatus.NEW
    req_id: str | None = None
    requested_since: int | None = None
    answered: bool = False  # the first `subscribed` came
    overflow: bool = False  # dropping arrivals until the queue is drained
    inbox: bool = False
    gaps_in_stream: bool = True  # Gap items are queued (else only GapFound is emitted)
    queue: deque[Message | Gap] = field(default_factory=deque)
    dropped_dups: int = 0
    dropped_overflow: int = 0
    heals: int = 0
    ended_error: FerryError | None = None


@dataclass
class _Pub:
    id: str
    mid: str
    ch: str
    data: bytes
    deadline: float | None
    sends: int = 0
    in_flight: bool = False


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def _fill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, now: float) -> bool:
        self._fill(now)
        if self.tokens >= 1.0 - 1e-9:  # float dust must not stall the pacer
            self.tokens -= 1.0
            return True
        return False

    def ready_at(self) -> float:
        return self.at + max(0.0, 1.0 - self.tokens) / self.rate + 1e-6

    def retune(self, rate: float, burst: float, now: float) -> None:
        self._fill(now)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)


def token_exp(token: str) -> float | None:
    """The `exp` claim of a JWT, read WITHOUT verifying it (the server verifies; the client
    only wants to know when to refresh). None if it is not a JWT or has no exp."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(raw)
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


# --- the core --------------------------------------------------------------------------


class Core:
    def __init__(
        self,
        config: Config | None = None,
        rng: random.Random | None = None,
        token: str | None = None,
    ) -> None:
        self.config = config or Config()
        self.rng = rng or random.Random()
        self.codec = Codec(self.config.encoding)
        self.out: deque[Output] = deque()
        self.state = State.IDLE
        self.state_reason = ""
        self.error: FerryError | None = None  # why the client failed (FAILED)
        self.conn = 0
        # auth
        self.token = token
        self.need_token = token is None and self.config.token_source
        self.token_in_flight = False
        self.refresh_at: float | None = None
        self.conn_token: str | None = None  # the token this connection presented
        # reconnects
        self.attempt = 0
        self.spread = False
        self.retry_at: float | None = None
        self.connect_deadline: float | None = None
        self.open_since = 0.0
        self.last_recv = 0.0
        self.last_ping = 0.0
        # what the server told us
        self.welcome: Welcome | None = None
        self.limits: Limits | None = None
        self.ping_interval = self.config.ping_interval
        # subscriptions
        self.subs: dict[str, Subscription] = {}
        self.inbox_ch: str | None = None
        self.syncing: set[str] = set()
        self._sub_reqs: dict[str, str] = {}  # request id -> channel
        # publishes
        self.pubs: dict[str, _Pub] = {}  # every unresolved publish
        self.outbox: deque[_Pub] = deque()  # to send (in order) once OPEN
        self.inflight: dict[str, _Pub] = {}  # sent on this connection, unacked (send order)
        self._deadlines: list[tuple[float, str]] = []
        self.bucket: TokenBucket | None = None
        self.pace_at: float | None = None
        self._ids = 0
        self.stats: dict[str, int] = {
            "connects": 0,
            "welcomes": 0,
            "resent": 0,
            "dups": 0,
            "gaps": 0,
            "heals": 0,
            "pings": 0,
            "silences": 0,
            "refreshes": 0,
            "server_errors": 0,
            "bad_frames": 0,
        }
        self.last_server_error: ErrorFrame | None = None

    # --- helpers -------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids}"

    def _send(self, frame: ClientFrame) -> None:
        self.out.append(Send(self.conn, self.codec.encode(frame)))

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def _go(self, event: Event, now: float, reason: str = "") -> None:
        old = self.state
        new = transition(old, event)
        self.state = new
        self.state_reason = reason or event.value
        if old in LIVE and new not in LIVE:
            self._left_connection(now)
        self.out.append(StateChanged(old, new, self.state_reason))
        enter = getattr(self, f"_enter_{new.value}", None)
        if enter is not None:
            enter(now)

    # --- state entries -------------------------------------------------------------------

    def _enter_token(self, now: float) -> None:
        if not self.token_in_flight:
            self.token_in_flight = True
            self.out.append(FetchToken())

    def _enter_connecting(self, now: float) -> None:
        self.conn += 1
        self.stats["connects"] += 1
        self.connect_deadline = now + self.config.connect_timeout
        self.conn_token = self.token
        token = None if self.config.auth == "frame" else self.token
        self.out.append(Connect(self.conn, token))

    def _enter_handshake(self, now: float) -> None:
        self.connect_deadline = None
        self.last_recv = self.last_ping = now
        if self.config.auth == "frame" and self.token is not None:
            self._send(Auth(token=self.token, id=self._id("a")))

    def _enter_syncing(self, now: float) -> None:
        self.syncing.clear()
        for sub in list(self.subs.values()):
            if sub.status == SubStatus.ENDED:
                continue
            if sub.inbox:
                self._resync_inbox(sub, now)
            else:
                self._send_sub(sub)
                self.syncing.add(sub.ch)
        if not self.syncing:
            self._go(Event.SYNCED, now)

    def _enter_open(self, now: float) -> None:
        self.open_since = now
        self._flush(now)

    def _enter_backoff(self, now: float) -> None:
        delay = self.config.backoff.delay(self.attempt, self.rng, self.spread)
        self.attempt += 1
        self.spread = False
        self.retry_at = now + delay

    def _enter_failed(self, now: float) -> None:
        error = self.error or TerminalError("failed")
        self._end_everything(error)
        self.out.append(Terminal(error))

    def _enter_closed(self, now: float) -> None:
        self._end_everything(ClientClosed("the client was closed"))

    def _left_connection(self, now: float) -> None:
        """The transport is gone: unacked publishes go back to the head of the queue (in
        their order) and every subscription will be sent again."""
        self.connect_deadline = None
        self.syncing.clear()
        self._sub_reqs.clear()
        if self.inflight:
            resend = list(self.inflight.values())
            for p in resend:
                p.in_flight = False
            self.outbox.extendleft(reversed(resend))
            self.inflight.clear()
        for sub in self.subs.values():
            if sub.status != SubStatus.ENDED:
                sub.status = SubStatus.NEW

    def _end_everything(self, error: FerryError) -> None:
        for p in list(self.pubs.values()):
            self.out.append(PublishDone(p.id, None, error))
        self.pubs.clear()
        self.outbox.clear()
        self.inflight.clear()
        self._deadlines.clear()
        for sub in self.subs.values():
            if sub.status != SubStatus.ENDED:
                if not sub.answered:
                    self.out.append(SubscribeDone(sub.ch, error))
                self._end_sub(sub, error if not isinstance(error, ClientClosed) else None)
        self.refresh_at = self.retry_at = self.pace_at = None

    # --- transport inputs ----------------------------------------------------------------

    def start(self, now: float, wall: float) -> None:
        if self.state is not State.IDLE:
            return
        if self.token is not None:
            self._schedule_refresh(self.token, now, wall)
        self._go(Event.FETCH if self.need_token else Event.CONNECT, now, "start")

    def connected(self, conn: int, now: float) -> bool:
        """The upgrade succeeded. False: this transport is stale and must be closed."""
        if conn != self.conn or self.state is not State.CONNECTING:
            return False
        self._go(Event.UPGRADED, now)
        return True

    def connect_failed(self, conn: int, now: float, status: int | None, reason: str) -> None:
        if conn != self.conn or self.state is not State.CONNECTING:
            return
        policy = http_policy(status)
        what = f"HTTP {status}" if status is not None else reason
        self._lost(policy, now, f"upgrade refused: {what} ({policy.meaning})", status=status)

    def closed(self, conn: int, now: float, code: int, reason: str = "") -> None:
        if conn != self.conn or not self.live:
            return
        policy = close_policy(code)
        text = f"closed {code}" + (f" {reason}" if reason else "") + f" ({policy.meaning})"
        self._lost(policy, now, text, code=code)

    def _lost(
        self,
        policy: Policy,
        now: float,
        reason: str,
        code: int | None = None,
        status: int | None = None,
    ) -> None:
        action = policy.action
        if action is Action.REAUTH and not self.config.token_source:
            action = Action.TERMINAL
            reason += "; no get_token to fetch another token"
        if action is Action.TERMINAL:
            self.error = TerminalError(reason, code=code, status=status)
            self._go(Event.FATAL, now, reason)
            return
        if self.state is State.OPEN and now - self.open_since >= self.config.stable_after:
            self.attempt = 0
        self.spread = policy.spread
        if action is Action.REAUTH:
            self.need_token = True
            self._go(Event.REAUTH, now, reason)
        else:
            self._go(Event.RETRY, now, reason)

    def receive(self, conn: int, now: float, payload: bytes) -> None:
        if conn != self.conn or self.state not in (State.HANDSHAKE, State.SYNCING, State.OPEN):
            return
        self.last_recv = now
        try:
            frame = self.codec.decode(payload)
        except msgspec.DecodeError:
            self.stats["bad_frames"] += 1
            return
        if frame is None:
            return  # an op this client does not know
        if isinstance(frame, MsgFrame):
            self._on_msg(frame, now)
        elif isinstance(frame, AckFrame):
            self._on_ack(frame)
        elif isinstance(frame, Subscribed):
            self._on_subscribed(frame, now)
        elif isinstance(frame, Welcome):
            self._on_welcome(frame, now)
        elif isinstance(frame, ErrorFrame):
            self._on_error(frame, now)
        elif isinstance(frame, Unsubscribed):
            self._on_unsubscribed(frame)
        elif isinstance(frame, Refreshed):
            self.stats["refreshes"] += 1
        elif isinstance(frame, Pong):
            pass

    # --- tokens --------------------------------------------------------------------------

    def token_ready(self, now: float, wall: float, token: str) -> None:
        self.token_in_flight = False
        if self.final:
            return
        self.token = token
        self.need_token = False
        self._schedule_refresh(token, now, wall)
        if self.state is State.TOKEN:
            self._go(Event.TOKEN_OK, now)
        elif self.state in (State.SYNCING, State.OPEN):
            self.conn_token = token
            self._send(Auth(token=token, id=self._id("a")))

    def token_failed(self, now: float, error: BaseException, terminal: bool = False) -> None:
        self.token_in_flight = False
        if self.final:
            return
        reason = f"get_token failed: {error!r}"
        if terminal:
            self.error = error if isinstance(error, FerryError) else TerminalError(reason)
            self._go(Event.FATAL, now, reason)
            return
        if self.state is State.TOKEN:
            self._go(Event.TOKEN_FAILED, now, reason)
        else:
            self.refresh_at = now + self.config.backoff.delay(self.attempt, self.rng)

    def _schedule_refresh(self, token: str, now: float, wall: float) -> None:
        self.refresh_at = None
        exp = token_exp(token)
        if exp is None or not self.config.token_source:
            return
        ttl = exp - wall
        if ttl <= 0:
            return  # already expired: the server will say 401/4401 and we fetch then
        lead = min(max(ttl * self.config.refresh_lead, 1.0), 60.0)
        self.refresh_at = now + max(ttl - lead, ttl / 2)

    # --- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times: list[float] = []
        if self.state is State.BACKOFF and self.retry_at is not None:
            times.append(self.retry_at)
        if self.state is State.CONNECTING and self.connect_deadline is not None:
            times.append(self.connect_deadline)
        if self.state in (State.HANDSHAKE, State.SYNCING, State.OPEN):
            times.append(self.last_recv + self.config.silence_timeout)
            times.append(max(self.last_recv, self.last_ping) + self.ping_interval)
        if self.state is State.OPEN and self.pace_at is not None and self.outbox:
            times.append(self.pace_at)
        if self._deadlines:
            times.append(self._deadlines[0][0])
        if self.refresh_at is not None and not self.token_in_flight:
            times.append(self.refresh_at)
        return min(times) if times else None

    def tick(self, now: float) -> None:
        if self.final:
            return
        self._expire(now)
        if self.state is State.BACKOFF and self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self._go(Event.FETCH if self.need_token else Event.CONNECT, now, "retry")
        elif self.state is State.CONNECTING and self.connect_deadline is not None:
            if now >= self.connect_deadline:
                self.out.append(Abort(self.conn))
                self._lost(http_policy(None), now, "connect timed out")
        elif self.state in (State.HANDSHAKE, State.SYNCING, State.OPEN):
            if now - self.last_recv >= self.config.silence_timeout:
                self.stats["silences"] += 1
                self.out.append(Abort(self.conn))
                silent = f"no frame for {now - self.last_recv:.1f}s"
                self._lost(SILENCE_POLICY, now, f"{silent} ({SILENCE_POLICY.meaning})")
            elif now - max(self.last_recv, self.last_ping) >= self.ping_interval:
                self.last_ping = now
                self.stats["pings"] += 1
                self._send(Ping())
        if self.state is State.OPEN and self.outbox:
            self._flush(now)
        if (
            self.refresh_at is not None
            and now >= self.refresh_at
            and not self.token_in_flight
            and not self.final
        ):
            self.refresh_at = None
            self.token_in_flight = True
            self.out.append(FetchToken())

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, pid = heapq.heappop(self._deadlines)
            p = self.pubs.pop(pid, None)
            if p is None:
                continue
            if p.in_flight:
                self.inflight.pop(pid, None)
            else:
                self.outbox.remove(p)
            timeout = self.config.publish_timeout
            if p.sends:
                text = (
                    f"publish to {p.ch} not acknowledged within its deadline (mid={p.mid}): "
                    f"it may have been logged; a retry with the same mid is safe"
                )
            else:
                text = (
                    f"publish to {p.ch} never sent within its deadline ({self.state.value}"
                    f"{f', {timeout}s' if timeout else ''}; mid={p.mid})"
                )
            self.out.append(PublishDone(pid, None, PublishTimeout(text, p.mid, p.sends > 0)))

    # --- application inputs --------------------------------------------------------------

    def close(self, now: float, reason: str = "closed by the application") -> None:
        if self.final:
            return
        live = self.live
        conn = self.conn
        self._go(Event.CLOSE, now, reason)
        if live:
            self.out.append(Close(conn, 1000, ""))

    def _check_usable(self) -> None:
        if self.state is State.FAILED:
            raise self.error or TerminalError("failed")
        if self.state is State.CLOSED:
            raise ClientClosed("the client is closed")

    def subscribe(
        self,
        ch: str,
        since: int | None = None,
        queue_size: int | None = None,
        gaps_in_stream: bool = True,
    ) -> Subscription:
        self._check_usable()
        sub = self.subs.get(ch)
        if sub is not None and sub.status != SubStatus.ENDED:
            return sub
        sub = Subscription(
            ch,
            capacity=queue_size or self.config.queue_size,
            since=since,
            position=since,
            consumed=since,
            gaps_in_stream=gaps_in_stream,
        )
        self.subs[ch] = sub
        if self.state in (State.SYNCING, State.OPEN):
            self._send_sub(sub)
        return sub

    def unsubscribe(self, ch: str, now: float) -> None:
        sub = self.subs.get(ch)
        if sub is None or sub.inbox:
            return
        del self.subs[ch]
        if self.state in (State.SYNCING, State.OPEN):
            self._send(Unsub(ch=ch))
        if not sub.answered:
            self.out.append(SubscribeDone(ch, None))
        self._end_sub(sub, None)
        self._synced_one(ch, now)

    def publish(
        self, now: float, ch: str, data: Any, timeout: float | None = -1.0
    ) -> tuple[str, str]:
        """Queue a publish; returns (id, mid). The outcome comes as PublishDone(id)."""
        self._check_usable()
        if len(self.pubs) >= self.config.max_pending:
            raise PublishQueueFull(
                f"{len(self.pubs)} publishes are already waiting (max_pending); "
                "await some before publishing more"
            )
        encoded = self.codec.encode_data(data)
        self._check_size(ch, encoded)
        if timeout is not None and timeout < 0:
            timeout = self.config.publish_timeout
        p = _Pub(
            self._id("p"),
            uuid.UUID(int=self.rng.getrandbits(128), version=4).hex,
            ch,
            encoded,
            None if timeout is None else now + timeout,
        )
        self.pubs[p.id] = p
        self.outbox.append(p)
        if p.deadline is not None:
            heapq.heappush(self._deadlines, (p.deadline, p.id))
        if self.state is State.OPEN:
            self._flush(now)
        return p.id, p.mid

    def _check_size(self, ch: str, encoded: bytes) -> None:
        limits = self.limits
        if limits is None:
            return
        if limits.max_data_bytes is not None and len(encoded) > limits.max_data_bytes:
            raise PayloadTooLarge(
                f"data for {ch} is {len(encoded)} bytes encoded, the server takes at most "
                f"{limits.max_data_bytes} (welcome.limits.max_data_bytes)"
            )
        if limits.max_frame_bytes is not None and len(encoded) + 512 > limits.max_frame_bytes:
            raise PayloadTooLarge(
                f"data for {ch} is {len(encoded)} bytes encoded: the frame would pass "
                f"max_frame_bytes {limits.max_frame_bytes}"
            )

    def take(self, ch: str, sub: Subscription | None = None) -> Message | Gap | None:
        """The next queued item of `ch` (None if empty). Taking marks it consumed."""
        sub = sub or self.subs.get(ch)
        if sub is None or not sub.queue:
            return None
        item = sub.queue.popleft()
        if isinstance(item, Message):
            sub.consumed = item.seq
        if sub.overflow and not sub.queue and sub.status != SubStatus.ENDED:
            sub.overflow = False
            if self.state in (State.SYNCING, State.OPEN) and sub.status == SubStatus.ACTIVE:
                self._send_sub(sub)  # since = position = the last consumed seq
        return item

    # --- publishing ----------------------------------------------------------------------

    def _flush(self, now: float) -> None:
        self.pace_at = None
        while (
            self.outbox
            and self.state is State.OPEN
            and len(self.inflight) < self.config.max_inflight
        ):
            p = self.outbox[0]
            try:
                self._check_size(p.ch, p.data)
            except PayloadTooLarge as exc:
                self.outbox.popleft()
                self.pubs.pop(p.id, None)
                self.out.append(PublishDone(p.id, None, exc))
                continue
            if self.bucket is not None and not self.bucket.take(now):
                self.pace_at = self.bucket.ready_at()
                return
            self.outbox.popleft()
            if p.sends:
                self.stats["resent"] += 1
            p.sends += 1
            p.in_flight = True
            self.inflight[p.id] = p
            self._send(Pub(ch=p.ch, data=msgspec.Raw(p.data), id=p.id, mid=p.mid))

    def _on_ack(self, frame: AckFrame) -> None:
        pid = frame.id if isinstance(frame.id, str) else str(frame.id)
        p = self.inflight.pop(pid, None)
        if p is None:
            return  # timed out meanwhile, or not ours
        self.pubs.pop(pid, None)
        if frame.dup:
            self.stats["dups"] += 1
        self.out.append(PublishDone(pid, Ack(frame.ch, frame.seq, frame.dup, p.mid), None))

    # --- subscriptions -------------------------------------------------------------------

    def _send_sub(self, sub: Subscription) -> None:
        since = sub.position if sub.position is not None else sub.since
        req = self._id("s")
        self._sub_reqs[req] = sub.ch
        sub.req_id = req
        sub.status = SubStatus.PENDING
        sub.requested_since = since
        epoch = sub.epoch if since is not None else None
        self._send(Sub(ch=sub.ch, since=since, epoch=epoch, id=req))

    def _on_welcome(self, frame: Welcome, now: float) -> None:
        if self.state is not State.HANDSHAKE:
            return
        self.stats["welcomes"] += 1
        if not frame.epoch:
            frame.epoch = None
        self.welcome = frame
        limits = frame.limits
        self.limits = limits
        self.ping_interval = self.config.ping_interval
        if limits is not None:
            if limits.idle_timeout_s:
                self.ping_interval = min(self.ping_interval, limits.idle_timeout_s / 2)
            if limits.publish_rate and limits.publish_rate > 0:
                rate = limits.publish_rate * self.config.pace_rate
                burst = max(1.0, float(int((limits.publish_burst or 1) * self.config.pace_burst)))
                if self.bucket is None:
                    self.bucket = TokenBucket(rate, burst, now)
                else:
                    self.bucket.retune(rate, burst, now)
            else:
                self.bucket = None
        if frame.inbox is not None:
            self._track_inbox(frame, now)
        if self.token is not None and self.token != self.conn_token:
            # refreshed while this connection was being made: present the new one now
            self.conn_token = self.token
            self._send(Auth(token=self.token, id=self._id("a")))
        self._go(Event.WELCOME, now)

    def _track_inbox(self, frame: Welcome, now: float) -> None:
        assert frame.inbox is not None
        ch = frame.inbox.ch
        if self.inbox_ch is not None and self.inbox_ch != ch:
            old = self.subs.pop(self.inbox_ch, None)  # another user now: that inbox is not ours
            if old is not None:
                self._end_sub(old, None)
        sub = self.subs.get(ch)
        if sub is None or sub.status == SubStatus.ENDED:
            # The server subscribed this connection to the inbox from its head on.
            sub = Subscription(
                ch,
                capacity=self.config.queue_size,
                position=frame.inbox.seq,
                consumed=frame.inbox.seq,
                epoch=frame.epoch,
                status=SubStatus.ACTIVE,
                answered=True,
                inbox=True,
            )
            self.subs[ch] = sub
        else:
            sub.inbox = True
            sub.status = SubStatus.NEW  # resynced in SYNCING (below)
        self.inbox_ch = ch

    def _resync_inbox(self, sub: Subscription, now: float) -> None:
        """After a welcome: catch up on the DMs sent while offline, if any."""
        welcome = self.welcome
        if welcome is None or welcome.inbox is None or welcome.inbox.ch != sub.ch:
            return
        if sub.status == SubStatus.ACTIVE:
            return  # created by this welcome: nothing to catch up
        head = welcome.inbox.seq
        pos = sub.position if sub.position is not None else head
        if sub.epoch is not None and welcome.epoch is not None and sub.epoch != welcome.epoch:
            self._gap(sub, Gap(sub.ch, 1, head, "epoch", welcome.epoch, sub.epoch, pos))
            sub.position = head
            sub.epoch = welcome.epoch
            self._activate(sub)
        elif head > pos:
            sub.position = pos
            self._send_sub(sub)
            self.syncing.add(sub.ch)
        elif head < pos:
            self._gap(sub, Gap(sub.ch, 1, head, "ahead", welcome.epoch, sub.epoch, pos))
            sub.position = head
            self._activate(sub)
        else:
            sub.position = pos
            self._activate(sub)
        if sub.epoch is None:
            sub.epoch = welcome.epoch

    def _activate(self, sub: Subscription) -> None:
        sub.status = SubStatus.ACTIVE
        if not sub.answered:
            sub.answered = True
            self.out.append(SubscribeDone(sub.ch, None))

    def _on_subscribed(self, frame: Subscribed, now: float) -> None:
        sub = self.subs.get(frame.ch)
        if sub is None or sub.status == SubStatus.ENDED:
            return
        if frame.id is not None and str(frame.id) != sub.req_id:
            self._sub_reqs.pop(str(frame.id), None)
            return  # the answer to an older request of this channel
        if sub.req_id is not None:
            self._sub_reqs.pop(sub.req_id, None)
        if not frame.epoch:
            frame.epoch = None
        head = frame.seq
        sub.head = head
        since = sub.requested_since
        if since is None:
            sub.position = head
            if sub.consumed is None:
                sub.consumed = head
        elif frame.recovered is False:
            pos = sub.position if sub.position is not None else since
            if sub.epoch is not None and frame.epoch is not None and sub.epoch != frame.epoch:
                gap = Gap(sub.ch, 1, head, "epoch", frame.epoch, sub.epoch, pos)
            elif since > head:
                gap = Gap(sub.ch, 1, head, "ahead", frame.epoch, sub.epoch, pos)
            else:
                gap = Gap(sub.ch, pos + 1, head, "history", frame.epoch, None, pos)
            sub.position = head
            if gap.reason != "history" or gap.count > 0:
                self._gap(sub, gap)
        if frame.epoch is not None:
            sub.epoch = frame.epoch
        self._activate(sub)
        self._synced_one(sub.ch, now)

    def _synced_one(self, ch: str, now: float) -> None:
        if ch in self.syncing:
            self.syncing.discard(ch)
            if not self.syncing and self.state is State.SYNCING:
                self._go(Event.SYNCED, now)

    def _gap(self, sub: Subscription, gap: Gap) -> None:
        self.stats["gaps"] += 1
        if sub.gaps_in_stream:
            was_empty = not sub.queue
            sub.queue.append(gap)
            if was_empty:
                self.out.append(Ready(sub.ch))
        self.out.append(GapFound(gap))

    def _on_msg(self, frame: MsgFrame, now: float) -> None:
        sub = self.subs.get(frame.ch)
        if sub is None or sub.status == SubStatus.ENDED:
            return
        if sub.overflow:
            sub.dropped_overflow += 1
            return
        pos = sub.position
        seq = frame.seq
        if pos is None:
            return  # before the first `subscribed` of a fresh subscription: not ours yet
        if seq <= pos:
            sub.dropped_dups += 1
            return
        if seq > pos + 1:
            # A jump: dropped, and healed by a replay from the position (unless one is
            # already on its way).
            if sub.status == SubStatus.ACTIVE and self.state in (State.SYNCING, State.OPEN):
                sub.heals += 1
                self.stats["heals"] += 1
                self._send_sub(sub)
            return
        if len(sub.queue) >= sub.capacity:
            sub.overflow = True
            sub.dropped_overflow += 1
            return
        sub.position = seq
        was_empty = not sub.queue
        sub.queue.append(Message(frame.ch, seq, frame.ts, frame.from_, frame.data, frame.error))
        if was_empty:
            self.out.append(Ready(sub.ch))

    def _on_unsubscribed(self, frame: Unsubscribed) -> None:
        sub = self.subs.get(frame.ch)
        if sub is None or frame.reason is None:
            return  # the answer to our own unsub
        del self.subs[frame.ch]
        self.syncing.discard(frame.ch)
        self._end_sub(sub, SubscriptionEnded(f"the server ended {frame.ch}: {frame.reason}"))

    def _end_sub(self, sub: Subscription, error: FerryError | None) -> None:
        sub.status = SubStatus.ENDED
        sub.ended_error = error
        self.out.append(SubEnded(sub.ch, error))

    def _on_error(self, frame: ErrorFrame, now: float) -> None:
        self.stats["server_errors"] += 1
        self.last_server_error = frame
        fid = None if frame.id is None else str(frame.id)
        if fid is None:
            return
        p = self.inflight.pop(fid, None)
        if p is not None:
            self.pubs.pop(fid, None)
            self.out.append(PublishDone(fid, None, PublishRejected(frame.code, frame.reason)))
            return
        ch = self._sub_reqs.pop(fid, None)
        if ch is not None:
            sub = self.subs.get(ch)
            if sub is None or sub.req_id != fid:
                return
            error = SubscribeError(frame.code, frame.reason)
            del self.subs[ch]
            if not sub.answered:
                self.out.append(SubscribeDone(ch, error))
            self._end_sub(sub, error)
            self._synced_one(ch, now)
