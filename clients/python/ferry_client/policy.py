"""What the client does after a connection ends or an upgrade is refused (ONE table for
close codes, one for HTTP statuses), and how long it waits before the next attempt.

Pure: no I/O, no clock; the random source is passed in.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class Action(enum.Enum):
    RECONNECT = "reconnect"  # back off, then connect again (forever)
    REAUTH = "reauth"  # fetch a new token (get_token), then reconnect
    TERMINAL = "terminal"  # stop for good: retrying cannot help


@dataclass(frozen=True)
class Policy:
    action: Action
    meaning: str
    spread: bool = False  # the first retry is drawn from the wide restart window


# Close codes (docs/protocol.md "Close codes"). A code not listed reconnects.
CLOSE_POLICY: dict[int, Policy] = {
    1000: Policy(Action.RECONNECT, "normal closure the client did not ask for"),
    1001: Policy(Action.RECONNECT, "server going away (restart)", spread=True),
    1006: Policy(Action.RECONNECT, "connection lost without a close frame"),
    1011: Policy(Action.RECONNECT, "server fault, or keepalive ping unanswered"),
    1012: Policy(Action.RECONNECT, "service restart", spread=True),
    1013: Policy(Action.RECONNECT, "try again later (too many connections)"),
    4408: Policy(Action.RECONNECT, "slow consumer: outbox overflow"),
    4429: Policy(Action.RECONNECT, "kept publishing while rate limited"),
    4401: Policy(Action.REAUTH, "token expired or refused: get a new one"),
    4403: Policy(Action.TERMINAL, "this user may not connect"),
    1002: Policy(Action.TERMINAL, "protocol error (a client bug)"),
    1003: Policy(Action.TERMINAL, "unsupported data (a client bug)"),
    1007: Policy(Action.TERMINAL, "invalid UTF-8 (a client bug)"),
    1009: Policy(Action.TERMINAL, "frame too large (a client bug: sizes are checked locally)"),
}
DEFAULT_CLOSE = Policy(Action.RECONNECT, "unknown close code")

# HTTP statuses of a refused upgrade (docs/protocol.md "Upgrade refusals").
HTTP_POLICY: dict[int, Policy] = {
    503: Policy(Action.RECONNECT, "server full or shutting down"),
    429: Policy(Action.RECONNECT, "too many connections for this user or address"),
    401: Policy(Action.REAUTH, "token bad, missing or expired"),
    403: Policy(Action.TERMINAL, "origin not allowed"),
    400: Policy(Action.TERMINAL, "bad upgrade request or subprotocol (a client bug)"),
    404: Policy(Action.TERMINAL, "no WebSocket endpoint at this URL"),
    405: Policy(Action.TERMINAL, "method not allowed (a client bug)"),
    414: Policy(Action.TERMINAL, "URL too long"),
    431: Policy(Action.TERMINAL, "request headers too large"),
}
NETWORK_POLICY = Policy(Action.RECONNECT, "connection failed (refused, reset, timed out)")
SILENCE_POLICY = Policy(Action.RECONNECT, "no frame within the silence deadline (half-open)")


def close_policy(code: int) -> Policy:
    return CLOSE_POLICY.get(code, DEFAULT_CLOSE)


def http_policy(status: int | None) -> Policy:
    """`None`: no HTTP answer at all (TCP refused/reset, handshake timeout)."""
    if status is None:
        return NETWORK_POLICY
    if status in HTTP_POLICY:
        return HTTP_POLICY[status]
    if status >= 500:
        return Policy(Action.RECONNECT, f"HTTP {status}")
    return Policy(Action.TERMINAL, f"HTTP {status}")


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(cap, base * 2**n)).
    After a server restart (close 1001) the first attempt is drawn from the wider
    uniform(0, restart_spread) so that many clients do not reconnect at once."""

    base: float = 0.25
    cap: float = 30.0
    restart_spread: float = 5.0

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * (2.0 ** min(attempt, 62)))

    def delay(self, attempt: int, rng: random.Random, spread: bool = False) -> float:
        if spread and attempt == 0:
            return rng.uniform(0.0, self.restart_spread)
        return rng.uniform(0.0, self.ceiling(attempt))
