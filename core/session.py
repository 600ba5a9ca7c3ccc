"""Per-connection protocol state, without I/O: frames in, frames (into the outbox) and a
close request out. The picows listener only moves bytes; everything a client can make
ferry do is decided here, and can be tested with a fake writer and no socket.

Connection states, all in one table:

    OPEN ──close(code)──▶ CLOSING ──closed()──▶ CLOSED
      └──────────────────closed()──────────────────┘
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import msgspec

from core.auth import Principal
from core.errors import (
    PUBLIC_REASONS,
    BadRequest,
    CloseCode,
    ErrorCode,
    Forbidden,
    NotSubscribed,
    PeerError,
    RateLimited,
    TooLarge,
)
from core.log import Encoding, LogUnavailable
from core.outbox import Outbox
from core.protocol import (
    DECODERS,
    SUBPROTOCOL_NAMES,
    Ack,
    Error,
    MsgId,
    Ping,
    Pong,
    Pub,
    ServerFrame,
    Sub,
    Subscribed,
    Unsub,
    Unsubscribed,
    Welcome,
    encode_frame,
    valid_channel,
)
from core.router import Router


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.OPEN: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}

ABUSE_WINDOW_S = 10.0
# The server's own channels: nobody publishes into them, not even the admin.
SERVER_CHANNELS = frozenset({"$sys.stats", "$sys.tail"})


class Limits(msgspec.Struct, frozen=True):
    max_subscriptions: int = 1000
    max_data_bytes: int = 64 * 1024
    publish_rate: float = 1000.0
    publish_burst: int = 2000
    rate_abuse_limit: int = 100


class ErrorCounter:
    """Errors sent to clients, by code (exported as a metric)."""

    def __init__(self) -> None:
        self.by_code: dict[str, int] = {code.value: 0 for code in ErrorCode}

    def add(self, code: str) -> None:
        self.by_code[code] = self.by_code.get(code, 0) + 1


class Session:
    """One client connection's protocol state."""

    # slots: an idle connection's memory is mostly these objects (docs/benchmarks.md)
    __slots__ = (
        "_clock",
        "_decoder",
        "_encoding_is_json",
        "_errors",
        "_replays",
        "_request_close",
        "_strikes",
        "_tokens",
        "_tokens_at",
        "close_code",
        "conn_id",
        "encoding",
        "limits",
        "node_id",
        "outbox",
        "principal",
        "router",
        "state",
        "subscriptions",
        "user",
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
        clock: Callable[[], float] = time.monotonic,
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
        self._decoder = DECODERS[encoding]
        self._encoding_is_json = encoding == Encoding.JSON
        self._tokens = float(limits.publish_burst)
        self._tokens_at = clock()
        self._strikes: list[float] | None = None  # created on the first rate_limited
        self.close_code: int | None = None
        self._replays: dict[str, int] = {}  # channel -> next seq to replay (sub with since)

    # --- lifecycle -------------------------------------------------------------------

    def _move(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"session {self.conn_id}: {self.state.value} -> {new.value}")
        self.state = new

    def start(self) -> None:
        """Greet the client and subscribe it to its own `@user` inbox."""
        self.send(Welcome(client=self.conn_id, user=self.user, node=self.node_id))
        inbox = self.principal.inbox
        self.router.subscribe(self, inbox, None)
        self.subscriptions.add(inbox)

    def close(self, code: int, reason: str) -> None:
        """Ask the transport to close with `code`; idempotent."""
        if self.state is not State.OPEN:
            return
        self._move(State.CLOSING)
        self.close_code = code
        self._drop_subscriptions()
        self._request_close(code, reason)

    def closed(self) -> None:
        """The transport is gone: forget every subscription."""
        if self.state is State.CLOSED:
            return
        self._move(State.CLOSED)
        self._drop_subscriptions()
        self.outbox.close()

    def _drop_subscriptions(self) -> None:
        self.router.drop(self, self.subscriptions)
        self.subscriptions.clear()
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
        self.send(Error(code=code, reason=reason, id=msg_id))

    def ack(self, channel: str, seq: int, msg_id: MsgId) -> None:
        if self.state is State.OPEN:
            self.outbox.push(encode_frame(self.encoding, Ack(ch=channel, seq=seq, id=msg_id)))

    def unavailable(self, msg_id: MsgId) -> None:
        if self.state is State.OPEN:
            self.error(ErrorCode.UNAVAILABLE, PUBLIC_REASONS[ErrorCode.UNAVAILABLE], msg_id)

    # --- input -----------------------------------------------------------------------

    def receive(self, payload: bytes, is_text: bool) -> None:
        """Handle one complete client message."""
        if self.state is not State.OPEN:
            return
        if is_text != self._encoding_is_json:
            expected = "text" if self._encoding_is_json else "binary"
            self.error(
                ErrorCode.BAD_REQUEST,
                f"this session ({self._subprotocol}) takes {expected} frames only",
            )
            return
        try:
            frame = self._decoder.decode(payload)
        except msgspec.ValidationError as exc:
            self.error(ErrorCode.BAD_REQUEST, f"invalid frame: {exc}")
            return
        except msgspec.DecodeError:
            self.error(
                ErrorCode.BAD_REQUEST,
                f"malformed {'JSON' if self._encoding_is_json else 'msgpack'}",
            )
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
        except PeerError as exc:
            self.error(exc.code, exc.reason, frame.id)

    @property
    def _subprotocol(self) -> str:
        return SUBPROTOCOL_NAMES[self.encoding]

    def _check_channel(self, name: str) -> None:
        if not valid_channel(name):
            raise BadRequest("channel must be 1-200 characters of A-Z a-z 0-9 _ . : @ $ -")

    def _sub(self, frame: Sub) -> None:
        name = frame.ch
        if name not in self.router.channels:
            self._check_channel(name)
        if not self.principal.can_subscribe(name):
            raise Forbidden(f"not allowed to subscribe to {name}")
        if frame.since is not None and frame.since < 0:
            raise BadRequest("since must be >= 0")
        if name not in self.subscriptions:
            if len(self.subscriptions) > self.limits.max_subscriptions:  # the inbox is free
                raise Forbidden(
                    f"subscription limit reached ({self.limits.max_subscriptions} channels)"
                )
            self.subscriptions.add(name)
        else:
            # Idempotent: a repeated sub answers again (and replays when `since` asks).
            self.router.unsubscribe(self, name)
        self._replays.pop(name, None)
        head, recovered, attached = self.router.subscribe(self, name, frame.since)
        self.send(Subscribed(ch=name, seq=head, recovered=recovered, id=frame.id))
        if not attached:
            assert frame.since is not None
            self._replays[name] = frame.since + 1
            self.outbox.refill = self._replay_more
            self._replay_more()

    def _replay_more(self) -> None:
        """Send the next page of missed messages; called again after each flush."""
        budget = self.outbox.limit // 4
        for name in list(self._replays):
            if self.outbox.size >= budget or self.state is not State.OPEN:
                return
            next_seq = self.router.replay_page(self, name, self._replays[name], budget)
            if next_seq is None:
                # The ring moved past what this client still had to read: it fell behind.
                self.close(CloseCode.SLOW_CONSUMER, "slow consumer: history replay overrun")
                return
            if next_seq:
                self._replays[name] = next_seq
            else:
                del self._replays[name]
        if not self._replays:
            self.outbox.refill = None

    def _unsub(self, frame: Unsub) -> None:
        name = frame.ch
        if name not in self.subscriptions:
            raise NotSubscribed(f"not subscribed to {name}")
        self.subscriptions.discard(name)
        self._replays.pop(name, None)
        self.router.unsubscribe(self, name)
        self.send(Unsubscribed(ch=name, id=frame.id))

    def _pub(self, frame: Pub) -> None:
        name = frame.ch
        if name not in self.router.channels:
            self._check_channel(name)
        if not self.principal.can_publish(name):
            raise Forbidden(f"not allowed to publish to {name}")
        if name in SERVER_CHANNELS:
            raise Forbidden(f"{name} is written by the server only")
        data = bytes(frame.data)
        if len(data) > self.limits.max_data_bytes:
            raise TooLarge(f"data is larger than {self.limits.max_data_bytes} bytes")
        self._take_token()
        try:
            self.router.publish(self, name, data, self.encoding, frame.id, self.user)
        except LogUnavailable:
            self.unavailable(frame.id)

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
            self.close(CloseCode.RATE_ABUSE, "publishing too fast after rate_limited errors")
        raise RateLimited(f"publish rate limit ({limits.publish_rate:g}/s) exceeded; slow down")
