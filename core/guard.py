"""Admission limits and quiet logging for what clients send before and at the upgrade.

`Guard` counts, per server:
  * unfinished handshakes (TCP accepted, request head not complete): at most
    `max_handshakes` in total and `max_handshakes_per_ip` per TCP peer address; more are
    dropped at accept. A trusted proxy carries many clients: only the total bounds it.
  * open connections per user and per client address (`max_connections_per_user`,
    `max_connections_per_ip`, 0 = no limit): checked at the upgrade (HTTP 429).

The client address is the TCP peer's, unless that peer is in `trusted_proxies`: then it
is the right-most `X-Forwarded-For` entry that is not a trusted proxy itself, if that
entry parses as an IP address (otherwise the nearest trusted hop's address is used).
It is stored in canonical form, so it is never longer than `MAX_ADDRESS`.

`PeerLog` writes client mistakes at INFO at most, `burst` lines per `window` seconds,
then a count of what was left out; `PicowsLog` is the logger-like object handed to
picows, which would log every client protocol error at ERROR.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from core.config import Config

if TYPE_CHECKING:
    from core.listener import Connection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Longest address kept (canonical IPv6 is at most 39 characters, plus a zone id).
MAX_ADDRESS = 64
# Longest formatted log line about a client (the rest is cut).
MAX_LOG_LINE = 300


def parse_ip(text: str) -> IPAddress | None:
    """An address as a proxy writes it (`1.2.3.4`, `::1`, `1.2.3.4:80`, `[::1]:80`), or None."""
    text = text.strip()
    if not text or len(text) > MAX_ADDRESS:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def canonical(address: IPAddress) -> str:
    return sys.intern(str(address)[:MAX_ADDRESS])


class Guard:
    def __init__(self, config: Config) -> None:
        self.trusted: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in config.trusted_proxies
        )
        self.max_handshakes = config.max_handshakes
        self.max_handshakes_per_ip = config.max_handshakes_per_ip
        self.max_per_user = config.max_connections_per_user
        self.max_per_ip = config.max_connections_per_ip
        self.handshakes = 0
        self.handshakes_by_ip: dict[str, int] = {}
        self.by_user: dict[str, int] = {}
        self.by_ip: dict[str, int] = {}

    # --- addresses -------------------------------------------------------------------

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)

    def peer_address(self, peername: Any) -> tuple[str, bool]:
        """(canonical TCP peer address, whether it is a trusted proxy)."""
        host = peername[0] if isinstance(peername, tuple) and peername else ""
        address = parse_ip(host) if isinstance(host, str) else None
        if address is None:
            return sys.intern(str(host)[:MAX_ADDRESS]), False
        return canonical(address), bool(self.trusted) and self.is_trusted(address)

    def client_address(self, peer: str, peer_trusted: bool, forwarded: Iterable[str]) -> str:
        """The address a request is accounted to (see the module docstring)."""
        if not peer_trusted:
            return peer
        hops = [hop for value in forwarded for hop in value.split(",")]
        nearest = peer
        for hop in reversed(hops):
            address = parse_ip(hop)
            if address is None:
                return nearest  # not an address: believe only the hop that passed it on
            if not self.is_trusted(address):
                return canonical(address)
            nearest = canonical(address)
        return nearest

    # --- handshakes ------------------------------------------------------------------

    def start_handshake(self, peer: str, peer_trusted: bool) -> str | None:
        """Count a new unfinished handshake, or return why it is refused."""
        if self.handshakes >= self.max_handshakes:
            return "max_handshakes"
        if not peer_trusted:
            held = self.handshakes_by_ip.get(peer, 0)
            if held >= self.max_handshakes_per_ip:
                return "max_handshakes_per_ip"
            self.handshakes_by_ip[peer] = held + 1
        self.handshakes += 1
        return None

    def end_handshake(self, peer: str, peer_trusted: bool) -> None:
        self.handshakes -= 1
        if not peer_trusted:
            held = self.handshakes_by_ip.get(peer, 0) - 1
            if held > 0:
                self.handshakes_by_ip[peer] = held
            else:
                self.handshakes_by_ip.pop(peer, None)

    # --- connections -----------------------------------------------------------------

    def refuse_address(self, address: str) -> str | None:
        if self.max_per_ip and self.by_ip.get(address, 0) >= self.max_per_ip:
            return "max_connections_per_ip"
        return None

    def refuse_user(self, user: str) -> str | None:
        if self.max_per_user and self.by_user.get(user, 0) >= self.max_per_user:
            return "max_connections_per_user"
        return None

    def connected(self, conn: Connection) -> None:
        if self.max_per_ip:
            self.by_ip[conn.address] = self.by_ip.get(conn.address, 0) + 1
        if self.max_per_user:
            user = conn.principal.user
            self.by_user[user] = self.by_user.get(user, 0) + 1

    def disconnected(self, conn: Connection) -> None:
        if self.max_per_ip:
            _decrement(self.by_ip, conn.address)
        if self.max_per_user:
            _decrement(self.by_user, conn.principal.user)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class PeerLog:
    """At most `burst` lines per `window` seconds; the next line that gets through says
    how many were left out. Lines are cut at MAX_LOG_LINE characters."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 20,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self.clock = clock
        self.suppressed = 0  # in total, for tests and curiosity
        self._pending = 0  # left out since the last line that got through
        self._window_start = -window
        self._sent = 0

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        if now - self._window_start >= self.window:
            self._window_start = now
            self._sent = 0
        if self._sent >= self.burst:
            self.suppressed += 1
            self._pending += 1
            return
        self._sent += 1
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        if len(text) > MAX_LOG_LINE:
            text = text[:MAX_LOG_LINE] + "..."
        if self._pending:
            text += f" ({self._pending} similar lines left out)"
            self._pending = 0
        self.logger.log(level, "%s", text, exc_info=exc_info)

    def info(self, msg: str, *args: object) -> None:
        self.log(logging.INFO, msg, *args)


# picows lines caused by what a client sent (its own wording): INFO at most.
_CLIENT_LINES = (
    "WS parser error",
    "on_ws_frame raised WSProtocolError",
    "Handshake timeout",
    "Disconnect because HTTP request",
)


class PicowsLog:
    """The logger-like object picows gets (it calls isEnabledFor, debug, info, warning,
    error, exception and log). Client protocol errors go to `peer` at INFO; picows'
    per-connection chatter is DEBUG; faults of ours stay ERROR (with the traceback for
    `exception`) but rate-limited too."""

    def __init__(self, peer: PeerLog, faults: PeerLog, debug: logging.Logger) -> None:
        self.peer = peer
        self.faults = faults
        self.debug_logger = debug
        self.name = debug.name

    def isEnabledFor(self, level: int) -> bool:
        return self.debug_logger.isEnabledFor(level)

    def log(self, level: int, msg: str, *args: object, **_: object) -> None:
        if level >= logging.WARNING:
            self.error(msg, *args)
        elif self.debug_logger.isEnabledFor(level):
            self.debug_logger.log(level, msg, *args)

    def debug(self, msg: str, *args: object, **_: object) -> None:
        if self.debug_logger.isEnabledFor(logging.DEBUG):
            self.debug_logger.debug(msg, *args)

    def info(self, msg: str, *args: object, **_: object) -> None:
        if msg.startswith(_CLIENT_LINES):
            self.peer.info(msg, *args)
        else:
            self.debug(msg, *args)

    def warning(self, msg: str, *args: object, **_: object) -> None:
        if msg.startswith(_CLIENT_LINES):
            self.peer.info(msg, *args)
        else:
            self.faults.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: object, **_: object) -> None:
        if msg.startswith(_CLIENT_LINES):
            self.peer.info(msg, *args)
        else:
            self.faults.log(logging.ERROR, msg, *args)

    def exception(self, msg: str, *args: object, **_: object) -> None:
        self.faults.log(logging.ERROR, msg, *args, exc_info=True)

    critical = error
