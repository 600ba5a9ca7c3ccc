"""Who a connection is and what it may do.

Tokens are HS256 JWTs (PyJWT): `sub` is the user (the registered JWT claim, so it must be a
string); `pub` and `subs` are lists of channel glob patterns for publishing and subscribing
(fnmatch syntax: `room.*`, `@alice`). `exp` is required, and may lie at most `jwt_max_ttl`
seconds ahead; the connection is closed with 4401 when it passes (a fresh token can be
presented with `{"op":"auth"}` before that). The admin token (`FERRY_ADMIN_TOKEN`) is
presented like any token and grants everything, `$sys.*` included. With auth off every
connection may use every channel except `$sys.*`.

Two rules hold whatever the patterns say: another user's inbox (`@bob`) can be subscribed
to only through a pattern that names it exactly (no wildcard ever reaches an inbox), and
the names the server itself uses (`RESERVED_USERS`) are nobody's user name.
"""

from __future__ import annotations

import base64
import fnmatch
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import jwt

from core.config import Config
from core.errors import AuthError, ReservedUser
from core.protocol import MAX_CHANNEL_CHARS, NAME_CHARS, SYS_PREFIX

ADMIN_USER = "admin"
ANONYMOUS_USER = "anonymous"
SERVER_USER = "ferry"  # the `from` of the server's own messages ($sys.*)
# Names a client may not take: they would speak as the server or read the admin's inbox.
RESERVED_USERS = frozenset({ADMIN_USER, SERVER_USER})
_GLOB_CHARS = frozenset("*?[")
_USER_RE = re.compile(f"{NAME_CHARS}{{1,{MAX_CHANNEL_CHARS - 1}}}")  # "@" + user: a channel
_CACHE_LIMIT = 1024


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    parts = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(parts)) if parts else None


@dataclass(eq=False)
class Principal:
    """The identity and permissions of one connection."""

    user: str
    admin: bool = False
    pub_patterns: tuple[str, ...] = ("*",)
    sub_patterns: tuple[str, ...] = ("*",)
    _pub_re: re.Pattern[str] | None = field(default=None, repr=False)
    _sub_re: re.Pattern[str] | None = field(default=None, repr=False)
    _sub_exact: frozenset[str] = field(default=frozenset(), repr=False)
    _cache: dict[tuple[bool, str], bool] = field(default_factory=dict, repr=False)
    inbox: str = field(init=False, repr=False)  # "@" + user: this principal's DM channel

    def __post_init__(self) -> None:
        self.inbox = "@" + self.user
        self._pub_re = _compile(self.pub_patterns)
        self._sub_re = _compile(self.sub_patterns)
        self._sub_exact = frozenset(p for p in self.sub_patterns if not _GLOB_CHARS & set(p))

    def _allowed(self, publish: bool, channel: str) -> bool:
        key = (publish, channel)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if self.admin:
            ok = True
        elif channel.startswith(SYS_PREFIX):
            ok = False
        elif not publish and channel == self.inbox:
            ok = True
        elif not publish and channel.startswith("@"):
            ok = channel in self._sub_exact  # another user's inbox: only by its exact name
        else:
            pattern = self._pub_re if publish else self._sub_re
            ok = pattern is not None and pattern.fullmatch(channel) is not None
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = ok
        return ok

    def can_publish(self, channel: str) -> bool:
        return self._allowed(True, channel)

    def can_subscribe(self, channel: str) -> bool:
        return self._allowed(False, channel)


# A browser can't set headers on a WebSocket, and a token in the URL ends up in access
# logs; the subprotocol list is a header it can set: `ferry.token.<base64url(token)>`
# offered next to `ferry.v1.json` (the server never echoes it back).
TOKEN_SUBPROTOCOL = "ferry.token."


def token_from_request(path: str, headers: Mapping[str, str]) -> tuple[str | None, dict[str, str]]:
    """The token from the `ferry.token.*` subprotocol, `Authorization: Bearer` or
    `?token=` (in that order), and the other query parameters."""
    query: dict[str, str] = {}
    if "?" in path:
        for key, values in parse_qs(path.split("?", 1)[1]).items():
            query[key] = values[-1]
    token = query.pop("token", None)
    header = headers.get("Authorization") or headers.get("authorization")
    if header and header[:7].lower() == "bearer ":
        token = header[7:].strip()
    for offered in (headers.get("Sec-WebSocket-Protocol") or "").split(","):
        offered = offered.strip()
        if offered.startswith(TOKEN_SUBPROTOCOL):
            encoded = offered[len(TOKEN_SUBPROTOCOL) :]
            try:
                token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                token = "(malformed ferry.token subprotocol)"  # refused like any bad token
            break
    return token, query


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token grants one connection: who it is, and until when (Unix seconds)."""

    principal: Principal
    expires_at: float | None = None


class Authenticator:
    def __init__(self, config: Config) -> None:
        self._config = config
        # Connections of one identity share one Principal (and its permission cache).
        self._principals: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Principal] = {}

    def _principal(
        self, user: str, pub: tuple[str, ...] = ("*",), sub: tuple[str, ...] = ("*",)
    ) -> Principal:
        key = (user, pub, sub)
        principal = self._principals.get(key)
        if principal is None:
            if len(self._principals) >= 10_000:
                self._principals.clear()
            principal = self._principals[key] = Principal(
                user=user, pub_patterns=pub, sub_patterns=sub
            )
        return principal

    @property
    def enabled(self) -> bool:
        return self._config.auth_enabled

    def authenticate(self, token: str | None, query: Mapping[str, str]) -> Grant:
        """Resolve a connection's grant; raise AuthError (HTTP 401, close 4401) when refused."""
        admin = self._config.admin_token
        if token and admin and hmac.compare_digest(token.encode(), admin.encode()):
            return Grant(_ADMIN)
        if not self.enabled:
            # Auth off: `?user=` names the connection (useful for @user inboxes in dev).
            if token:
                # A token was offered but is not the admin token: refusing is clearer
                # than silently treating the caller as anonymous.
                raise AuthError(
                    "token is not valid (auth is off; only the admin token is accepted)"
                )
            user = query.get("user") or ANONYMOUS_USER
            if not _USER_RE.fullmatch(user):
                raise AuthError("user name is not valid")
            if user in RESERVED_USERS:
                raise ReservedUser(f"user name {user} is reserved")
            return Grant(self._principal(user))
        if not token:
            raise AuthError("missing token")
        try:
            claims = jwt.decode(
                token,
                self._config.jwt_secret,
                algorithms=["HS256"],
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token has no {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise AuthError("token is not valid") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not _USER_RE.fullmatch(subject):
            raise AuthError("token subject is not a valid user name")
        if subject in RESERVED_USERS or subject == ANONYMOUS_USER:
            raise ReservedUser(f"user name {subject} is reserved")
        exp = float(claims["exp"])
        max_ttl = self._config.jwt_max_ttl
        if max_ttl and exp - time.time() > max_ttl:
            raise AuthError(
                f"token lifetime is over the server's limit of {max_ttl:g} s (jwt_max_ttl)"
            )
        principal = self._principal(
            subject, _patterns(claims.get("pub")), _patterns(claims.get("subs"))
        )
        return Grant(principal, exp)

    def refresh(self, token: str) -> Grant:
        """A token presented on an open connection (`{"op":"auth"}`)."""
        return self.authenticate(token, {})


_ADMIN = Principal(user=ADMIN_USER, admin=True)


def _patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return tuple(value)
    return ()


def make_token(
    secret: str,
    user: str,
    pub: Iterable[str] = (),
    sub: Iterable[str] = (),
    ttl_s: float = 3600.0,
) -> str:
    """A development token (also what `ferry token` prints)."""
    now = int(time.time())
    claims = {
        "sub": user,
        "pub": list(pub),
        "subs": list(sub),
        "iat": now,
        "exp": now + int(ttl_s),
    }
    return jwt.encode(claims, secret, algorithm="HS256")
