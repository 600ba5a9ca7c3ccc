"""The server under test: `ferry serve`, a peer relay, or a server that is already running.

A started server gets a free loopback port and its own temp directory (WAL, database,
output log), and is stopped with SIGTERM (then SIGKILL) when the run ends. Started
servers inherit the raised RLIMIT_NOFILE of the bench process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procfs import raise_nofile_limit

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"

FERRY = "ferry"
NODE_WS = "node-ws"
WEBSOCKETS = "websockets"
UWS = "uws"
EXTERNAL = "external"
TARGETS = (FERRY, NODE_WS, UWS, WEBSOCKETS)

START_TIMEOUT_S = 30.0

# What the bench changes in ferry's defaults, and why: the load generator publishes far
# above the per-connection publish rate limit (1000/s) that protects a production relay,
# and opens thousands of connections as one (anonymous) user from one address, which the
# per-user and per-address connection caps would refuse.
FERRY_BENCH_ENV = {
    "FERRY_PUBLISH_RATE": "1000000000",
    "FERRY_PUBLISH_BURST": "1000000000",
    "FERRY_MAX_CONNECTIONS_PER_USER": "0",
    "FERRY_MAX_CONNECTIONS_PER_IP": "0",
    "FERRY_LOG_LEVEL": "warning",
    # Every load-generator connection comes from 127.0.0.1, hundreds of them at once.
    "FERRY_MAX_HANDSHAKES": "100000",
    "FERRY_MAX_HANDSHAKES_PER_IP": "100000",
}


class TargetError(Exception):
    """The server under test could not be started (or is not installed)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wal_available() -> bool:
    """True once the WAL package's `wal.log.WalLog` (what `FERRY_DURABILITY=wal` loads) exists."""
    try:
        return importlib.util.find_spec("wal.log") is not None
    except ImportError:
        return False


@dataclass
class Target:
    name: str
    url: str
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    workdir: str | None = None
    log_path: str | None = None
    settings: dict[str, str] = field(default_factory=dict)

    def output(self, tail: int = 4000) -> str:
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-tail:]
        return ""

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TargetError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def _tcp_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _spawn(
    name: str, cmd: list[str], env: dict[str, str], port: int, ready: str, **settings: str
) -> Target:
    raise_nofile_limit()
    workdir = tempfile.mkdtemp(prefix=f"ferry-bench-{name}-")
    log_path = os.path.join(workdir, "server.log")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    target = Target(
        name,
        f"ws://127.0.0.1:{port}/ws",
        proc.pid,
        proc,
        workdir,
        log_path,
        dict(settings),
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            target.check()
        except TargetError:
            target.stop()
            raise
        if _http_ok(ready) if ready.startswith("http") else _tcp_ok(port):
            return target
        if time.monotonic() > deadline:
            target.stop()
            raise TargetError(f"{name} did not come up within {START_TIMEOUT_S:.0f}s")
        time.sleep(0.05)


def start_ferry(
    log: str,
    wal_sync: str = "fsync",
    db_url: str | None = None,
    extra: dict[str, str] | None = None,
    tracemalloc: bool = False,
    picows: dict[str, Any] | None = None,
) -> Target:
    """`ferry serve` on a free port; WAL and SQLite database in a temp dir.

    `tracemalloc` and `picows` (picows protocol arguments forced onto ferry's server)
    run it through bench/serve_wrapper.py; snapshots land in the target's temp dir.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(FERRY_BENCH_ENV)
    env.update({"FERRY_HOST": "127.0.0.1", "FERRY_PORT": str(port), "FERRY_DURABILITY": log})
    # A node id per run: with a database shared between runs (--db), a second run under
    # the same node would find its checkpoint past every LSN and replay nothing.
    env["FERRY_NODE_ID"] = f"bench-{os.getpid()}-{port}"
    if log == "wal":
        env["FERRY_WAL_SYNC"] = wal_sync
        env["FERRY_WAL_DIR"] = "./data/wal"  # relative to the temp working directory
        env["FERRY_DB_URL"] = db_url or "sqlite:///./data/ferry.db"
    env.update(extra or {})
    settings = {k: v for k, v in env.items() if k.startswith("FERRY_")}
    cmd = [sys.executable, "-m", "core.cli", "serve"]
    if tracemalloc or picows:
        from bench import serve_wrapper

        cmd = [sys.executable, "-m", "bench.serve_wrapper"]
        if tracemalloc:
            env[serve_wrapper.TRACEMALLOC_ENV] = "."  # the server's cwd: its temp dir
        if picows:
            env[serve_wrapper.PICOWS_ENV] = json.dumps(picows)
            settings["picows_server"] = json.dumps(picows)
    return _spawn(FERRY, cmd, env, port, f"http://127.0.0.1:{port}/healthz", **settings)


def start_node_ws() -> Target:
    node = shutil.which("node")
    if node is None:
        raise TargetError("node is not installed")
    if not (PEERS / "node_modules" / "ws").is_dir():
        raise TargetError("bench/peers/node_modules is missing: run scripts/bootstrap.sh node")
    port = free_port()
    cmd = [node, str(PEERS / "ws_relay.mjs"), "--host", "127.0.0.1", "--port", str(port)]
    return _spawn(NODE_WS, cmd, dict(os.environ), port, "tcp")


def start_uws() -> Target:
    """uWebSockets.js (the npm package `uwebsockets` 3.0.6: see bench/peers/uws_relay.mjs)."""
    node = shutil.which("node")
    if node is None:
        raise TargetError("node is not installed")
    if not (PEERS / "node_modules" / "uwebsockets").is_dir():
        raise TargetError("bench/peers/node_modules is missing: run scripts/bootstrap.sh node")
    port = free_port()
    cmd = [node, str(PEERS / "uws_relay.mjs"), "--host", "127.0.0.1", "--port", str(port)]
    return _spawn(UWS, cmd, dict(os.environ), port, "tcp")


def start_websockets() -> Target:
    port = free_port()
    cmd = [
        sys.executable,
        str(PEERS / "websockets_relay.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return _spawn(WEBSOCKETS, cmd, dict(os.environ), port, "tcp")


def start(
    name: str,
    *,
    log: str = "memory",
    wal_sync: str = "fsync",
    db_url: str | None = None,
    extra: dict[str, str] | None = None,
    tracemalloc: bool = False,
    picows: dict[str, Any] | None = None,
) -> Target:
    if name == FERRY:
        return start_ferry(log, wal_sync, db_url, extra, tracemalloc, picows)
    if name == NODE_WS:
        return start_node_ws()
    if name == WEBSOCKETS:
        return start_websockets()
    if name == UWS:
        return start_uws()
    raise TargetError(f"unknown target {name!r} (one of {', '.join(TARGETS)})")


def attach(url: str, pid: int | None) -> Target:
    """A server somebody else runs; without `pid` there are no server CPU/RSS figures."""
    return Target(EXTERNAL, url, pid)
