"""What the client tests share: `ferry serve` processes on a temp WAL dir (restartable on
the same port and WAL), client settings for fast reconnects, JWTs, waiting on conditions."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt as pyjwt
from ferry_client import Client

from tests.helpers import UNIT, ServeProcess

SECRET = "s" * 40  # FERRY_JWT_SECRET (>= 32 bytes)
ADMIN = "a" * 40  # FERRY_ADMIN_TOKEN

# Reconnect fast (the tests restart servers) but keep the silence deadline above a noisy
# machine's pauses: only the half-open test shortens it.
FAST: dict[str, Any] = {
    "backoff_base": 0.05,
    "backoff_cap": 0.5,
    "restart_spread": 0.5,
    "ping_interval": 0.5,
    "silence_timeout": UNIT,
    "connect_timeout": UNIT,
    "stable_after": 0.5,
}


def client(url: str, **kw: Any) -> Client:
    return Client(url, **{**FAST, **kw})


def serve_env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        "FERRY_WAL_DIR": str(tmp / "wal"),
        "FERRY_DB_URL": f"sqlite:///{tmp / 'ferry.db'}",
        "FERRY_REPLAYER": "false",
        "FERRY_STATS_INTERVAL": "0.2",
        "FERRY_LOG_LEVEL": "warning",
        "FERRY_SHUTDOWN_TIMEOUT": "5",
        **extra,
    }


class Server:
    """A `ferry serve` that can be killed and started again on the same port and WAL."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.proc: ServeProcess | None = None
        self.port: int | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        assert self.proc is not None
        return self.proc.url

    async def start(self) -> Server:
        env = dict(self.env)
        if self.port is not None:
            env["FERRY_PORT"] = str(self.port)
        self.starts += 1
        self.proc = ServeProcess(env).start(self.tmp / f"serve-{self.starts}.log")
        self.port = self.proc.port
        await asyncio.to_thread(self.proc.wait_healthy)
        return self

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)

    async def stop(self) -> int:
        """SIGTERM: a graceful shutdown (clients get 1001). Returns the exit status."""
        assert self.proc is not None
        self.proc.signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait)

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def output(self) -> str:
        return self.proc.output() if self.proc is not None else ""


def token(user: str, ttl: float = 3600, pub: str = "*", sub: str = "*", **claims: Any) -> str:
    now = time.time()
    body = {"sub": user, "pub": [pub], "subs": [sub, f"@{user}"], "exp": int(now + ttl), **claims}
    return pyjwt.encode(body, SECRET, algorithm="HS256")


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = UNIT * 2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(0.01)
