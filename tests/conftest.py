from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Unpack

import pytest

from core import compose
from core.server import Server
from tests.helpers import ConfigOverrides, Relay, StartRelay, relay_config


@pytest.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[StartRelay]:
    """Start in-process relays on loopback port 0; all are shut down after the test."""
    servers: list[Server] = []

    async def start(**overrides: Unpack[ConfigOverrides]) -> Relay:
        server = compose.build(relay_config(tmp_path, **overrides))
        await server.start()
        servers.append(server)
        return Relay(server)

    yield start
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def relay(start_relay: StartRelay) -> Relay:
    return await start_relay()
