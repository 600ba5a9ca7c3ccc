"""ferry's error tree, and the one table that maps errors to what a client sees.

    FerryError
    ├── PeerError                  the client did something wrong; answered with an error frame
    │   ├── BadRequest             bad_request: malformed JSON/msgpack, unknown op, bad field
    │   ├── Forbidden              forbidden: not allowed by the token, $sys.* without admin
    │   ├── TooLarge               too_large: a frame or value over a limit
    │   ├── RateLimited            rate_limited: publish token bucket empty
    │   ├── NotSubscribed          not_subscribed: unsub of a channel the connection lacks
    │   └── LimitExceeded          limit_exceeded: channel cardinality limits (node, user)
    ├── Closing                    the connection ends; the reason is written for the client
    │   ├── ProtocolViolation      1002: broken fragmentation
    │   ├── InvalidText            1007: a text message that is not UTF-8
    │   ├── MessageTooBig          1009: a message over max_frame_bytes
    │   ├── PingTimeout            1011: our ping went unanswered
    │   ├── WrongUser              4403: a refreshed token for another user
    │   ├── SlowConsumer           4408: the outbox or a history replay overran
    │   ├── ResyncRequired         4409: a cluster feed gap the owner's history no longer covers
    │   ├── RateAbuse              4429: kept publishing while rate limited
    │   ├── ShuttingDown           1001: graceful shutdown
    │   ├── TryLater               1013: one connection too many for its user (first-frame auth)
    │   └── PeerClosed             1000: the client closed first (our answer)
    ├── AuthError                  bad/expired token: HTTP 401 at the upgrade, 4401 after it
    │   └── ReservedUser           a token for a user who may not connect: 401, 4403 after it
    ├── RecordRefused              too_large: the log's format cannot hold it (common.errors)
    └── LocalError                 our side failed; the client only learns the code
        ├── LogUnavailable         unavailable: the WAL cannot accept writes (common.errors)
        ├── OwnerUnreachable       unavailable: the channel's node (cluster) cannot be reached
        └── OutcomeUnknown         unavailable: a forwarded publish got no answer in time

What a client sees for each error is decided in one table, `ANSWERS`, and looked up by
`answer_for` (the nearest class in the exception's MRO). An `Answer` is either an error
frame (`ErrorCode`, the connection stays open) or a close (`CloseCode`). Its `reason` is
fixed text, or None when the exception's own text is written for the client (the
`ClientFacing` ones, PeerError and Closing, and AuthError). Any other exception — a bug, an OSError — answers 1011 with a fixed
"internal error": its text is for the logs only, never for a client.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from common.errors import FerryError, LocalError, LogUnavailable, RecordRefused

# re-exported: the whole tree is here
__all__ = ["FerryError", "LocalError", "LogUnavailable", "RecordRefused"]


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    NOT_SUBSCRIBED = "not_subscribed"
    LIMIT_EXCEEDED = "limit_exceeded"


class CloseCode(enum.IntEnum):
    """WebSocket close codes ferry sends (RFC 6455 §7.4; 4000-4999 are ours)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # graceful shutdown
    PROTOCOL_ERROR = 1002  # broken fragmentation
    INVALID_TEXT = 1007  # text frame that is not UTF-8 (RFC 6455 §8.1)
    MESSAGE_TOO_BIG = 1009  # frame over max_frame_bytes
    INTERNAL_ERROR = 1011  # this connection hit a server fault; others are unaffected
    TRY_AGAIN_LATER = 1013  # a connection limit, found after first-frame auth
    TOKEN_EXPIRED = 4401  # the token expired or a refresh was refused: get a new one
    AUTH_FORBIDDEN = 4403  # the token may not be used here (another user, a reserved one): stop
    SLOW_CONSUMER = 4408  # outbox passed max_outbox_bytes
    RESYNC_REQUIRED = 4409  # cluster: missed messages the owner no longer has (docs/cluster.md)
    RATE_ABUSE = 4429  # kept publishing while rate limited


class ClientFacing(FerryError):
    """An error whose `reason` is written for the client (sent as is)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerError(ClientFacing):
    """The client did something wrong; answered with an error frame."""


class BadRequest(PeerError):
    pass


class Forbidden(PeerError):
    pass


class TooLarge(PeerError):
    pass


class RateLimited(PeerError):
    pass


class NotSubscribed(PeerError):
    pass


class LimitExceeded(PeerError):
    pass


class OwnerUnreachable(LocalError):
    """Cluster (docs/cluster.md): the node that owns the channel cannot be reached; a
    publish was not accepted, a `sub` has no copy to answer from."""


class OutcomeUnknown(LocalError):
    """Cluster: a forwarded publish got no answer in time; the owner may have stored it."""


class AuthError(FerryError):
    """The token is missing, malformed, badly signed or expired (HTTP 401)."""


class ReservedUser(AuthError):
    """A well-formed token (or `?user=`) for a name nobody may connect as: no new token of
    the same kind helps."""


class Closing(ClientFacing):
    """A condition that ends the connection."""


class ProtocolViolation(Closing):
    pass


class InvalidText(Closing):
    pass


class MessageTooBig(Closing):
    pass


class PingTimeout(Closing):
    pass


class WrongUser(Closing):
    pass


class SlowConsumer(Closing):
    pass


class RateAbuse(Closing):
    pass


class ResyncRequired(Closing):
    pass


class ShuttingDown(Closing):
    pass


class PeerClosed(Closing):
    pass


class TryLater(Closing):
    pass


@dataclass(frozen=True, slots=True)
class Answer:
    """What a client is told: an error frame (`ErrorCode`) or a close (`CloseCode`), with a
    fixed reason or (None) the exception's own client-facing text."""

    code: ErrorCode | CloseCode
    reason: str | None = None


ANSWERS: dict[type[BaseException], Answer] = {
    PeerError: Answer(ErrorCode.BAD_REQUEST),
    BadRequest: Answer(ErrorCode.BAD_REQUEST),
    Forbidden: Answer(ErrorCode.FORBIDDEN),
    TooLarge: Answer(ErrorCode.TOO_LARGE),
    RateLimited: Answer(ErrorCode.RATE_LIMITED),
    NotSubscribed: Answer(ErrorCode.NOT_SUBSCRIBED),
    LimitExceeded: Answer(ErrorCode.LIMIT_EXCEEDED),
    RecordRefused: Answer(ErrorCode.TOO_LARGE, "message too large for the log"),
    LogUnavailable: Answer(
        ErrorCode.UNAVAILABLE, "the log cannot accept writes; the message was not accepted"
    ),
    LocalError: Answer(ErrorCode.UNAVAILABLE, "the server could not take the message"),
    OwnerUnreachable: Answer(
        ErrorCode.UNAVAILABLE,
        "the node that owns this channel cannot be reached; nothing was accepted",
    ),
    OutcomeUnknown: Answer(
        ErrorCode.UNAVAILABLE,
        "no answer in time from the node that owns this channel: the message may have been "
        "stored; retry with the same mid",
    ),
    AuthError: Answer(CloseCode.TOKEN_EXPIRED),
    ReservedUser: Answer(CloseCode.AUTH_FORBIDDEN),
    TryLater: Answer(CloseCode.TRY_AGAIN_LATER),
    WrongUser: Answer(CloseCode.AUTH_FORBIDDEN),
    ProtocolViolation: Answer(CloseCode.PROTOCOL_ERROR),
    InvalidText: Answer(CloseCode.INVALID_TEXT),
    MessageTooBig: Answer(CloseCode.MESSAGE_TOO_BIG),
    PingTimeout: Answer(CloseCode.INTERNAL_ERROR),
    SlowConsumer: Answer(CloseCode.SLOW_CONSUMER),
    RateAbuse: Answer(CloseCode.RATE_ABUSE),
    ResyncRequired: Answer(CloseCode.RESYNC_REQUIRED),
    ShuttingDown: Answer(CloseCode.GOING_AWAY),
    PeerClosed: Answer(CloseCode.NORMAL),
    BaseException: Answer(CloseCode.INTERNAL_ERROR, "internal error"),
}


# The HTTP API's status for each code (docs/api.md); the codes past the protocol's are the
# API's own (it raises `core.api.ApiError` with them).
HTTP_STATUS: dict[str, int] = {
    ErrorCode.BAD_REQUEST: 400,
    "unauthorized": 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_SUBSCRIBED: 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "timeout": 408,
    ErrorCode.TOO_LARGE: 413,
    "uri_too_long": 414,
    "header_too_large": 431,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.LIMIT_EXCEEDED: 429,
    "internal": 500,
    ErrorCode.UNAVAILABLE: 503,
}


def answer_for(exc: BaseException) -> tuple[ErrorCode | CloseCode, str]:
    """The code and the public reason a client is given for `exc` (see `ANSWERS`)."""
    # BaseException is in every MRO, and in the table: there is always a nearest class
    answer = next(ANSWERS[cls] for cls in type(exc).__mro__ if cls in ANSWERS)
    if answer.reason is not None:
        return answer.code, answer.reason
    return answer.code, exc.reason if isinstance(exc, ClientFacing) else str(exc)
