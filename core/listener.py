"""The picows adapter: moves bytes between a socket and a `Session`, nothing more.

core/accept.py reads the request head and calls `upgrade()` for `/ws`, which checks the
Origin, the connection limits (HTTP 503 overall, 429 per user and per client address) and
the token (HTTP 401/403 before the upgrade), picks the subprotocol, and returns a
`Connection`.

A frame's payload is copied (`get_payload_as_bytes`) before `on_ws_frame` returns: picows
reuses its buffer. Fragmented messages are reassembled up to the frame limit; a new data
frame inside an unfinished one closes with 1002 (RFC 6455 §5.4).
Pings are answered here, through the outbox like any other frame (picows' auto-pong would
write past its limit); only a pong carrying the payload of our last ping answers it.
Backpressure: picows forwards the transport's `pause_writing`/`resume_writing`, which
stop and restart the outbox's flushes (see core/outbox.py for the slow-consumer policy).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from common.durability import Encoding
from core.auth import Grant, token_from_request
from core.errors import AuthError, CloseCode
from core.outbox import Outbox
from core.protocol import SUBPROTOCOL_NAMES, SUBPROTOCOLS, pong_frame
from core.session import Session

if TYPE_CHECKING:
    from core.guard import Guard
    from core.relay_state import RelayState

log = logging.getLogger("ferry.conn")

# A client that does not read its close frame is cut off after this long.
CLOSE_GRACE_S = 5.0
# Pongs made while the outbox is paused are pushed to it in chunks of this size.
PONG_CHUNK = 4096


def _pick_subprotocol(header: str | None) -> Encoding | None:
    """First offered subprotocol we speak; JSON when none is offered; None if none fits."""
    if not header:
        return Encoding.JSON
    for name in header.split(","):
        encoding = SUBPROTOCOLS.get(name.strip())
        if encoding is not None:
            return encoding
    return None


def _http_error(status: int, text: str) -> WSUpgradeResponse:
    return WSUpgradeResponse.create_error_response(
        status, text.encode() + b"\n", {"Content-Type": "text/plain; charset=utf-8"}
    )


def upgrade(
    hub: RelayState, guard: Guard, request: WSUpgradeRequest, address: str, remote: str
) -> WSUpgradeResponseWithListener:
    """Decide a `/ws` upgrade for a client at `address` (core.guard). Never raises."""
    try:
        return _upgrade(hub, guard, request, address, remote)
    except Exception:
        log.exception("unexpected error handling %r", request.path[:200])
        return WSUpgradeResponseWithListener(_http_error(500, "internal error"), None)


def _refuse(hub: RelayState, reason: str, status: int, text: str) -> WSUpgradeResponseWithListener:
    hub.metrics_rejected(reason)
    return WSUpgradeResponseWithListener(_http_error(status, text), None)


def _upgrade(
    hub: RelayState, guard: Guard, request: WSUpgradeRequest, address: str, remote: str
) -> WSUpgradeResponseWithListener:
    raw_path = request.path.decode("latin-1")
    headers = request.headers
    if hub.closing:
        return WSUpgradeResponseWithListener(_http_error(503, "server is shutting down"), None)
    origins = hub.config.allowed_origins
    origin = headers.get("Origin")
    # Browsers always send Origin: the allow-list keeps other sites' pages out. A request
    # without one is not a browser's (a backend publisher): its token decides, as in
    # Centrifugo and NATS.
    if origins and origin is not None and origin not in origins:
        return _refuse(hub, "origin", 403, "origin not allowed")
    if len(hub.connections) >= hub.config.max_connections:
        return _refuse(hub, "max_connections", 503, "too many connections")
    refusal = guard.refuse_address(address)
    if refusal is not None:
        return _refuse(hub, refusal, 429, "too many connections from this address")
    token, query = token_from_request(raw_path, headers)
    try:
        grant = hub.auth.authenticate(token, query)
    except AuthError as exc:
        hub.metrics_rejected("auth")
        return WSUpgradeResponseWithListener(_http_error(401, str(exc)), None)
    refusal = guard.refuse_user(grant.principal.user)
    if refusal is not None:
        return _refuse(hub, refusal, 429, "too many connections for this user")
    encoding = _pick_subprotocol(headers.get("Sec-WebSocket-Protocol"))
    if encoding is None:
        hub.metrics_rejected("subprotocol")
        return WSUpgradeResponseWithListener(
            _http_error(400, "supported subprotocols: ferry.v1.json, ferry.v1.msgpack"), None
        )
    extra = {}
    if headers.get("Sec-WebSocket-Protocol"):
        extra["Sec-WebSocket-Protocol"] = SUBPROTOCOL_NAMES[encoding]
    conn = Connection(hub, grant, encoding, remote, address)
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra), conn)


class Connection(WSListener):  # type: ignore[misc]
    __slots__ = (
        "_cutoff", "_fragments", "_fragments_size", "_fragments_text", "_peer_closed", "_pongs",
        "active", "address", "conn_id", "connected_at", "encoding", "grant", "hub", "outbox",
        "ping_payload", "pinged_at", "principal", "remote", "session", "transport",
    )  # fmt: skip

    def __init__(
        self, hub: RelayState, grant: Grant, encoding: Encoding, remote: str, address: str = ""
    ) -> None:
        super().__init__()
        self.hub = hub
        self.grant = grant
        self.principal = grant.principal
        self.encoding = encoding
        self.remote = remote  # for ferry_events: the forwarded address, else "ip:port"
        self.address = address  # what the per-address limit counts (core.guard)
        self.conn_id = hub.next_conn_id()
        self.transport: WSTransport | None = None
        self.session: Session | None = None
        self.outbox: Outbox | None = None
        self.connected_at = time.monotonic()
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        self._fragments_size = 0
        self._cutoff: object = None
        self._peer_closed = False
        # keepalive (core/keepalive.py): a data frame, or the pong that answers our ping
        # (same payload), marks the connection active; the client's own pings and
        # unsolicited pongs do not (neither shows that it reads).
        self.active = True
        self.pinged_at = 0.0
        self.ping_payload: bytes | None = None
        # Pongs made while the outbox is paused, pushed in chunks: the outbox counts the
        # bytes, and a flood of tiny pongs must not become a flood of tiny objects.
        self._pongs: bytearray | None = None

    # --- picows callbacks ------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        # picows keeps the upgrade request and response for the connection's lifetime;
        # their header maps are the largest part of an idle connection after the read
        # buffer, and nothing reads them after the upgrade (remote is taken below).
        underlying = transport.underlying_transport
        if not self.remote:
            peer = underlying.get_extra_info("peername")
            self.remote = f"{peer[0]}:{peer[1]}" if peer else ""
        hub = self.hub
        self.outbox = Outbox(
            underlying,
            hub.flusher,
            hub.config.max_outbox_bytes,
            self._slow_consumer,
            self._fault,
        )
        self.session = Session(
            self.conn_id,
            self.principal,
            self.encoding,
            hub.router,
            self.outbox,
            hub.limits,
            hub.config.node_id,
            self._request_close,
            hub.errors,
            expires_at=self.grant.expires_at,
            schedule=hub.loop.call_later,
            authenticate=hub.auth.refresh,
        )
        hub.connected(self)
        self.session.start()
        transport.request.headers = None  # type: ignore[assignment]
        transport.response.headers = None  # type: ignore[assignment]

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        session = self.session
        if session is None:
            return
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT or msg_type is WSMsgType.BINARY:
            self.active = True
            if self._fragments is not None:
                # RFC 6455 §5.4: a fragmented message's frames may only be interleaved
                # with control frames.
                self._fail(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
                return
            if frame.payload_size > self.hub.config.max_frame_bytes:
                self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
                return
            if frame.fin:
                self._deliver(frame.get_payload_as_bytes(), msg_type is WSMsgType.TEXT)
            else:
                self._fragments = [frame.get_payload_as_bytes()]
                self._fragments_text = msg_type is WSMsgType.TEXT
                self._fragments_size = frame.payload_size
        elif msg_type is WSMsgType.PING:
            self._answer_ping(frame.get_payload_as_bytes())
        elif msg_type is WSMsgType.PONG:
            if self.ping_payload is not None and frame.get_payload_as_bytes() == self.ping_payload:
                self.ping_payload = None
                self.pinged_at = 0.0
                self.active = True
        elif msg_type is WSMsgType.CONTINUATION:
            self.active = True
            if self._fragments is None:
                self._fail(
                    CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue"
                )
                return
            self._fragments_size += frame.payload_size
            if self._fragments_size > self.hub.config.max_frame_bytes:
                self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
                return
            self._fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                payload = b"".join(self._fragments)
                self._fragments = None
                self._deliver(payload, self._fragments_text)
        elif msg_type is WSMsgType.CLOSE:
            if transport.is_close_frame_sent:
                transport.disconnect(graceful=True)  # the answer to our close: done
                return
            # RFC 6455 §5.5.1: answer the close (after the acks this client is owed).
            self._peer_closed = True
            session.close(CloseCode.NORMAL, "")

    def _answer_ping(self, payload: bytes) -> None:
        """The pong goes through the outbox: a client that pings and never reads reaches
        its limit (4408) like one that subscribes and never reads."""
        outbox = self.outbox
        if outbox is None or outbox.closed:
            return
        if not outbox.paused:
            outbox.push(pong_frame(payload))
            return
        pongs = self._pongs
        if pongs is None:
            pongs = self._pongs = bytearray()
        pongs += pong_frame(payload)
        if len(pongs) >= PONG_CHUNK:
            self._pongs = None
            outbox.push(bytes(pongs))

    def _deliver(self, payload: bytes, is_text: bool) -> None:
        assert self.session is not None
        if is_text:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_TEXT, "text frame is not valid UTF-8")
                return
        self.hub.bytes_in += len(payload)
        self.session.receive(payload, is_text)

    def _fail(self, code: int, reason: str) -> None:
        assert self.session is not None
        self.session.close(code, reason)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.session is not None:
            self.session.closed()
            self.hub.disconnected(self)
        if self._cutoff is not None:
            self._cutoff.cancel()  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        if self.outbox is not None:
            self.outbox.pause()

    def resume_writing(self) -> None:
        outbox = self.outbox
        if outbox is not None:
            pongs, self._pongs = self._pongs, None
            if pongs:
                outbox.push(bytes(pongs))
            outbox.resume()

    # --- closing ---------------------------------------------------------------------

    def _slow_consumer(self) -> None:
        # Called from inside the fan-out loop: close on the next iteration so the
        # channel's subscriber dict is not changed while it is being iterated.
        self.hub.slow_consumer_closes += 1
        self.hub.loop.call_soon(self._request_close_slow)

    def _fault(self) -> None:
        # A server fault while writing to this connection: close it alone (1011).
        self.hub.loop.call_soon(self._request_close_fault)

    def _request_close_fault(self) -> None:
        if self.session is not None:
            self.session.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _request_close_slow(self) -> None:
        if self.session is not None:
            log.info(
                "closing slow consumer %s (%s): outbox over %d bytes",
                self.conn_id,
                self.principal.user,
                self.hub.config.max_outbox_bytes,
            )
            self.session.close(CloseCode.SLOW_CONSUMER, "slow consumer: outbox limit exceeded")

    def _request_close(self, code: int, reason: str) -> None:
        """Session asked to close: flush what is queued, send the close frame, hang up."""
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        if self.outbox is not None and not self.outbox.closed:
            self.outbox.flush_now()
            self.outbox.close()
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code), reason.encode()[:120])
        if self._peer_closed:
            transport.disconnect(graceful=True)  # its close came first: ours was the answer
        # Otherwise wait for the client's close frame before closing TCP (RFC 6455 §7.1.1):
        # closing a socket that still holds unread client data resets the connection, and
        # a reset can destroy what the client has not read yet (its last acks, the close
        # frame). Frames that arrive meanwhile are read and dropped. A client that never
        # answers (or never reads) is cut off.
        self._cutoff = self.hub.loop.call_later(CLOSE_GRACE_S, transport.disconnect, False)
