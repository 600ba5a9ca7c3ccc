"""ferry's error tree, and the one table that maps errors to what a client sees.

    FerryError
    ├── PeerError                  the client did something wrong; answered with an error frame
    │   ├── BadRequest             bad_request: malformed JSON/msgpack, unknown op, bad field
    │   ├── Forbidden              forbidden: not allowed by the token, $sys.* without admin
    │   ├── TooLarge               too_large: a frame or value over a limit
    │   ├── RateLimited            rate_limited: publish token bucket empty
    │   ├── NotSubscribed          not_subscribed: unsub of a channel the connection lacks
    │   └── LimitExceeded          limit_exceeded: channel cardinality limits (node, user)
    ├── AuthError                  bad/expired token: HTTP 401 at the upgrade
    └── LocalError                 our side failed; the client only learns the code
        └── LogUnavailable         unavailable: the WAL cannot accept writes (common.errors)

The `reason` of a PeerError is written for the client. The text of any other exception is
never sent: a client only sees the code and a fixed reason from `PUBLIC_REASONS`.
"""

from __future__ import annotations

import enum

from common.errors import FerryError, LocalError, LogUnavailable

__all__ = ["FerryError", "LocalError", "LogUnavailable"]  # re-exported: the whole tree here


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
    TOKEN_EXPIRED = 4401  # the token expired or a refresh was refused: get a new one
    AUTH_FORBIDDEN = 4403  # the token may not be used here (another user): stop
    SLOW_CONSUMER = 4408  # outbox passed max_outbox_bytes
    RATE_ABUSE = 4429  # kept publishing while rate limited


class PeerError(FerryError):
    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(PeerError):
    code = ErrorCode.BAD_REQUEST


class Forbidden(PeerError):
    code = ErrorCode.FORBIDDEN


class TooLarge(PeerError):
    code = ErrorCode.TOO_LARGE


class RateLimited(PeerError):
    code = ErrorCode.RATE_LIMITED


class NotSubscribed(PeerError):
    code = ErrorCode.NOT_SUBSCRIBED


class LimitExceeded(PeerError):
    code = ErrorCode.LIMIT_EXCEEDED


class AuthError(FerryError):
    """The token is missing, malformed, badly signed or expired (HTTP 401)."""


# Fixed texts for local faults: the exception's own text is for the logs only.
PUBLIC_REASONS: dict[ErrorCode, str] = {
    ErrorCode.UNAVAILABLE: "the log cannot accept writes; the message was not accepted",
}
