"""Plain HTTP on the relay's port: /healthz, /readyz, /metrics and the dashboard at /.

picows hands every request to the listener factory before the WebSocket upgrade; a
non-101 response is sent as is and the connection closed, which is all these need.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING

from picows import WSUpgradeResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from core.hub import Hub

DEFAULT_DASHBOARD = Path(__file__).resolve().parent.parent / "dashboard" / "dist"

NOT_BUILT = b"""<!doctype html><meta charset="utf-8"><title>ferry</title>
<h1>ferry is running</h1>
<p>The dashboard is not built. Build it with <code>make dashboard</code>
(or <code>cd dashboard &amp;&amp; npm ci &amp;&amp; npm run build</code>) and reload.</p>
<p>Relay endpoint: <code>/ws</code> &middot; <a href="/metrics">/metrics</a> &middot;
<a href="/healthz">/healthz</a> &middot; <a href="/readyz">/readyz</a></p>
"""


class HttpRoutes:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        configured = hub.config.dashboard_dir
        self.static_root = (Path(configured) if configured else DEFAULT_DASHBOARD).resolve()
        self.registry: CollectorRegistry | None = None

    def respond(self, path: str) -> WSUpgradeResponse:
        if path == "/healthz":
            return WSUpgradeResponse.create_ok_response(b"ok\n")
        if path == "/readyz":
            reason = self.hub.not_ready_reason()
            if reason is None:
                return WSUpgradeResponse.create_ok_response(b"ready\n")
            return WSUpgradeResponse.create_error_response(503, f"not ready: {reason}\n".encode())
        if path == "/metrics":
            body = generate_latest(self.registry) if self.registry is not None else b""
            return WSUpgradeResponse.create_ok_response(body, {"Content-Type": CONTENT_TYPE_LATEST})
        return self._static(path)

    def _static(self, path: str) -> WSUpgradeResponse:
        root = self.static_root
        if not (root / "index.html").is_file():
            if path in ("/", "/index.html"):
                return WSUpgradeResponse.create_ok_response(
                    NOT_BUILT, {"Content-Type": "text/html; charset=utf-8"}
                )
            return _not_found()
        relative = path.lstrip("/") or "index.html"
        try:
            target = (root / relative).resolve()
        except (OSError, ValueError):
            return _not_found()
        if not target.is_relative_to(root) or not target.is_file():
            return _not_found()
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in (
            "application/javascript",
            "image/svg+xml",
        ):
            content_type += "; charset=utf-8"
        # Vite's hashed assets never change; index.html must be revalidated.
        cache = "public, max-age=31536000, immutable" if "/assets/" in path else "no-cache"
        return WSUpgradeResponse.create_ok_response(
            target.read_bytes(), {"Content-Type": content_type, "Cache-Control": cache}
        )


def _not_found() -> WSUpgradeResponse:
    return WSUpgradeResponse.create_error_response(404, b"404 Not Found\n")
