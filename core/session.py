"""Per-connection protocol state, without I/O: frames in, frames (into the outbox) and a
close request out. The picows listener only moves bytes; everything a client can make
ferry do is decided here, and can be tested with a fake writer and no socket.

Connection states, all in one table:

    AUTH ──auth frame──▶ OPEN ──close(code)──▶ CLOSING ──closed()──▶ CLOSED
      │                    └──────────────────closed()──────────────────┘
      └── another frame, a bad token, the timeout: close 4401 (4403, 1013) ──▶ CLOSING

A connection that came without a token starts in AUTH (first-frame auth: browsers cannot
read an HTTP 401): its first frame must be `auth`, and only then is it greeted.

`close(code)` leaves OPEN at once (no more input is read, no more messages are delivered)
but asks the transport to close only once every publish it accepted has its `ack` (or
`unavailable`) in the outbox, so the close frame comes after them; a log that does not
answer within `CLOSE_ACK_GRACE_S` does not hold the connection open.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import msgspec

from common.durability import Encoding, Entry, LogUnavailable
from core import presence
from core.auth import Grant, Principal
from core.errors import (
    AuthError,
    BadRequest,
    CloseCode,
    ErrorCode,
    Forbidden,
    LocalError,
    NotSubscribed,
    PeerError,
    RateAbuse,
    RateLimited,
    RecordRefused,
    SlowConsumer,
    TooLarge,
    WrongUser,
    answer_for,
)
from core.outbox import Outbox
from core.protocol import (
    DECODERS,
    SERVER_CHANNELS,
    SUBPROTOCOL_NAMES,
    SYS_PREFIX,
    Ack,
    Auth,
    ClientLimits,
    Error,
    Inbox,
    MsgId,
    Ping,
    Pong,
    Presence,
    Pub,
    Refreshed,
    ServerFrame,
    Sub,
    Subscribed,
    Unsub,
    Unsubscribed,
    Welcome,
    check_value,
    encode_frame,
    valid_channel,
)
from core.router import Replay, Router, frame_for
from core.scheduling import Cancellable, Clock, Later


class State(enum.Enum):
    AUTH = "auth"  # waiting for the first frame's token
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.AUTH: frozenset({State.OPEN, State.CLOSING, State.CLOSED}),
    State.OPEN: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}

ABUSE_WINDOW_S = 10.0
# The server's own channels: nobody publishes into them, not even the admin.
# A `since` replay adds at most this much per flush, and only after the previous page was
# handed to the socket: a client that never reads pins one page, not its whole history.
REPLAY_PAGE_BYTES = 64 * 1024
# Messages per read from the deep history store (a `since` below the ring).
DEEP_PAGE = 500
# How long a closing connection waits for the acks of publishes it already accepted.
CLOSE_ACK_GRACE_S = 5.0


Authenticate = Callable[[str], Grant]
# First-frame auth: the transport's say on an authenticated grant (its connection limits):
# None admits it, an exception refuses it (answered as `core.errors.ANSWERS` says).
Admit = Callable[[Grant], BaseException | None]


class Limits(msgspec.Struct, frozen=True):
    max_subscriptions: int = 1000
    max_data_bytes: int = 64 * 1024
    publish_rate: float = 1000.0
    publish_burst: int = 2000
    rate_abuse_limit: int = 100
    max_data_depth: int = 32
    # told to the client in `welcome.limits`, not enforced here
    max_frame_bytes: int = 64 * 1024
    history_size: int = 1000
    dedupe_window_s: float = 120.0
    idle_timeout_s: float = 60.0

    def for_client(self) -> ClientLimits:
        """`welcome.limits`: the fields of `ClientLimits`, which share these names."""
        return ClientLimits(
            **{name: getattr(self, name) for name in ClientLimits.__struct_fields__}
        )


class ErrorCounter:
    """Errors sent to clients, by code (exported as a metric)."""

    def __init__(self) -> None:
        self.by_code: dict[str, int] = {code.value: 0 for code in ErrorCode}

    def add(self, code: str) -> None:
        self.by_code[code] = self.by_code.get(code, 0) + 1


class Session:
    """One client connection's protocol state.

    Time comes in from outside: `clock` (rate limits), `wall_clock` (token expiry) and
    `schedule` (loop.call_later's shape: expiry, close grace), so the sans-I/O tests run a
    session under a hand-moved clock with no event loop (tests/core/world.py)."""

    # slots: an idle connection's memory is mostly these objects (docs/benchmarks.md)
    __slots__ = (
        "_admit", "_authenticate", "_clock", "_close_timer", "_decoder", "_encoding_is_json",
        "_errors", "_expiry", "_pending_close", "_replays", "_request_close", "_schedule",
        "_strikes", "_tokens", "_tokens_at", "_wall", "close_code", "conn_id", "encoding",
        "errors_sent", "expires_at", "inflight", "limits", "node_id", "outbox", "principal",
        "published", "router", "state", "subscriptions", "user",
    )  # fmt: skip

    def __init__(
        self,
        conn_id: str,
        principal: Principal,
        encoding: Encoding,
        router: Router,
        outbox: Outbox,
        limits: Limits,
        node_id: str,
        request_close: Callable[[int, str], None],
        errors: ErrorCounter | None = None,
        clock: Clock = time.monotonic,
        *,
        expires_at: float | None = None,
        schedule: Later | None = None,
        authenticate: Authenticate | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        self.conn_id = conn_id
        self.principal = principal
        self.user = principal.user
        self.encoding = encoding
        self.router = router
        self.outbox = outbox
        self.limits = limits
        self.node_id = node_id
        self.state = State.OPEN
        self.subscriptions: set[str] = set()
        self._request_close = request_close
        self._errors = errors or ErrorCounter()
        self._clock = clock
        self._wall = wall_clock
        self._schedule = schedule
        self._authenticate = authenticate
        self._decoder = DECODERS[encoding]
        self._encoding_is_json = encoding == Encoding.JSON
        self._tokens = float(limits.publish_burst)
        self._tokens_at = clock()
        self._strikes: list[float] | None = None  # created on the first rate_limited
        self.close_code: int | None = None
        self._replays: dict[str, Replay] = {}  # sub with since: channel -> its replay
        self.inflight = 0  # publishes handed to the log, not yet acked or failed
        self._pending_close: tuple[int, str] | None = None
        self._close_timer: Cancellable | None = None
        self.expires_at = expires_at  # Unix seconds the token expires at (None: never)
        self._expiry: Cancellable | None = None
        self._admit: Admit | None = None
        # for the flow view (core/flow.py): publishes handed to the log, error frames sent
        self.published = 0
        self.errors_sent = 0

    # --- lifecycle -------------------------------------------------------------------

    def _move(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"session {self.conn_id}: {self.state.value} -> {new.value}")
        self.state = new

    def start(self) -> None:
        """Subscribe the client to its own `@user` inbox and greet it (with the limits it
        must respect and the inbox's head, from which it is subscribed)."""
        inbox = self.principal.inbox
        router = self.router
        head, _, _ = router.subscribe(self, inbox, None, None)
        self.subscriptions.add(inbox)
        self.send(
            Welcome(
                client=self.conn_id,
                user=self.user,
                node=self.node_id,
                epoch=router.epoch,
                limits=self.limits.for_client(),
                inbox=Inbox(inbox, head),
            )
        )
        self._arm_expiry()

    def start_unauthenticated(self, timeout: float, admit: Admit) -> None:
        """First-frame auth: wait up to `timeout` seconds for `{"op":"auth"}`; `start()`
        follows once its token is good and `admit` lets the grant in."""
        if self.state is not State.OPEN or self.subscriptions:
            raise RuntimeError(f"session {self.conn_id} has started already")
        self.state = State.AUTH  # its initial state, instead of OPEN
        self._admit = admit
        if self._schedule is not None:
            self._expiry = self._schedule(timeout, self._auth_timed_out)

    def _auth_timed_out(self) -> None:
        self._expiry = None
        self.fail(AuthError("no auth frame came in time: send it first"))

    def _first_frame(self, payload: bytes, is_text: bool) -> None:
        try:
            frame = self._decoder.decode(payload) if is_text == self._encoding_is_json else None
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            frame = None
        if not isinstance(frame, Auth) or self._authenticate is None:
            self.fail(AuthError('authenticate first: the first frame must be {"op":"auth"}'))
            return
        try:
            grant = self._authenticate(frame.token)
        except AuthError as exc:
            self.fail(exc)
            return
        admit = self._admit
        refusal = admit(grant) if admit is not None else None
        if refusal is not None:
            self.fail(refusal)
            return
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.principal = grant.principal
        self.user = grant.principal.user
        self.expires_at = grant.expires_at
        self._move(State.OPEN)
        self.start()

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.expires_at is not None and self._schedule is not None:
            delay = max(0.0, self.expires_at - self._wall())
            self._expiry = self._schedule(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self.fail(AuthError("token expired: connect again with a new one"))

    def fail(self, exc: BaseException, msg_id: MsgId = None) -> None:
        """Tell the client about `exc` as `core.errors.ANSWERS` says: an error frame (the
        connection stays open) or a close. An unexpected exception's text is never sent."""
        code, reason = answer_for(exc)
        if isinstance(code, CloseCode):
            self.close(code, reason)
        else:
            self.error(code, reason, msg_id)

    def close(self, code: int, reason: str) -> None:
        """Stop reading and delivering, then ask the transport to close with `code` once
        the acks this connection is owed are queued. Idempotent."""
        if self.state is not State.OPEN and self.state is not State.AUTH:
            return
        self._move(State.CLOSING)
        self.close_code = code
        self._drop_subscriptions()
        self.outbox.accept_again()  # after an overflow: the owed acks still go out
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.inflight and self._schedule is not None:
            self._pending_close = (code, reason)
            self._close_timer = self._schedule(CLOSE_ACK_GRACE_S, self._close_now)
        else:
            self._request_close(code, reason)

    def _close_now(self) -> None:
        self._close_timer = None
        pending, self._pending_close = self._pending_close, None
        if pending is not None and self.state is State.CLOSING:
            self._request_close(*pending)

    def closed(self) -> None:
        """The transport is gone: forget every subscription."""
        if self.state is State.CLOSED:
            return
        self._move(State.CLOSED)
        self._drop_subscriptions()
        self.outbox.close()
        for timer in (self._expiry, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._expiry = self._close_timer = None
        self._pending_close = None

    def _drop_subscriptions(self) -> None:
        self.router.drop(self, self.subscriptions)
        self.subscriptions.clear()
        for replay in self._replays.values():
            self.router.end_replay(replay)
        self._replays.clear()
        self.outbox.refill = None

    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN

    # --- output ----------------------------------------------------------------------

    def send(self, frame: ServerFrame) -> None:
        self.outbox.push(encode_frame(self.encoding, frame))

    def error(self, code: str, reason: str, msg_id: MsgId = None) -> None:
        self._errors.add(code)
        self.errors_sent += 1
        self.send(Error(code=code, reason=reason, id=msg_id))

    def ack(self, channel: str, seq: int, ts_ms: int, msg_id: MsgId, dup: bool = False) -> None:
        if self.state is State.CLOSED:
            return
        self.outbox.push(encode_frame(self.encoding, Ack(ch=channel, seq=seq, id=msg_id, dup=dup)))
        # _settled(), inlined: this runs once per acked publish
        if self.inflight:
            self.inflight -= 1
        if self._pending_close is not None and not self.inflight:
            self._settled()

    def unavailable(self, msg_id: MsgId, error: BaseException | None = None) -> None:
        if self.state is State.CLOSED:
            return
        self.fail(error if error is not None else LogUnavailable(), msg_id)
        self._settled(answered=True)

    def _settled(self, answered: bool = False) -> None:
        """A deferred close may go now (`answered`: one more publish got its answer)."""
        if answered and self.inflight:
            self.inflight -= 1
        if not self.inflight and self._pending_close is not None:
            if self._close_timer is not None:
                self._close_timer.cancel()
            self._close_now()

    # --- input -----------------------------------------------------------------------

    def receive(self, payload: bytes, is_text: bool) -> None:
        """Handle one complete client message."""
        if self.state is not State.OPEN:
            if self.state is State.AUTH:
                self._first_frame(payload, is_text)
            return
        if is_text != self._encoding_is_json:
            expected = "text" if self._encoding_is_json else "binary"
            self.fail(
                BadRequest(f"this session ({self._subprotocol}) takes {expected} frames only")
            )
            return
        try:
            frame = self._decoder.decode(payload)
        except msgspec.ValidationError as exc:
            self.fail(BadRequest(f"invalid frame: {exc}"))
            return
        except msgspec.DecodeError:
            self.fail(BadRequest(f"malformed {'JSON' if self._encoding_is_json else 'msgpack'}"))
            return
        except RecursionError:
            self.fail(BadRequest(f"frame nests deeper than {self.limits.max_data_depth} levels"))
            return
        try:
            match frame:
                case Pub():
                    self._pub(frame)
                case Sub():
                    self._sub(frame)
                case Unsub():
                    self._unsub(frame)
                case Ping():
                    self.send(Pong(id=frame.id))
                case Auth():
                    self._auth(frame)
                case Presence():
                    self._presence(frame)
        except (PeerError, RecordRefused, LocalError) as exc:
            self.fail(exc, frame.id)

    @property
    def _subprotocol(self) -> str:
        return SUBPROTOCOL_NAMES[self.encoding]

    def _check_channel(self, name: str) -> None:
        if not valid_channel(name):
            raise BadRequest("channel must be 1-200 characters of A-Z a-z 0-9 _ . : @ $ -")

    def _owner(self, name: str) -> str | None:
        """Whom a new channel counts against (None: exempt from the per-user bound)."""
        principal = self.principal
        if principal.admin or name == principal.inbox or name.startswith(SYS_PREFIX):
            return None
        return self.user

    def _may_subscribe(self, name: str) -> None:
        """Raise unless `name` is a channel this connection may subscribe to."""
        if self.router.get(name) is None:
            self._check_channel(name)
        if not self.principal.can_subscribe(name):
            raise Forbidden(f"not allowed to subscribe to {name}")

    def _sub(self, frame: Sub) -> None:
        name = frame.ch
        self._may_subscribe(name)
        if frame.since is not None and frame.since < 0:
            raise BadRequest("since must be >= 0")
        new = name not in self.subscriptions
        if new:
            if len(self.subscriptions) > self.limits.max_subscriptions:  # the inbox is free
                raise Forbidden(
                    f"subscription limit reached ({self.limits.max_subscriptions} channels)"
                )
        else:
            # Idempotent: a repeated sub answers again (and replays when `since` asks).
            # Without `since` a live subscription just stays attached: no leave + join.
            self._stop_replay(name)
            if frame.since is not None:
                self.router.unsubscribe(self, name)
        router = self.router
        remote = router.remote
        if remote is not None and not remote.ready(name):
            # a channel owned by another node: its head comes from the owner first
            if not new:
                self.subscriptions.discard(name)
            remote.follow(name, lambda error: self._sub_ready(frame, error))
            return
        head, recovered, replay = router.subscribe(
            self, name, frame.since, self._owner(name), frame.epoch
        )
        self.subscriptions.add(name)
        channel = router.get(name)
        if channel is not None:  # after the attach: a watcher never hears its own join
            if frame.presence:
                presence.watch(channel, self.outbox, self.encoding)
            elif channel.watchers is not None:
                presence.unwatch(channel, self.outbox)
        if replay is not None and replay.deep:
            # `subscribed` waits for the first page: only then is `recovered` known
            self._replays[name] = replay
            self._deep_fetch(name, replay, (head, frame.id))
            return
        self.send(
            Subscribed(
                ch=name, seq=head, epoch=router.epoch_of(name), recovered=recovered, id=frame.id
            )
        )
        if replay is not None:
            self._replays[name] = replay
            self.outbox.refill = self._replay_more
            self._replay_more()

    def _sub_ready(self, frame: Sub, error: BaseException | None) -> None:
        """The owner's head of a remote channel is known (or it cannot be reached)."""
        if self.state is not State.OPEN:
            return
        try:
            if error is not None:
                raise error
            self._sub(frame)
        except (PeerError, LocalError) as exc:
            self.fail(exc, frame.id)

    def _stop_replay(self, name: str) -> None:
        replay = self._replays.pop(name, None)
        if replay is not None:
            self.router.end_replay(replay)
        if not self._replays:
            self.outbox.refill = None

    def _replay_more(self) -> None:
        """Send the next page of missed messages; called again after each flush."""
        budget = min(REPLAY_PAGE_BYTES, self.outbox.limit // 4)
        for name, replay in list(self._replays.items()):
            if self.outbox.size >= budget or self.state is not State.OPEN:
                return
            if replay.deep:
                if not replay.fetching:
                    self._deep_fetch(name, replay)
                continue
            done = self.router.replay_page(self, replay, budget)
            if done is None:
                # The ring moved past what this client still had to read: it fell behind.
                self.fail(SlowConsumer("slow consumer: history replay overrun"))
                return
            if done:
                del self._replays[name]
        if not self._replays:
            self.outbox.refill = None

    # --- deep history: a `since` below the ring, read from the database and the WAL ---

    def _deep_fetch(
        self, name: str, replay: Replay, first: tuple[int, MsgId] | None = None
    ) -> None:
        """Read the next page below the ring; `first`: the `sub`'s head and id, answered
        once the page shows whether `since + 1` is still there."""
        router = self.router
        assert router.deep is not None and router.spawn is not None
        ring = replay.channel.history
        before = ring[0].seq if ring else replay.channel.durable_seq + 1
        replay.fetching = True
        router.spawn(self._deep_read(name, replay, before, first))

    async def _deep_read(
        self, name: str, replay: Replay, before: int, first: tuple[int, MsgId] | None
    ) -> None:
        deep = self.router.deep
        assert deep is not None
        try:
            entries = await deep.read(name, replay.next_seq - 1, before, DEEP_PAGE)
        except Exception:  # the database is down: as good as gone, for now
            entries = []
        self._deep_arrived(name, replay, entries, first)

    def _deep_arrived(
        self,
        name: str,
        replay: Replay,
        entries: list[Entry],
        first: tuple[int, MsgId] | None,
    ) -> None:
        replay.fetching = False
        if replay.done or self.state is not State.OPEN or self._replays.get(name) is not replay:
            return
        ch = replay.channel
        found = bool(entries) and entries[0].seq == replay.next_seq
        if first is not None:
            head, msg_id = first
            epoch = self.router.epoch_of(name)
            if not found:
                # really gone (or unreadable): say so, and go live from the head
                del self._replays[name]
                self.router.end_replay(replay)
                self.router.attach(self, ch)
                self.send(Subscribed(ch=name, seq=head, epoch=epoch, recovered=False, id=msg_id))
                return
            self.send(Subscribed(ch=name, seq=head, epoch=epoch, recovered=True, id=msg_id))
        elif not found:
            # a hole further on: what this client still had to read is gone
            self.fail(SlowConsumer("slow consumer: history replay overrun"))
            return
        outbox, encoding = self.outbox, self.encoding
        for entry in entries:
            if entry.seq != replay.next_seq:
                break  # the next read finds the hole and says so
            outbox.push(frame_for(entry, encoding))
            replay.next_seq += 1
        ring = ch.history
        if replay.next_seq > ch.durable_seq or (ring and replay.next_seq >= ring[0].seq):
            replay.deep = False  # the ring has the rest
        self.outbox.refill = self._replay_more
        self._replay_more()

    def _presence(self, frame: Presence) -> None:
        """Who is subscribed now; for anyone who may subscribe (subscribed or not)."""
        name = frame.ch
        self._may_subscribe(name)
        answer = presence.page(name, self.router.get(name), frame.after, frame.limit)
        answer.id = frame.id
        self.send(answer)

    def _unsub(self, frame: Unsub) -> None:
        name = frame.ch
        if name not in self.subscriptions:
            raise NotSubscribed(f"not subscribed to {name}")
        self.subscriptions.discard(name)
        self._stop_replay(name)
        self.router.unsubscribe(self, name)
        self.send(Unsubscribed(ch=name, id=frame.id))

    def _pub(self, frame: Pub) -> None:
        name = frame.ch
        if self.router.get(name) is None:
            self._check_channel(name)
        if not self.principal.can_publish(name):
            raise Forbidden(f"not allowed to publish to {name}")
        if name in SERVER_CHANNELS:
            raise Forbidden(f"{name} is written by the server only")
        data = bytes(frame.data)
        limits = self.limits
        if len(data) > limits.max_data_bytes:
            raise TooLarge(f"data is larger than {limits.max_data_bytes} bytes")
        check_value(data, self.encoding, limits.max_data_depth)  # UnportableValue: a BadRequest
        self._take_token()
        principal = self.principal
        # _owner(name), inlined (a per-publish path)
        owner = None if principal.admin or name == principal.inbox or name[0] == "$" else self.user
        if self.router.draining:
            # Shutting down: the log takes nothing more. Not `unavailable` (the publish would
            # count as refused): left unanswered, so the client resends it after the 1001.
            return
        # Owed an answer from here on (a duplicate may be acked within publish()).
        # LogUnavailable and RecordRefused propagate to receive(), which answers them.
        self.inflight += 1
        try:
            self.router.publish(
                self, name, data, self.encoding, frame.id, self.user, owner, frame.mid
            )
        except BaseException:
            self.inflight -= 1
            raise
        self.published += 1

    def _auth(self, frame: Auth) -> None:
        """A fresh token for this connection: same user, new rights and expiry."""
        if self._authenticate is None:
            raise BadRequest("this connection cannot take a new token")
        try:
            grant = self._authenticate(frame.token)
        except AuthError as exc:
            self.fail(exc)
            return
        if grant.principal.user != self.user:
            self.fail(
                WrongUser(
                    f"the token is for {grant.principal.user}, this connection is {self.user}"
                )
            )
            return
        self.principal = grant.principal
        self.expires_at = grant.expires_at
        self._arm_expiry()
        inbox = self.principal.inbox
        for name in sorted(self.subscriptions):
            if name != inbox and not self.principal.can_subscribe(name):
                self.subscriptions.discard(name)
                self._stop_replay(name)
                self.router.unsubscribe(self, name)
                self.send(Unsubscribed(ch=name, reason="the new token does not allow it"))
        exp = None if grant.expires_at is None else int(grant.expires_at)
        self.send(Refreshed(user=self.user, exp=exp, id=frame.id))

    def _take_token(self) -> None:
        now = self._clock()
        limits = self.limits
        tokens = self._tokens + (now - self._tokens_at) * limits.publish_rate
        self._tokens_at = now
        if tokens > limits.publish_burst:
            tokens = limits.publish_burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return
        self._tokens = tokens
        strikes = self._strikes
        if strikes is None:
            strikes = self._strikes = []
        strikes.append(now)
        while strikes and strikes[0] < now - ABUSE_WINDOW_S:
            strikes.pop(0)
        if len(strikes) > limits.rate_abuse_limit:
            self.fail(RateAbuse("publishing too fast after rate_limited errors"))
        raise RateLimited(f"publish rate limit ({limits.publish_rate:g}/s) exceeded; slow down")
