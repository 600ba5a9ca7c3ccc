from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from core import compose
from core.server import Server
from tests.helpers import Relay, relay_config


@pytest.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Relay]]]:
    """Start in-process relays on loopback port 0; all are shut down after the test."""
    servers: list[Server] = []

    async def start(**overrides: Any) -> Relay:
        server = compose.build(relay_config(tmp_path, **overrides))
        await server.start()
        servers.append(server)
        return Relay(server)

    yield start
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def relay(start_relay: Callable[..., Awaitable[Relay]]) -> Relay:
    return await start_relay()
