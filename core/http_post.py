"""One HTTP/1.1 POST over asyncio streams, bounded by a deadline: the client both webhooks use.

The operational notifier (core/notifier.py) and the application webhooks (core/hooks.py)
POST small JSON bodies to one configured URL. Neither needs a client library: a request is
written by hand, the response's status line and headers are read (never the body), and the
connection is closed (`Connection: close`). It runs on the event loop as a coroutine, so it
is cancellable at any point and a hanging receiver costs the sending task time, never the
loop's; TLS (https) uses the system's trust store unless a context is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.errors import FerryError

# Status line + headers we are willing to read from the receiver.
MAX_RESPONSE_HEAD = 64 * 1024


class WebhookError(FerryError):
    """A webhook did not accept a POST (connection, timeout or HTTP status)."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    tls: bool
    path: str  # path and query, what goes on the request line

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be http:// or https:// with a host, got {url!r}")
        tls = parts.scheme == "https"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.hostname, parts.port or (443 if tls else 80), tls, path)

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    retry_after: float | None  # the Retry-After header, in seconds (None: absent or a date)


async def post(
    target: Target,
    body: bytes,
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    user_agent: str = "ferry",
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """POST `body` (JSON) once; the whole exchange (connect, TLS, request, response head)
    within `timeout_s`. Raises `WebhookError` for a timeout, a connection error or an answer
    that is not HTTP; any status is returned, 2xx or not."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = (
        f"POST {target.path} HTTP/1.1\r\n"
        f"Host: {target.host_header}\r\n"
        f"User-Agent: {user_agent}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    ).encode("latin-1") + body
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                target.host,
                target.port,
                ssl=(ssl_context or ssl.create_default_context()) if target.tls else None,
                limit=MAX_RESPONSE_HEAD,
            )
            try:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except TimeoutError:
        raise WebhookError(f"no answer within {timeout_s:g} s") from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise WebhookError(f"{type(exc).__name__}: {exc}") from None
    return parse_head(head)


def parse_head(head: bytes) -> Response:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise WebhookError(f"not an HTTP response: {lines[0][:80]!r}")
    retry_after: float | None = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "retry-after":
            with contextlib.suppress(ValueError):
                retry_after = max(0.0, float(value.strip()))
    return Response(int(parts[1]), retry_after)
