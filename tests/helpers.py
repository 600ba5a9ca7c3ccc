"""Shared test helpers: one time unit, a relay started on loopback port 0, clients.

Every wait in the suite is a condition with a deadline derived from `UNIT`
(FERRYTEST_UNIT seconds, default 5), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol, TypedDict, Unpack

import msgspec
import pytest
import websockets
from websockets.typing import Subprotocol

from core.config import Config
from core.guard import Guard
from core.relay_state import RelayState
from core.server import Server

UNIT = float(os.environ.get("FERRYTEST_UNIT", "5"))
ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """A prerequisite is missing: fail under CI (it must be there), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


class ConfigOverrides(TypedDict, total=False):
    """Keyword overrides of a `Config`: its fields, each optional (test_settings.py checks
    that these are exactly Config's fields, with the same types)."""

    host: str
    port: int
    allowed_origins: tuple[str, ...]
    trusted_proxies: tuple[str, ...]
    handshake_timeout: float
    auth_timeout: float
    max_handshakes: int
    max_handshakes_per_ip: int
    api_host: str
    api_port: int
    api_keys: tuple[str, ...]
    api_max_body_bytes: int
    api_idle_timeout: float
    api_max_connections: int
    api_rate: float
    durability: Literal["wal", "memory"]
    wal_dir: str
    wal_sync: Literal["fsync", "write"]
    wal_segment_bytes: int
    wal_preallocate: Literal["fallocate", "zero", "off"]
    wal_max_batch_delay_ms: float
    history_size: int
    history_channel_bytes: int
    history_total_bytes: int
    db_url: str
    replayer: bool
    node_id: str
    dedupe_window_s: float
    dedupe_max_entries: int
    auth: Literal["none", "jwt"]
    jwt_secret: str
    admin_token: str
    jwt_max_ttl: float
    max_frame_bytes: int
    max_data_bytes: int
    max_outbox_bytes: int
    max_connections: int
    max_connections_per_user: int
    max_connections_per_ip: int
    max_subscriptions: int
    max_channels: int
    max_channels_per_user: int
    max_data_depth: int
    publish_rate: float
    publish_burst: int
    rate_abuse_limit: int
    idle_timeout: float
    ping_timeout: float
    stats_interval: float
    tail_rate: int
    log_level: Literal["debug", "info", "warning", "error"]
    log_format: Literal["text", "json"]
    dashboard_dir: str
    dashboard_max_bytes: int
    webhook_url: str
    alert_backlog_records: int
    alert_fsync_ms: float
    hooks_url: str
    hooks_secret: str
    hooks_hold_s: float
    hooks_queue_size: int
    hooks_batch_max: int
    hooks_retry_s: float
    hooks_timeout_s: float
    cluster_nodes: tuple[str, ...]
    nats_url: str
    cluster_id: str
    workers: int
    reuse_port: bool
    shutdown_timeout: float
    build_commit: str


def relay_config(tmp_path: Path | None = None, **overrides: Unpack[ConfigOverrides]) -> Config:
    base = Config(
        host="127.0.0.1",
        port=0,
        durability="memory",
        wal_dir=str(tmp_path / "wal") if tmp_path else "./data/wal",
        db_url=f"sqlite:///{tmp_path / 'ferry.db'}" if tmp_path else "sqlite:///./data/ferry.db",
        replayer=False,
        node_id="test-node",
        stats_interval=0.2,
        log_level="warning",
    )
    return replace(base, **overrides)


@dataclass
class Relay:
    server: Server

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hub(self) -> RelayState:
        return self.server.relay

    @property
    def guard(self) -> Guard:
        """The started server's connection guard."""
        assert self.server.guard is not None, "the relay is not started"
        return self.server.guard


class StartServe(Protocol):
    """A `serve` fixture: starts a `ferry serve` child with these FERRY_* variables (over
    the fixture's own), waits until it is healthy; all are killed after the test."""

    def __call__(self, **env: str) -> ServeProcess: ...


class StartRelay(Protocol):
    """The `start_relay` fixture: starts an in-process relay on loopback port 0 with these
    settings (over `relay_config`'s); all are shut down after the test."""

    def __call__(self, **overrides: Unpack[ConfigOverrides]) -> Awaitable[Relay]: ...


async def wait_for(
    predicate: Callable[[], bool], timeout: float = UNIT, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(0.01)


def wait_for_sync(
    predicate: Callable[[], bool], timeout: float = UNIT, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(0.02)


class Client:
    """A websockets-library client speaking protocol v1 (JSON or msgpack)."""

    def __init__(self, ws: websockets.ClientConnection, msgpack: bool = False) -> None:
        self.ws = ws
        self.msgpack = msgpack
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        msgpack: bool = False,
        token: str | None = None,
        user: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Client:
        query = []
        if token:
            query.append(f"token={token}")
        if user:
            query.append(f"user={user}")
        full = url + ("?" + "&".join(query) if query else "")
        protocol = "ferry.v1.msgpack" if msgpack else "ferry.v1.json"
        ws = await websockets.connect(
            full,
            subprotocols=[Subprotocol(protocol)],
            additional_headers=headers,
            max_size=None,
            open_timeout=UNIT,
        )
        client = cls(ws, msgpack)
        client.welcome = await client.recv()
        assert client.welcome["op"] == "welcome", client.welcome
        return client

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(msgspec.msgpack.encode(frame) if self.msgpack else json.dumps(frame))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = UNIT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame: dict[str, Any] = (
            msgspec.msgpack.decode(raw) if isinstance(raw, bytes) else json.loads(raw)
        )
        return frame

    async def recv_raw(self, timeout: float = UNIT) -> str | bytes:
        return await asyncio.wait_for(self.ws.recv(), timeout)

    async def expect(self, op: str, timeout: float = UNIT) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame["op"] == op, f"expected {op}, got {frame}"
        return frame

    async def sub(self, ch: str, **extra: Any) -> dict[str, Any]:
        await self.send({"op": "sub", "ch": ch, **extra})
        return await self.expect("subscribed")

    async def pub(self, ch: str, data: Any, msg_id: str | None = None) -> None:
        frame: dict[str, Any] = {"op": "pub", "ch": ch, "data": data}
        if msg_id is not None:
            frame["id"] = msg_id
        await self.send(frame)

    async def assert_silent(self, within: float = 0.2) -> None:
        """Nothing arrives for `within` seconds (used to show other clients are unaffected)."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")

    async def close(self) -> None:
        await self.ws.close()


async def gather_bounded(*aws: Awaitable[Any], timeout: float = UNIT * 4) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*aws), timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = UNIT) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ServeProcess:
    """`ferry serve` in a child process (for signals, crashes and fault injection)."""

    def __init__(
        self, env: dict[str, str], args: list[str] | None = None, cwd: Path | None = None
    ) -> None:
        self.port = int(env.get("FERRY_PORT") or free_port())
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        full_env.update(
            {
                "FERRY_HOST": "127.0.0.1",
                "FERRY_NODE_ID": "test-node",
                **env,
                "FERRY_PORT": str(self.port),
            }
        )
        self.env = full_env
        self.args = args or []
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, log_path: Path) -> ServeProcess:
        self.log_path = log_path
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "serve", *self.args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.cwd or ROOT,
        )
        out.close()
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = UNIT * 4) -> None:
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ferry serve exited with {self.proc.returncode}:\n{self.output()}"
                )
            try:
                return http_get(self.http + "/healthz", timeout=1)[0] == 200
            except OSError:
                return False

        wait_for_sync(healthy, timeout, "ferry serve to answer /healthz")

    def output(self) -> str:
        return (
            self.log_path.read_text(errors="replace")
            if self.log_path and self.log_path.exists()
            else ""
        )

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = UNIT * 4) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(UNIT)


class HttpReceiver:
    """A one-request-per-connection HTTP/1.1 receiver on 127.0.0.1:0 (webhooks, chat
    notifiers): it reads each request and hands it to `answer`, which returns the bytes
    to send back, or None to hang (hold the connection, never answer, until `close`)."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._release = asyncio.Event()

    async def start(self, tls: Any = None) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> bytes | None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            reply = self.answer(method, target, headers, body)
            if reply is None:
                await self._release.wait()
                return
            writer.write(reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self._release.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
