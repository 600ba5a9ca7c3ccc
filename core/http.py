"""Plain HTTP on the relay's port: /healthz, /readyz, /metrics and the dashboard at /.

core/accept.py reads every request head; anything but a WebSocket upgrade of /ws is
answered from here with one response and the connection is closed. GET and HEAD are
served (HEAD: the same status and headers, no body).

The dashboard is served from memory: `load()` reads every file under the dashboard
directory at start-up, off the event loop (aiofiles), up to `dashboard_max_bytes` in
total. Requests never touch the file system, so no path a client sends can make an
OSError (a name over NAME_MAX, a loop of symlinks): what is not in the cache is a 404.
"""

from __future__ import annotations

import importlib.metadata
import logging
import mimetypes
import os
import posixpath
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

import aiofiles
import aiofiles.os
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from core.relay_state import RelayState


try:
    VERSION = importlib.metadata.version("ferry")
except importlib.metadata.PackageNotFoundError:  # run from a checkout without installing
    VERSION = "0+unknown"
log = logging.getLogger("ferry.http")

DEFAULT_DASHBOARD = Path(__file__).resolve().parent.parent / "dashboard" / "dist"
# A dashboard directory with more files than this is a misconfiguration (FERRY_DASHBOARD_DIR=/).
MAX_STATIC_FILES = 4096
TEXT_PLAIN = "text/plain; charset=utf-8"

NOT_BUILT = b"""<!doctype html><meta charset="utf-8"><title>ferry</title>
<h1>ferry is running</h1>
<p>The dashboard is not built. Build it with <code>make dashboard</code>
(or <code>cd dashboard &amp;&amp; npm ci &amp;&amp; npm run build</code>) and reload.</p>
<p>Relay endpoint: <code>/ws</code> &middot; <a href="/metrics">/metrics</a> &middot;
<a href="/healthz">/healthz</a> &middot; <a href="/readyz">/readyz</a></p>
"""


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response; the connection is closed after it."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", TEXT_PLAIN),)

    def head(self) -> bytes:
        """Status line and headers (Content-Length is the body's, for HEAD too)."""
        phrase = HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {phrase}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def text_reply(status: int, text: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, text.encode() + b"\n", (("Content-Type", TEXT_PLAIN), *headers))


NOT_FOUND = text_reply(404, "404 Not Found")
NOT_BUILT_REPLY = Reply(200, NOT_BUILT, (("Content-Type", "text/html; charset=utf-8"),))


def content_type(name: str) -> str:
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "image/svg+xml"):
        kind += "; charset=utf-8"
    return kind


def static_key(path: str) -> str | None:
    """The cache key of a request path (`/a/../b.js` -> `b.js`, `/` -> `index.html`), or
    None when it leaves the root."""
    relative = posixpath.normpath("/" + path.lstrip("/")).lstrip("/")
    if relative in ("", "."):
        return "index.html"
    return None if relative.startswith("..") else relative


def _list_files(root: Path, limit: int) -> list[tuple[str, Path]]:
    """(key, path) of the regular files under root that stay under it (runs in a thread)."""
    found: list[tuple[str, Path]] = []
    for directory, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if len(found) >= limit:
                log.warning(
                    "dashboard: more than %d files under %s; the rest is not served", limit, root
                )
                return found
            try:
                target = (Path(directory) / name).resolve()
            except (OSError, RuntimeError):
                continue
            if target.is_relative_to(root) and target.is_file():
                found.append((Path(directory, name).relative_to(root).as_posix(), target))
    return found


class HttpRoutes:
    def __init__(self, hub: RelayState) -> None:
        self.hub = hub
        configured = hub.config.dashboard_dir
        self.static_root = (Path(configured) if configured else DEFAULT_DASHBOARD).resolve()
        self.max_bytes = hub.config.dashboard_max_bytes
        self.registry: CollectorRegistry | None = None
        self.files: dict[str, Reply] = {}
        self.cached_bytes = 0

    async def load(self) -> None:
        """Fill the static cache (index.html first), off the loop; over the budget, files
        are left out with a warning. Any OSError leaves that file out."""
        root = self.static_root
        files: dict[str, Reply] = {}
        total = 0
        try:
            listing = await aiofiles.os.wrap(_list_files)(root, MAX_STATIC_FILES)
        except OSError as exc:
            log.warning("dashboard: cannot list %s: %s", root, exc)
            listing = []
        listing.sort(key=lambda item: item[0] != "index.html")
        skipped = 0
        for key, target in listing:
            budget = self.max_bytes - total
            try:
                async with aiofiles.open(target, "rb") as fh:
                    body = await fh.read(budget + 1)
            except OSError as exc:
                log.warning("dashboard: cannot read %s: %s", target, exc)
                continue
            if len(body) > budget:
                skipped += 1
                continue
            total += len(body)
            # Vite's hashed assets never change; everything else must be revalidated.
            cache = "public, max-age=31536000, immutable" if "/assets/" in "/" + key else "no-cache"
            files[key] = Reply(
                200, body, (("Content-Type", content_type(key)), ("Cache-Control", cache))
            )
        if skipped:
            log.warning(
                "dashboard: %d files left out: over dashboard_max_bytes (%d bytes)",
                skipped,
                self.max_bytes,
            )
        self.files = files
        self.cached_bytes = total

    @property
    def health(self) -> str:
        return f"ok {VERSION} {self.hub.config.build_commit or 'unknown'}"

    def respond(self, path: str) -> Reply:
        if path == "/healthz":
            # `ok <version> <commit>`: a deploy waits until the new build answers
            return text_reply(200, self.health)
        if path == "/readyz":
            reason = self.hub.not_ready_reason()
            if reason is None:
                return text_reply(200, "ready")
            return text_reply(503, f"not ready: {reason}")
        if path == "/metrics":
            body = generate_latest(self.registry) if self.registry is not None else b""
            return Reply(200, body, (("Content-Type", CONTENT_TYPE_LATEST),))
        return self._static(path)

    def _static(self, path: str) -> Reply:
        files = self.files
        if "index.html" not in files:
            if path in ("/", "/index.html"):
                return NOT_BUILT_REPLY
            return NOT_FOUND
        key = static_key(path)
        reply = files.get(key) if key is not None else None
        return reply if reply is not None else NOT_FOUND
