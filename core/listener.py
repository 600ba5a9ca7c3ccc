"""The picows adapter: moves bytes between a socket and a `Session`, nothing more.

core/accept.py reads the request head and calls `upgrade()` for `/ws`, which checks the
Origin, the connection limits (HTTP 503 overall, 429 per user and per client address) and
the token (HTTP 401/403 before the upgrade), picks the subprotocol, and returns a
`Connection`. Under jwt a request with no token at all is upgraded too: its session
waits for an `auth` first frame (first-frame auth), and the per-user limit is checked
then (`Connection._admit`; close 1013). Until then the connection counts toward
`max_connections` and is closed at shutdown, but the connect hooks (events, the guard's
per-user and per-address counts) run only once it is in.

`Connection` is glue only: it turns each picows frame into a call on the connection's
`WebSocket` (core/websocket.py: reassembly, UTF-8, the close echo, pings and keepalive
state, without I/O), and what that decides into transport writes and closes. picows
reuses its frame buffer: the payload is copied before `on_ws_frame` returns.
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
from core.auth import Grant, Principal, token_from_request
from core.errors import AuthError, SlowConsumer, TryLater
from core.outbox import Outbox
from core.protocol import SUBPROTOCOL_NAMES, SUBPROTOCOLS
from core.session import Session
from core.websocket import WebSocket

if TYPE_CHECKING:
    from core.guard import Guard
    from core.relay_state import RelayState

log = logging.getLogger("ferry.conn")

# A client that does not read its close frame is cut off after this long.
CLOSE_GRACE_S = 5.0
# picows' message types, read once per frame: module globals are the quickest lookup.
_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG
_CLOSE = WSMsgType.CLOSE


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
    response: WSUpgradeResponse = WSUpgradeResponse.create_error_response(
        status, text.encode() + b"\n", {"Content-Type": "text/plain; charset=utf-8"}
    )
    return response


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
    grant: Grant | None = None
    if token is not None or not hub.auth.enabled:
        try:
            grant = hub.auth.authenticate(token, query)
        except AuthError as exc:
            hub.metrics_rejected("auth")
            return WSUpgradeResponseWithListener(_http_error(401, str(exc)), None)
        refusal = guard.refuse_user(grant.principal.user)
        if refusal is not None:
            return _refuse(hub, refusal, 429, "too many connections for this user")
    # else: no token at all, under jwt: first-frame auth (the session waits for `auth`)
    encoding = _pick_subprotocol(headers.get("Sec-WebSocket-Protocol"))
    if encoding is None:
        hub.metrics_rejected("subprotocol")
        return WSUpgradeResponseWithListener(
            _http_error(400, "supported subprotocols: ferry.v1.json, ferry.v1.msgpack"), None
        )
    extra = {}
    if headers.get("Sec-WebSocket-Protocol"):
        extra["Sec-WebSocket-Protocol"] = SUBPROTOCOL_NAMES[encoding]
    conn = Connection(hub, grant, encoding, remote, address, guard)
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra), conn)


# Who a connection is until its first-frame `auth` is accepted: allowed nothing.
UNAUTHENTICATED = Principal(user="", pub_patterns=(), sub_patterns=())


class Connection(WSListener):
    __slots__ = (
        "_cutoff", "address", "conn_id", "connected_at", "encoding", "grant", "guard", "hub",
        "outbox", "principal", "remote", "session", "transport", "ws",
    )  # fmt: skip

    def __init__(
        self,
        hub: RelayState,
        grant: Grant | None,
        encoding: Encoding,
        remote: str,
        address: str = "",
        guard: Guard | None = None,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.grant = grant  # None: first-frame auth has not happened yet
        self.guard = guard
        self.principal = grant.principal if grant is not None else UNAUTHENTICATED
        self.encoding = encoding
        self.remote = remote  # for ferry_events: the forwarded address, else "ip:port"
        self.address = address  # what the per-address limit counts (core.guard)
        self.conn_id = hub.next_conn_id()
        self.transport: WSTransport | None = None
        self.session: Session | None = None
        self.outbox: Outbox | None = None
        self.ws: WebSocket | None = None  # set with the session, at on_ws_connected
        self.connected_at = time.monotonic()
        self._cutoff: object = None

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
            expires_at=self.grant.expires_at if self.grant is not None else None,
            schedule=hub.loop.call_later,
            authenticate=hub.auth.refresh,
        )
        self.ws = WebSocket(self.session, self.outbox, hub.config.max_frame_bytes, hub)
        if self.grant is None:
            hub.waiting(self)
            self.session.start_unauthenticated(hub.config.auth_timeout, self._admit)
        else:
            hub.connected(self)
            self.session.start()
        transport.request.headers = None  # type: ignore[assignment]
        transport.response.headers = None  # type: ignore[assignment]

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        ws = self.ws
        if ws is None:
            return
        msg_type = frame.msg_type
        if msg_type is _TEXT:
            ws.receive_data(frame, True)
        elif msg_type is _BINARY:
            ws.receive_data(frame, False)
        elif msg_type is _CONTINUATION:
            ws.receive_continuation(frame)
        elif msg_type is _PING:
            ws.receive_ping(frame.get_payload_as_bytes())
        elif msg_type is _PONG:
            ws.receive_pong(frame.get_payload_as_bytes())
        elif msg_type is _CLOSE and ws.receive_close(transport.is_close_frame_sent):
            transport.disconnect(graceful=True)  # the answer to our close: done

    def _admit(self, grant: Grant) -> BaseException | None:
        """First-frame auth accepted `grant`: the per-user limit, then the connect hooks."""
        guard = self.guard
        if guard is not None and guard.refuse_user(grant.principal.user) is not None:
            self.hub.metrics_rejected("max_connections_per_user")
            return TryLater("too many connections for this user; try again later")
        self.grant = grant
        self.principal = grant.principal
        self.hub.connected(self)
        return None

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.session is not None:
            self.session.closed()
            if self.grant is None:
                self.hub.stopped_waiting(self)  # never got in: no hooks ran for it
            else:
                self.hub.disconnected(self)
        if self._cutoff is not None:
            self._cutoff.cancel()  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        if self.outbox is not None:
            self.outbox.pause()

    def resume_writing(self) -> None:
        if self.ws is not None and self.outbox is not None:
            self.ws.release_pongs()
            self.outbox.resume()

    # --- closing ---------------------------------------------------------------------

    def _slow_consumer(self) -> None:
        # Called from inside the fan-out loop: close on the next iteration so the
        # channel's subscriber dict is not changed while it is being iterated.
        self.hub.slow_consumer_closes += 1
        self.hub.loop.call_soon(self._request_close_slow)

    def _fault(self, exc: BaseException) -> None:
        # A server fault while writing to this connection: close it alone (1011).
        self.hub.loop.call_soon(self._request_close_fault, exc)

    def _request_close_fault(self, exc: BaseException) -> None:
        if self.session is not None:
            self.session.fail(exc)

    def _request_close_slow(self) -> None:
        if self.session is not None:
            log.info(
                "closing slow consumer %s (%s): outbox over %d bytes",
                self.conn_id,
                self.principal.user,
                self.hub.config.max_outbox_bytes,
            )
            self.session.fail(SlowConsumer("slow consumer: outbox limit exceeded"))

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
        if self.ws is not None and self.ws.close_rcvd:
            transport.disconnect(graceful=True)  # its close came first: ours was the answer
        # Otherwise wait for the client's close frame before closing TCP (RFC 6455 §7.1.1):
        # closing a socket that still holds unread client data resets the connection, and
        # a reset can destroy what the client has not read yet (its last acks, the close
        # frame). Frames that arrive meanwhile are read and dropped. A client that never
        # answers (or never reads) is cut off.
        self._cutoff = self.hub.loop.call_later(CLOSE_GRACE_S, transport.disconnect, False)
