"""Fixtures for the JS client's integration tests: `ferry serve` children on a WAL in the
test's temp dir (a restart reuses the WAL and the port), and the Node scenarios."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.clients.js.node import NodeScript, node_binary
from tests.helpers import ServeProcess

Serve = Callable[..., ServeProcess]


def serve_env(tmp_path: Path, **env: str) -> dict[str, str]:
    return {
        "FERRY_WAL_DIR": str(tmp_path / "wal"),
        "FERRY_DB_URL": f"sqlite:///{tmp_path / 'ferry.db'}",
        "FERRY_HISTORY_SIZE": "100000",
        "FERRY_HISTORY_CHANNEL_BYTES": str(1 << 28),
        "FERRY_PUBLISH_RATE": "100000",
        "FERRY_PUBLISH_BURST": "100000",
        **env,
    }


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """serve(**env) starts `ferry serve` and waits for /healthz; serve(port=P, **env) starts
    it again on P (same WAL dir unless FERRY_WAL_DIR says otherwise)."""
    started: list[ServeProcess] = []

    def start(port: int | None = None, **env: str) -> ServeProcess:
        full = serve_env(tmp_path, **env)
        if port is not None:
            full["FERRY_PORT"] = str(port)
        server = ServeProcess(full)
        started.append(server)
        server.start(tmp_path / f"serve{len(started)}.log")
        server.wait_healthy()
        return server

    yield start
    for server in started:
        server.kill()
        print(f"--- ferry serve log ({server.log_path}) ---\n{server.output()[-3000:]}")


@pytest.fixture
async def scenario() -> AsyncIterator[Callable[..., NodeScript]]:
    """scenario(name, env) makes a NodeScript; every one is killed at teardown."""
    node_binary()
    made: list[NodeScript] = []

    def make(name: str, env: dict[str, str]) -> NodeScript:
        script = NodeScript(name, env)
        made.append(script)
        return script

    yield make
    for script in made:
        await script.kill()
