"""The connection state machine, as a table: (state, event) -> next state. Anything not
in the table is a bug (`transition` raises), so the table is the whole behaviour.

    IDLE ──connect──▶ CONNECTING ──upgraded──▶ HANDSHAKE ──welcome──▶ SYNCING ──synced──▶ OPEN
      │                  │  ▲                     │                     │                  │
      └─fetch─▶ TOKEN ───┘  └──connect── BACKOFF ◀┴── retry / reauth ───┴──────────────────┘
                 ▲  └─token_failed─▶ BACKOFF ─fetch─┘
    any state ──fatal──▶ FAILED      any state ──close──▶ CLOSED       (both are final)

* TOKEN: get_token() is running (one call in flight).
* HANDSHAKE: upgraded, waiting for `welcome` (with first-frame auth, `auth` was sent).
* SYNCING: welcomed; the subscriptions are being re-sent with `since`; publishes wait.
* OPEN: everything flows; queued publishes are sent (paced).
* BACKOFF: waiting a jittered delay before the next attempt.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    IDLE = "idle"
    TOKEN = "token"
    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    SYNCING = "syncing"
    OPEN = "open"
    BACKOFF = "backoff"
    CLOSED = "closed"
    FAILED = "failed"


class Event(enum.Enum):
    CONNECT = "connect"  # start an attempt (a token is at hand)
    FETCH = "fetch"  # a token is needed first
    TOKEN_OK = "token_ok"
    TOKEN_FAILED = "token_failed"
    UPGRADED = "upgraded"  # HTTP 101
    WELCOME = "welcome"
    SYNCED = "synced"  # every subscription answered
    RETRY = "retry"  # refused / lost / silent: reconnect after a backoff
    REAUTH = "reauth"  # 401 / 4401: a new token, then reconnect after a backoff
    FATAL = "fatal"  # terminal close code or status
    CLOSE = "close"  # the application closed the client


S, E = State, Event
LIVE = (S.CONNECTING, S.HANDSHAKE, S.SYNCING, S.OPEN)  # a transport exists
FINAL = (S.CLOSED, S.FAILED)

TABLE: dict[tuple[State, Event], State] = {
    (S.IDLE, E.CONNECT): S.CONNECTING,
    (S.IDLE, E.FETCH): S.TOKEN,
    (S.TOKEN, E.TOKEN_OK): S.CONNECTING,
    (S.TOKEN, E.TOKEN_FAILED): S.BACKOFF,
    (S.BACKOFF, E.CONNECT): S.CONNECTING,
    (S.BACKOFF, E.FETCH): S.TOKEN,
    (S.CONNECTING, E.UPGRADED): S.HANDSHAKE,
    (S.HANDSHAKE, E.WELCOME): S.SYNCING,
    (S.SYNCING, E.SYNCED): S.OPEN,
    **{(s, E.RETRY): S.BACKOFF for s in LIVE},
    **{(s, E.REAUTH): S.BACKOFF for s in LIVE},
    **{(s, E.FATAL): S.FAILED for s in State if s not in FINAL},
    **{(s, E.CLOSE): S.CLOSED for s in State if s not in FINAL},
}


class TransitionError(RuntimeError):
    pass


def transition(state: State, event: Event) -> State:
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise TransitionError(f"no transition from {state.value} on {event.value}") from None
