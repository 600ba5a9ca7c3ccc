"""The `dashboard` image's httpd configuration, run for real (Debian's httpd 2.4).

ops/httpd/ferry-dashboard.conf is included into a minimal server set up like the official
image's (document root, modules); the relay behind it is a stand-in WebSocket server on
loopback. Checked: static files with their cache headers, /healthz and a WebSocket on /ws
forwarded to the relay, /metrics not forwarded.
"""

from __future__ import annotations

import asyncio
import http
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tests.helpers import ROOT, UNIT, unavailable
from tests.ops.support import explain, run

APACHE = Path("/usr/sbin/apache2")
MODULES = Path("/usr/lib/apache2/modules")
IMAGE_HTDOCS = "/usr/local/apache2/htdocs"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def relay() -> AsyncIterator[int]:
    """Stand-in for ferry: /healthz answers 200, /ws echoes, anything else is 404."""

    def http_only(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if request.path != "/ws":
            return connection.respond(http.HTTPStatus.NOT_FOUND, "no\n")
        return None

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            assert isinstance(message, str), message  # the test sends text
            await connection.send(f"echo {message}")

    async with serve(echo, "127.0.0.1", 0, process_request=http_only) as server:
        yield next(iter(server.sockets)).getsockname()[1]


@pytest.fixture
def httpd(tmp_path: Path, relay: int) -> Iterator[int]:
    if not APACHE.exists():
        message = f"{APACHE} missing: run scripts/bootstrap.sh ops"
        unavailable(message)
    root = tmp_path / "httpd"
    htdocs = root / "htdocs"
    (htdocs / "assets").mkdir(parents=True)
    (root / "logs").mkdir()
    (htdocs / "index.html").write_text("<!doctype html><title>ferry dashboard</title>")
    (htdocs / "assets" / "index-3f2a.js").write_text("console.log('ferry')")
    (root / "modules").symlink_to(MODULES)
    port = _free_port()
    included = (ROOT / "ops/httpd/ferry-dashboard.conf").read_text()
    assert IMAGE_HTDOCS in included
    (root / "ferry-dashboard.conf").write_text(included.replace(IMAGE_HTDOCS, str(htdocs)))
    # What the official image's httpd.conf provides that the include relies on.
    (root / "httpd.conf").write_text(
        f'ServerRoot "{root}"\n'
        f"Listen 127.0.0.1:{port}\n"
        "LoadModule mpm_event_module modules/mod_mpm_event.so\n"
        "LoadModule authz_core_module modules/mod_authz_core.so\n"
        "LoadModule mime_module modules/mod_mime.so\n"
        "LoadModule dir_module modules/mod_dir.so\n"
        f"PidFile {root}/logs/httpd.pid\n"
        f"ErrorLog {root}/logs/error.log\n"
        f'DocumentRoot "{htdocs}"\n'
        "DirectoryIndex index.html\n"
        "TypesConfig /etc/mime.types\n"
        f"Include {root}/ferry-dashboard.conf\n"
    )
    env = {**os.environ, "FERRY_UPSTREAM": f"http://127.0.0.1:{relay}"}
    check = run([APACHE, "-t", "-f", root / "httpd.conf"], env=env)
    assert check.returncode == 0, explain(check)
    proc = subprocess.Popen(
        [str(APACHE), "-DFOREGROUND", "-f", str(root / "httpd.conf")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=2 * UNIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=UNIT)


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=UNIT) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def _wait_up(port: int) -> None:
    for _ in range(int(4 * UNIT / 0.05)):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    pytest.fail(f"httpd did not listen on {port}")


async def test_serves_the_dashboard_and_forwards_the_relay(httpd: int) -> None:
    await _wait_up(httpd)

    status, headers, body = await asyncio.to_thread(_get, httpd, "/")
    assert status == 200 and b"ferry dashboard" in body
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"

    status, headers, _ = await asyncio.to_thread(_get, httpd, "/assets/index-3f2a.js")
    assert status == 200
    assert "immutable" in headers["Cache-Control"]

    status, _, body = await asyncio.to_thread(_get, httpd, "/healthz")
    assert (status, body) == (200, b"ok\n")  # from the relay, through httpd

    status, _, _ = await asyncio.to_thread(_get, httpd, "/metrics")
    assert status == 404  # not forwarded: Prometheus text stays private

    async with connect(f"ws://127.0.0.1:{httpd}/ws", open_timeout=UNIT) as ws:
        for i in range(3):
            await ws.send(f"ping {i}")
            assert await asyncio.wait_for(ws.recv(), UNIT) == f"echo ping {i}"
