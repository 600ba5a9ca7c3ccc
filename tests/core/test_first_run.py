"""The first minutes of a new user: `ferry serve` on its defaults prints a dashboard URL
that works, the token rides in the URL fragment and subprotocol, never in a URL a server
logs; a configured token is never printed."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import websockets
from websockets.typing import Subprotocol

from tests.helpers import Client, ServeProcess, http_get, wait_for_sync


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "FERRY_WAL_DIR": str(tmp_path / "wal"),
        "FERRY_DB_URL": f"sqlite:///{tmp_path / 'ferry.db'}",
        "FERRY_REPLAYER": "false",
        **extra,
    }


async def test_a_made_admin_token_is_printed_as_a_dashboard_url(tmp_path: Path) -> None:
    server = ServeProcess(_env(tmp_path)).start(tmp_path / "serve.log")
    try:
        server.wait_healthy()
        wait_for_sync(lambda: "#token=" in server.output(), what="the dashboard URL")
        match = re.search(
            r"dashboard: http://127\.0\.0\.1:(\d+)/#token=([A-Za-z0-9_-]+)", server.output()
        )
        assert match and int(match.group(1)) == server.port
        token = match.group(2)
        assert len(token) >= 32
        # It is the admin token, presented the dashboard's way (the subprotocol list).
        encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
        async with websockets.connect(
            server.url,
            subprotocols=[Subprotocol("ferry.v1.json"), Subprotocol(f"ferry.token.{encoded}")],
        ) as ws:
            assert ws.subprotocol == "ferry.v1.json"  # the token is never echoed back
            welcome = await ws.recv()
            assert '"user":"admin"' in str(welcome)
        admin = await Client.connect(server.url, token=token)
        assert (await admin.sub("$sys.stats"))["ch"] == "$sys.stats"
        await admin.close()
    finally:
        server.kill()


def test_a_configured_admin_token_is_never_printed(tmp_path: Path) -> None:
    secret = "configured-admin-token-0123456789abcdef"
    server = ServeProcess(_env(tmp_path, FERRY_ADMIN_TOKEN=secret)).start(tmp_path / "s.log")
    try:
        server.wait_healthy()
    finally:
        server.kill()
    assert secret not in server.output() and "#token=" not in server.output()


def test_healthz_names_the_running_build(tmp_path: Path) -> None:
    server = ServeProcess(_env(tmp_path, FERRY_BUILD_COMMIT="0123abc")).start(tmp_path / "h.log")
    try:
        server.wait_healthy()
        status, body = http_get(server.http + "/healthz")
    finally:
        server.kill()
    assert status == 200
    ok, version, commit = body.decode().split()
    assert (ok, commit) == ("ok", "0123abc") and version[0].isdigit()
