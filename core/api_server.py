"""The HTTP API's listener: HTTP/1.1 with keep-alive and pipelining, on the relay's loop.

    accept (at most api_max_connections) -> ApiProtocol: httptools (llhttp) parses,
    bounded all along: the request head within 16 KiB (431) and its target within 8 KiB
    (414), the body within api_max_body_bytes (413, decided from Content-Length before a
    byte of it is read), a whole request within handshake_timeout once it started (408),
    an idle keep-alive connection closed after api_idle_timeout. Both deadlines are a
    float on the connection that one sweep per server checks a few times a second: no
    timer is armed or cancelled per request (two per request cost ~3% of the loop).
    -> core.api.Api.handle(request) -> a Response, or a Pending one (publishes answer
    after the fsync); responses go out in request order.

Why httptools: a real, strict parser (Node's llhttp) at ~6 us a request here; h11, the
pure-Python alternative, measured 50x slower, a cap well below the API's goal.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import httptools

from core.api import Api, Pending, Request, Response, error_response, parse_target

if TYPE_CHECKING:
    from core.relay_state import RelayState

log = logging.getLogger("ferry.api")

MAX_HEAD = 16 * 1024
MAX_TARGET = 8 * 1024
MAX_PIPELINED = 32  # requests read ahead of their answers; reading pauses past it
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


def render(response: Response, keep_alive: bool) -> bytes:
    head = _HEADS.get(response.status)
    if head is None:
        head = _HEADS[response.status] = (
            f"HTTP/1.1 {response.status} {_PHRASES.get(response.status, '')}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode("latin-1")
    lines = [f"{name}: {value}" for name, value in response.headers]
    if not keep_alive:
        lines.append("Connection: close")
    extra = "".join(line + "\r\n" for line in lines).encode("latin-1") if lines else b""
    return b"%s%d\r\n%s\r\n%s" % (head, len(response.body), extra, response.body)


_HEADS: dict[int, bytes] = {}  # status -> the head up to Content-Length's value


class ApiServer:
    """The listener's shared state: the API, its bounds, its open connections. A
    `common.service.Service`: started after the WebSocket listener, stopped before the
    log closes for good."""

    name = "api"

    def __init__(self, hub: RelayState, api: Api) -> None:
        self.hub = hub
        self.api = api
        config = hub.config
        self.max_body = config.api_max_body_bytes
        self.idle_timeout = config.api_idle_timeout
        self.request_timeout = config.handshake_timeout
        self.max_connections = config.api_max_connections
        self.connections: set[ApiProtocol] = set()
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        # how often deadlines are checked: a quarter of the shorter timeout, 50 ms..1 s
        self.tick = max(0.05, min(1.0, min(self.idle_timeout, self.request_timeout) / 4))
        self.port = config.api_port

    async def start(self) -> None:
        config = self.hub.config
        self._server = await self.hub.loop.create_server(
            lambda: ApiProtocol(self),
            config.api_host,
            config.api_port,
            backlog=1024,
            reuse_port=config.reuse_port or None,
        )
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else config.api_port
        self._sweeper = self.hub.loop.call_later(self.tick, self._sweep)
        log.info("HTTP API on %s:%d", config.api_host, self.port)

    def _sweep(self) -> None:
        """Expire the connections whose deadline has passed; runs every `tick`."""
        loop = self.hub.loop
        now = loop.time()
        for conn in [c for c in self.connections if c.deadline <= now]:
            try:
                conn.expire()
            except Exception:  # one connection's failure must not stop the sweeps
                log.exception("HTTP API: expiring a connection failed")
        self._sweeper = loop.call_later(self.tick, self._sweep)

    async def stop(self) -> None:
        """Stop accepting; idle connections go now, busy ones after their answers."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.close_when_idle()

    def stats(self) -> dict[str, Any]:
        api = self.api
        return {
            "port": self.port,
            "connections": len(self.connections),
            "requests": api.requests,
            "refused_connections": self.refused,
            "by_status": {str(k): v for k, v in sorted(api.by_status.items())},
        }


class ApiProtocol(asyncio.Protocol):
    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.loop = server.hub.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body = bytearray()
        self._answers: collections.deque[tuple[Response | Pending, bool]] = collections.deque()
        self.deadline = float("inf")  # loop time after which `expire` runs (the sweep)
        self._request_deadline = False  # the deadline is a request's (408), not idleness
        self._closing = False
        self._paused = False
        self._failed = False

    # --- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(
            asyncio.Transport, transport
        )  # uvloop's is not a subclass
        server = self.server
        if len(server.connections) >= server.max_connections:
            server.refused += 1
            transport.abort()
            return
        server.connections.add(self)
        self._arm(server.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.deadline = float("inf")
        self._answers.clear()  # what was published stays published; nobody to tell

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(error_response("bad_request", "no upgrades here"))
        except httptools.HttpParserError:
            if not self._failed:
                self._fail(error_response("bad_request", "malformed HTTP request"))

    # --- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = {}
        self._head_bytes = 0
        self._body.clear()
        self._arm(self.server.request_timeout, timed_out=True)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_TARGET:
            self._fail(error_response("uri_too_long", "request target over 8 KiB"))
            raise httptools.HttpParserError("target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD:
            self._fail(error_response("header_too_large", "request head over 16 KiB"))
            raise httptools.HttpParserError("head too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else previous + ", " + text

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            self._fail(error_response("too_large", f"body over {self.server.max_body} bytes"))
            raise httptools.HttpParserError("body too large")

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.server.max_body:  # chunked: no Content-Length to go by
            self._fail(error_response("too_large", f"body over {self.server.max_body} bytes"))
            raise httptools.HttpParserError("body too large")

    def on_message_complete(self) -> None:
        parser = self.parser
        path, query = parse_target(self._url.decode("latin-1"))
        request = Request(
            parser.get_method().decode("latin-1"), path, query, self._headers, bytes(self._body)
        )
        keep_alive = parser.should_keep_alive() and not self._closing
        try:
            answer = self.server.api.handle(request)
        except Exception:
            log.exception("HTTP API handler failed for %s %s", request.method, path[:200])
            answer = error_response("internal", "internal error")
        self._answers.append((answer, keep_alive))
        if isinstance(answer, Pending):
            answer.listen(self._write_ready)
        self._write_ready()
        if len(self._answers) > MAX_PIPELINED and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    # --- answers -----------------------------------------------------------------------

    def _write_ready(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        answers = self._answers
        while answers:
            answer, keep_alive = answers[0]
            if isinstance(answer, Pending):
                if answer.response is None:
                    break
                response = answer.response
            else:
                response = answer
            answers.popleft()
            self.server.api.by_status[response.status] = (
                self.server.api.by_status.get(response.status, 0) + 1
            )
            transport.write(render(response, keep_alive))
            if not keep_alive:
                self._closing = True
                answers.clear()
                transport.close()
                return
        if self._paused and len(answers) <= MAX_PIPELINED // 2:
            self._paused = False
            transport.resume_reading()
        if not answers:
            if self._closing:
                transport.close()
            else:
                self._arm(self.server.idle_timeout)

    def _fail(self, response: Response) -> None:
        """A request we will not read to its end: answer it after the ones before, close."""
        if self._failed:
            return
        self._failed = True
        self._answers.append((response, False))
        self._write_ready()

    def close_when_idle(self) -> None:
        self._closing = True
        if not self._answers and self.transport is not None:
            self.transport.close()

    def _arm(self, seconds: float, timed_out: bool = False) -> None:
        self.deadline = self.loop.time() + seconds
        self._request_deadline = timed_out

    def expire(self) -> None:
        """The deadline passed (ApiServer._sweep): close an idle connection, answer a
        request that is not all here 408, leave one that is waiting for its answers."""
        timed_out = self._request_deadline
        self.deadline = float("inf")
        if self._answers:  # busy answering (a publish waits for its fsync): not idle
            self._arm(self.server.idle_timeout)
            return
        if timed_out and self.transport is not None and not self._failed:
            self._fail(error_response("timeout", "request not received in time"))
            return
        if self.transport is not None:
            self.transport.close()
