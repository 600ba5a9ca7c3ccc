"""`ferry serve` as a process: startup errors, SIGTERM -> 1001 + exit 0, second signal."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

from tests.helpers import ROOT, UNIT, Client, ServeProcess, StartRelay, http_get


async def test_sigterm_closes_clients_1001_and_exits_0(tmp_path: Path) -> None:
    server = ServeProcess({"FERRY_DURABILITY": "memory", "FERRY_REPLAYER": "false"}).start(
        tmp_path / "serve.log"
    )
    try:
        server.wait_healthy()
        clients = [await Client.connect(server.url, user=f"u{i}") for i in range(3)]
        await clients[0].sub("room")
        await clients[1].pub("room", "last words", "w")
        assert (await clients[1].expect("ack"))["id"] == "w"
        server.signal(signal.SIGTERM)
        for client in clients:
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await client.recv(UNIT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await asyncio.to_thread(server.wait) == 0
        out = server.output()
        assert "shutting down gracefully" in out and "ferry stopped" in out
    finally:
        server.kill()


def test_bad_config_is_a_clear_startup_error(tmp_path: Path) -> None:
    cases = [
        ({"FERRY_PORT": "eighty"}, "port must be int"),
        ({"FERRY_WAL_SYNC": "sometimes"}, "wal_sync"),
        ({"FERRY_TYPO_SETTING": "1"}, "unknown setting FERRY_TYPO_SETTING"),
        ({"FERRY_AUTH": "jwt"}, "needs jwt_secret"),
    ]
    for env, expected in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "core.cli", "serve"],
            env={"PATH": "/usr/bin:/bin", **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=UNIT * 4,
        )
        assert proc.returncode == 2, (env, proc.stderr)
        assert expected in proc.stderr, (env, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_unknown_key_in_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "ferry.toml"
    config.write_text("port = 9000\nmax_framebytes = 10\n")
    proc = subprocess.run(
        [sys.executable, "-m", "core.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=UNIT * 4,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and "unknown setting 'max_framebytes'" in proc.stderr


def test_http_endpoints(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>dash</title>")
    (dist / "assets" / "app-1234.js").write_text("console.log(1)")
    server = ServeProcess({"FERRY_DURABILITY": "memory", "FERRY_DASHBOARD_DIR": str(dist)}).start(
        tmp_path / "s.log"
    )
    try:
        server.wait_healthy()
        status, body = http_get(server.http + "/healthz")
        assert status == 200 and body.split()[0] == b"ok" and len(body.split()) == 3
        assert http_get(server.http + "/readyz")[0] == 200
        status, body = http_get(server.http + "/metrics")
        assert (
            status == 200
            and b"ferry_connections 0.0" in body
            and b"ferry_ack_latency_seconds_bucket" in body
        )
        assert http_get(server.http + "/") == (200, b"<!doctype html><title>dash</title>")
        assert http_get(server.http + "/assets/app-1234.js") == (200, b"console.log(1)")
        assert http_get(server.http + "/../../etc/passwd")[0] == 404
        assert http_get(server.http + "/assets/../../s.log")[0] == 404
        assert http_get(server.http + "/nope")[0] == 404
    finally:
        server.kill()


def test_root_without_dashboard_says_how_to_build(tmp_path: Path) -> None:
    server = ServeProcess(
        {"FERRY_DURABILITY": "memory", "FERRY_DASHBOARD_DIR": str(tmp_path / "none")}
    )
    server.start(tmp_path / "s.log")
    try:
        server.wait_healthy()
        status, body = http_get(server.http + "/")
        assert status == 200 and b"npm run build" in body
    finally:
        server.kill()


def test_auth_off_is_loud(tmp_path: Path) -> None:
    server = ServeProcess({"FERRY_DURABILITY": "memory"}).start(tmp_path / "s.log")
    try:
        server.wait_healthy()
        assert "AUTH IS OFF" in server.output()
    finally:
        server.kill()


def test_token_command() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.cli",
            "token",
            "--user",
            "alice",
            "--pub",
            "room.*",
            "--sub",
            "room.*",
            "--secret",
            "s" * 32,
        ],
        capture_output=True,
        text=True,
        timeout=UNIT * 4,
        cwd=ROOT,
    )
    assert proc.returncode == 0
    import jwt

    claims = jwt.decode(proc.stdout.strip(), "s" * 32, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["pub"] == ["room.*"] and claims["subs"] == ["room.*"]
    assert claims["exp"] > claims["iat"]


async def test_idle_client_that_never_pongs_is_dropped(start_relay: StartRelay) -> None:
    from picows import WSListener, ws_connect

    relay = await start_relay(idle_timeout=0.3, ping_timeout=0.3)

    class Mute(WSListener):
        pass

    # enable_auto_pong=False: this client ignores the server's pings
    transport, _ = await ws_connect(Mute, relay.url, enable_auto_pong=False)
    answering = await Client.connect(relay.url)  # websockets answers pings by itself
    await asyncio.wait_for(transport.wait_disconnected(), UNIT)
    assert len(relay.hub.connections) == 1  # only the one that answers pings is left
    await answering.send({"op": "ping"})
    await answering.expect("pong")


async def test_second_signal_forces_exit(tmp_path: Path) -> None:
    """A client that never reads keeps a graceful shutdown waiting; a second SIGTERM ends it."""
    from picows import WSListener, WSMsgType, ws_connect

    server = ServeProcess(
        {
            "FERRY_DURABILITY": "memory",
            "FERRY_SHUTDOWN_TIMEOUT": "60",
            "FERRY_MAX_OUTBOX_BYTES": str(64 * 1024 * 1024),
            "FERRY_PUBLISH_RATE": "1000000",
            "FERRY_PUBLISH_BURST": "1000000",
        }
    ).start(tmp_path / "serve.log")
    try:
        server.wait_healthy()
        transport, _ = await ws_connect(WSListener, server.url)
        transport.send(WSMsgType.TEXT, b'{"op":"sub","ch":"flood"}')
        transport.underlying_transport.pause_reading()
        publisher = await Client.connect(server.url)
        for i in range(2000):
            await publisher.pub("flood", "x" * 4000, str(i))
            if i % 100 == 99:
                for _ in range(100):
                    await publisher.expect("ack")
        server.signal(signal.SIGTERM)
        out_deadline = asyncio.get_running_loop().time() + UNIT
        while "shutting down gracefully" not in server.output():
            assert asyncio.get_running_loop().time() < out_deadline, server.output()
            await asyncio.sleep(0.02)
        assert (
            server.proc is not None and server.proc.poll() is None
        )  # still draining the stalled client
        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait) == 1
        assert "forcing exit" in server.output()
        transport.disconnect(False)
    finally:
        server.kill()
