"""Accepting connections: ferry reads the HTTP request head itself, picows gets the socket
only for a WebSocket upgrade that has already been accepted.

    accept -> HandshakeProtocol (counted by the Guard, `handshake_timeout` to finish the head)
      -> not GET/HEAD: 405 | malformed: 400 | head over 16 KiB: 431 | target over 8 KiB: 414
      -> any path but /ws: core.http (GET and HEAD), then close
      -> /ws: core.listener.upgrade() decides (Origin, limits, token, subprotocol)
         refused: its HTTP error, then close
         accepted: the transport switches to a picows WSProtocol, which is fed the bytes read
         so far; it answers 101 and runs the Connection with its hot path in C.

Every response here has a fixed, short body: nothing a client sent is echoed back. Client
mistakes are logged at INFO at most, rate-limited (core.guard.PeerLog).

picows' own server (`ws_create_server`) would parse the request itself: it refuses HEAD
with a 400 before any hook runs, echoes the raw request line in its 400 bodies, logs each
client error at ERROR and bounds a slow request only by its handshake timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from picows import WSUpgradeResponseWithListener
from picows.picows import (  # type: ignore[attr-defined]  # not in picows' stub
    WSAutoPingStrategy,
    WSProtocol,
    _parse_http_request,
    _validate_upgrade_request,
)

from core.config import Config
from core.guard import Guard, PeerLog, PicowsLog
from core.http import Reply, text_reply
from core.listener import upgrade

if TYPE_CHECKING:
    from core.relay_state import RelayState

log = logging.getLogger("ferry.accept")

MAX_HEAD = 16 * 1024  # request line + headers (picows' limit too)
MAX_TARGET = 8 * 1024  # request target (path + query; a token in the query fits)
# A client that does not read a plain HTTP response is cut off after this long.
RESPONSE_GRACE_S = 5.0

BAD_REQUEST = text_reply(400, "400 Bad Request")
NOT_WEBSOCKET = text_reply(400, "400 Bad Request: /ws expects a WebSocket upgrade")
URI_TOO_LONG = text_reply(414, f"414 URI Too Long: at most {MAX_TARGET} bytes")
HEAD_TOO_LARGE = text_reply(431, f"431 Request Header Fields Too Large: at most {MAX_HEAD} bytes")
NOT_ALLOWED = text_reply(405, "405 Method Not Allowed", ("Allow", "GET, HEAD"))
WS_NOT_ALLOWED = text_reply(405, "405 Method Not Allowed", ("Allow", "GET"))

# What bench/serve_wrapper.py may force onto the picows protocol (what-if runs).
PICOWS_OPTIONS = ("max_frame_size", "enable_auto_ping", "enable_auto_pong", "read_buffer_init_size")
PICOWS_OVERRIDES: dict[str, Any] = {}


class Acceptor:
    """Per server: what every HandshakeProtocol needs."""

    def __init__(self, hub: RelayState, guard: Guard, config: Config) -> None:
        self.hub = hub
        self.guard = guard
        self.loop = hub.loop
        self.timeout = config.handshake_timeout
        self.peer_log = PeerLog(logging.getLogger("ferry.peer"))
        self.picows_log = PicowsLog(
            self.peer_log, PeerLog(logging.getLogger("ferry.picows")), logging.getLogger("picows")
        )
        options: dict[str, Any] = {
            # Twice ferry's own limit: frames between the two reach the listener, which
            # closes 1009 after the acks the connection is owed (core/session.py); larger
            # ones picows cuts at their header (its own 1009, nothing more is sent).
            # picows holds at most this much of a frame in memory.
            "max_frame_size": 2 * config.max_frame_bytes,
            # Keepalive is one sweep over all connections (core/keepalive.py), not a task
            # per connection; the read buffer starts small and grows only for big frames.
            # Both keep an idle connection's memory down.
            "enable_auto_ping": False,
            # Pings are answered through the connection's outbox (core/listener.py), so a
            # client that pings and never reads hits the outbox limit.
            "enable_auto_pong": False,
            "read_buffer_init_size": 2048,
        }
        options.update(PICOWS_OVERRIDES)
        self.options = options

    def protocol(self) -> HandshakeProtocol:
        return HandshakeProtocol(self)

    def websocket(self, result: WSUpgradeResponseWithListener) -> Any:
        o = self.options
        return WSProtocol(
            None,  # host:port (client side only)
            None,  # path (client side only)
            False,  # server side
            lambda request: result,  # decided already: picows sends its 101 and connects
            self.picows_log,
            True,  # disconnect on an exception from the listener
            None,  # no handshake timeout: the whole request head is fed at once
            o["enable_auto_ping"],
            20,
            20,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            o["enable_auto_pong"],
            o["max_frame_size"],
            None,  # extra headers (client side only)
            o["read_buffer_init_size"],
        )


class HandshakeProtocol(asyncio.Protocol):
    __slots__ = ("_acceptor", "_buffer", "_peer", "_timer", "_transport", "_trusted")

    def __init__(self, acceptor: Acceptor) -> None:
        self._acceptor = acceptor
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None
        self._peer = ""
        self._trusted = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's is not a subclass
        acceptor = self._acceptor
        self._peer, self._trusted = acceptor.guard.peer_address(
            transport.get_extra_info("peername")
        )
        refusal = acceptor.guard.start_handshake(self._peer, self._trusted)
        if refusal is not None:
            acceptor.hub.metrics_rejected(refusal)
            acceptor.peer_log.info("dropped a connection from %s: %s", self._peer, refusal)
            transport.abort()
            return
        self._transport = transport
        self._timer = acceptor.loop.call_later(acceptor.timeout, self._timed_out)

    def _done(self) -> asyncio.Transport | None:
        """The head is complete, the client gave up or time ran out: no longer counted."""
        transport, self._transport = self._transport, None
        if transport is not None:
            self._acceptor.guard.end_handshake(self._peer, self._trusted)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        return transport

    def _timed_out(self) -> None:
        self._timer = None
        transport = self._done()
        if transport is not None:
            acceptor = self._acceptor
            acceptor.hub.metrics_rejected("handshake_timeout")
            acceptor.peer_log.info(
                "dropped %s: no complete request within %.1fs", self._peer, acceptor.timeout
            )
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        start = max(0, len(self._buffer) - 3)
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self._buffer) >= MAX_HEAD:
                self._reply(self._done(), HEAD_TOO_LARGE, False, "request head too large")
            return
        if end >= MAX_HEAD:
            self._reply(self._done(), HEAD_TOO_LARGE, False, "request head too large")
            return
        transport = self._done()
        assert transport is not None
        data, self._buffer = self._buffer, b""
        self._request(transport, data, end)

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()
        self._buffer = b""

    # --- one complete request head ---------------------------------------------------

    def _request(self, transport: asyncio.Transport, data: bytes, end: int) -> None:
        head = data[:end]
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[1]:
            self._reply(transport, BAD_REQUEST, False, "malformed request line")
            return
        method, target, version = parts
        if len(target) > MAX_TARGET:
            self._reply(transport, URI_TOO_LONG, method == b"HEAD", "request target too long")
            return
        is_ws = target == b"/ws" or target.startswith(b"/ws?")
        if method not in (b"GET", b"HEAD"):
            self._reply(
                transport, WS_NOT_ALLOWED if is_ws else NOT_ALLOWED, False, "method not allowed"
            )
            return
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not target.startswith(b"/"):
            self._reply(transport, BAD_REQUEST, False, "malformed request line")
            return
        rest = head[len(request_line) :]
        try:
            # picows' own parser: what it accepts here it accepts again after the hand-off.
            request = _parse_http_request(b"GET " + target + b" HTTP/1.1" + rest)
        except RuntimeError:
            self._reply(transport, BAD_REQUEST, method == b"HEAD", "malformed headers")
            return
        acceptor = self._acceptor
        if not is_ws:
            path = target.decode("latin-1").split("?", 1)[0]
            self._reply(transport, acceptor.hub.http.respond(path), method == b"HEAD", "")
            return
        if method == b"HEAD":
            self._reply(transport, WS_NOT_ALLOWED, True, "HEAD of /ws")
            return
        if version != b"HTTP/1.1":
            self._reply(transport, NOT_WEBSOCKET, False, "WebSocket upgrade over HTTP/1.0")
            return
        try:
            _validate_upgrade_request(request)
        except RuntimeError:
            self._reply(transport, NOT_WEBSOCKET, False, "/ws without a valid upgrade request")
            return
        address = acceptor.guard.client_address(
            self._peer, self._trusted, request.headers.getall("X-Forwarded-For", ())
        )
        # ferry_events keeps the forwarded address, or "ip:port" of the TCP peer.
        remote = address if address != self._peer else ""
        result = upgrade(acceptor.hub, acceptor.guard, request, address, remote)
        if result.response.status != 101:
            response = result.response
            body = response.body or b""
            headers = tuple((k, v) for k, v in response.headers.items() if k != "Connection")
            self._reply(transport, Reply(int(response.status), body, headers), False, "")
            return
        protocol = acceptor.websocket(result)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        _feed(protocol, data)

    def _reply(
        self, transport: asyncio.Transport | None, reply: Reply, head_only: bool, mistake: str
    ) -> None:
        if transport is None:
            return
        acceptor = self._acceptor
        if mistake:
            if reply.status == 400:
                acceptor.hub.metrics_rejected("bad_request")
            acceptor.peer_log.info("HTTP %d to %s: %s", reply.status, self._peer, mistake)
        if head_only or not reply.body:
            transport.write(reply.head())
        else:
            transport.writelines((reply.head(), reply.body))
        transport.close()
        if transport.get_write_buffer_size():
            # close() waits for the buffer to drain: bound that for a client that never reads.
            acceptor.loop.call_later(RESPONSE_GRACE_S, transport.abort)


def _feed(protocol: Any, data: bytes) -> None:
    """Hand what was read so far to the picows protocol, as if it had read it itself."""
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(-1)
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        view = view[n:]
        protocol.buffer_updated(n)
        if protocol.transport is None or protocol.transport.is_disconnected:
            return


async def create_server(hub: RelayState, guard: Guard, config: Config) -> asyncio.Server:
    acceptor = Acceptor(hub, guard, config)
    return await hub.loop.create_server(
        acceptor.protocol,
        config.host,
        config.port,
        reuse_address=True,
        reuse_port=config.reuse_port or None,
        backlog=4096,
    )
