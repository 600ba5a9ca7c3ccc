"""The picows transport: one WebSocket connection, reporting to a sink by its number.

It only moves bytes: the upgrade (subprotocol and token headers), whole messages in
(fragments reassembled), frames out, the close code seen. Everything the bytes mean is
the core's (ferry_client.core).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Protocol

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

log = logging.getLogger("ferry_client")

NO_CLOSE_FRAME = 1006
MAX_FRAME = 64 * 1024 * 1024  # what we accept from the server (its frames are far smaller)


class Sink(Protocol):
    def on_connected(self, conn: int, link: Link) -> bool: ...
    def on_payload(self, conn: int, payload: bytes) -> None: ...
    def on_disconnected(self, conn: int, code: int, reason: str) -> None: ...


class ConnectFailed(Exception):
    """The upgrade did not happen: `status` is the HTTP status (None: no HTTP answer)."""

    def __init__(self, reason: str, status: int | None) -> None:
        super().__init__(reason)
        self.status = status


class Link(WSListener):
    def __init__(self, sink: Sink, conn: int, binary: bool) -> None:
        super().__init__()
        self.sink = sink
        self.conn = conn
        self.binary = binary
        self.transport: WSTransport | None = None
        self.close_code = NO_CLOSE_FRAME
        self.close_reason = ""
        self._fragments: list[bytes] | None = None
        self._gone = False

    # --- picows callbacks (never raise: picows would close the connection) -------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        try:
            ok = self.sink.on_connected(self.conn, self)
        except Exception:
            log.exception("ferry_client: on_connected failed")
            ok = False
        if not ok:
            transport.disconnect(graceful=False)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        try:
            self._frame(transport, frame)
        except Exception:
            log.exception("ferry_client: a frame could not be handled")

    def _frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if frame.fin:
                self.sink.on_payload(self.conn, frame.get_payload_as_bytes())
            else:
                self._fragments = [frame.get_payload_as_bytes()]
        elif kind is WSMsgType.CONTINUATION:
            if self._fragments is not None:
                self._fragments.append(frame.get_payload_as_bytes())
                if frame.fin:
                    whole = b"".join(self._fragments)
                    self._fragments = None
                    self.sink.on_payload(self.conn, whole)
        elif kind is WSMsgType.CLOSE:
            payload = frame.get_payload_as_bytes()
            if len(payload) >= 2:
                self.close_code = int(struct.unpack("!H", payload[:2])[0])
                self.close_reason = payload[2:].decode("utf-8", "replace")
            else:
                self.close_code = 1005
            if not transport.is_close_frame_sent:
                with contextlib.suppress(Exception):
                    transport.send_close(
                        WSCloseCode(self.close_code if len(payload) >= 2 else 1000)
                    )
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._gone:
            return
        self._gone = True
        try:
            self.sink.on_disconnected(self.conn, self.close_code, self.close_reason)
        except Exception:
            log.exception("ferry_client: on_disconnected failed")

    # --- the client's side ---------------------------------------------------------------

    @property
    def gone(self) -> bool:
        return self._gone

    def send(self, payload: bytes) -> None:
        t = self.transport
        if t is None or t.is_disconnected or t.is_close_frame_sent:
            return
        t.send(WSMsgType.BINARY if self.binary else WSMsgType.TEXT, payload)

    def close(self, code: int = 1000) -> None:
        t = self.transport
        if t is None or t.is_disconnected:
            return
        if not t.is_close_frame_sent:
            t.send_close(WSCloseCode(code))
        # The server echoes the close and ends TCP; if it does not, do it ourselves.
        asyncio.get_running_loop().call_later(2.0, self.abort)

    def abort(self) -> None:
        t = self.transport
        if t is not None and not t.is_disconnected:
            t.disconnect(graceful=False)

    async def wait_disconnected(self, timeout: float) -> None:
        t = self.transport
        if t is None:
            return
        try:
            await asyncio.wait_for(t.wait_disconnected(), timeout)
        except (TimeoutError, WSError, Exception):
            self.abort()


async def connect(
    url: str,
    sink: Sink,
    conn: int,
    *,
    binary: bool,
    headers: dict[str, str],
    timeout: float,
) -> Link:
    """Open the connection; raises ConnectFailed."""
    try:
        _transport, listener = await asyncio.wait_for(
            ws_connect(
                lambda: Link(sink, conn, binary),
                url,
                extra_headers=headers,
                websocket_handshake_timeout=timeout,
                max_frame_size=MAX_FRAME,
                enable_auto_pong=True,
                max_redirects=0,
            ),
            timeout + 1.0,
        )
    except WSHandshakeError as exc:
        status = exc.response.status if exc.response is not None else None
        raise ConnectFailed(f"upgrade refused: {exc}", None if status is None else int(status))
    except (OSError, TimeoutError, WSError, EOFError) as exc:
        raise ConnectFailed(f"{type(exc).__name__}: {exc}", None)
    if not isinstance(listener, Link) or listener.transport is None or listener.gone:
        # picows returns without a listener when the peer drops the socket mid-upgrade
        raise ConnectFailed("connection lost during the upgrade", None)
    return listener
