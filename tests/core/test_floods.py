"""Memory under floods, against a real `ferry serve` (WAL on, replayer off): one client
floods, the server's RSS stays under a stated bound while it does and afterwards, and
another client is served all along."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from tests.core.adapter_raw import OP_TEXT, RawWS
from tests.helpers import UNIT, Client, ServeProcess, StartServe, http_get, wait_for

MIB = 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[StartServe]:
    servers: list[ServeProcess] = []

    def start(**env: str) -> ServeProcess:
        server = ServeProcess(
            {
                "FERRY_WAL_DIR": str(tmp_path / "wal"),
                "FERRY_DB_URL": f"sqlite:///{tmp_path / 'ferry.db'}",
                "FERRY_REPLAYER": "false",
                "FERRY_PUBLISH_RATE": "1000000",
                "FERRY_PUBLISH_BURST": "1000000",
                **env,
            }
        ).start(tmp_path / f"serve-{len(servers)}.log")
        servers.append(server)
        server.wait_healthy()
        return server

    yield start
    for server in servers:
        server.kill()


async def _bystander_works(server: ServeProcess) -> None:
    client = await Client.connect(server.url, user="bystander")
    await client.sub("calm")
    await client.pub("calm", {"ok": True}, msg_id="calm")
    frames = [await client.recv(), await client.recv()]
    assert {f["op"] for f in frames} == {"ack", "msg"}, frames
    await client.close()
    status, _ = await asyncio.to_thread(http_get, server.http + "/healthz", UNIT)
    assert status == 200


def metric(server: ServeProcess, name: str) -> float:
    _, body = http_get(server.http + "/metrics", UNIT)
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def wait_for_metric(server: ServeProcess, name: str, at_least: float) -> None:
    await wait_for(
        lambda: metric(server, name) >= at_least, UNIT * 4, f"{name} to reach {at_least:g}"
    )


async def _publish_many(url: str, frames: list[bytes], window: int = 500) -> int:
    """Send `frames` (pubs with ids) keeping `window` unanswered; returns acks received."""
    acks = 0
    async with websockets.connect(url + "?user=flooder", max_size=None) as ws:
        await ws.recv()
        sent = 0
        while acks < len(frames):
            while sent < len(frames) and sent - acks < window:
                await ws.send(frames[sent], text=True)
                sent += 1
            frame = json.loads(await asyncio.wait_for(ws.recv(), UNIT * 2))
            if frame["op"] in ("ack", "error"):
                acks += 1
    return acks


async def test_channel_flood_stays_bounded(serve: StartServe) -> None:
    """120,000 distinct 200-character channels from one user: the node keeps at most
    `max_channels` (idle ones forgotten first); RSS grows by less than 150 MiB."""
    server = serve(FERRY_MAX_CHANNELS="20000", FERRY_MAX_CHANNELS_PER_USER="20000")
    assert server.proc is not None
    base = rss(server.proc.pid)
    pad = "c" * 190
    frames = [
        b'{"op":"pub","ch":"%s.%06d","data":1,"id":%d}' % (pad.encode(), i, i)
        for i in range(120_000)
    ]
    peak = base
    for start in range(0, len(frames), 20_000):
        assert await _publish_many(server.url, frames[start : start + 20_000]) == 20_000
        peak = max(peak, rss(server.proc.pid))
        await _bystander_works(server)
    assert metric(server, "ferry_channels") <= 20_000 + 10
    assert metric(server, "ferry_channels_forgotten_total") >= 100_000
    assert peak - base < 150 * MIB, f"RSS grew {(peak - base) / MIB:.0f} MiB"


async def test_history_flood_stays_within_the_history_bound(serve: StartServe) -> None:
    """60 KB messages into 400 channels (24 MB published twice over): the rings hold at
    most FERRY_HISTORY_TOTAL_BYTES (32 MiB); RSS grows by less than that plus 60 MiB."""
    server = serve(FERRY_HISTORY_TOTAL_BYTES=str(32 * MIB), FERRY_MAX_FRAME_BYTES="65536")
    assert server.proc is not None
    base = rss(server.proc.pid)
    data = json.dumps("h" * 60_000).encode()
    frames = [
        b'{"op":"pub","ch":"big.%d","data":%s,"id":%d}' % (i % 400, data, i) for i in range(800)
    ]
    await _publish_many(server.url, frames, window=50)
    grown = rss(server.proc.pid) - base
    await _bystander_works(server)
    assert grown < 32 * MIB + 60 * MIB, f"RSS grew {grown / MIB:.0f} MiB"
    reader = await Client.connect(server.url)
    first = await reader.sub("big.0", since=0)
    assert first["recovered"] is False  # its oldest messages went first
    await reader.close()


async def test_replay_to_clients_that_never_read_stays_bounded(serve: StartServe) -> None:
    """300 connections each `sub` with since=0 to a 3 MB history and never read: each pins
    about one replay page (64 KiB) plus the transport's buffer, not its whole history;
    RSS grows by less than 120 MiB (it was ~1 MiB per connection)."""
    server = serve(
        FERRY_MAX_OUTBOX_BYTES=str(4 * MIB),
        FERRY_HISTORY_SIZE="5000",
        FERRY_HISTORY_CHANNEL_BYTES=str(16 * MIB),
    )
    assert server.proc is not None
    data = json.dumps("r" * 1000).encode()
    await _publish_many(
        server.url, [b'{"op":"pub","ch":"hist","data":%s,"id":%d}' % (data, i) for i in range(3000)]
    )
    base = rss(server.proc.pid)
    silent = []
    for _ in range(300):
        raw = await RawWS.connect(server.port, rcvbuf=4096)
        await raw.send(OP_TEXT, b'{"op":"sub","ch":"hist","since":0}')
        silent.append(raw)
    # Every reader has had its first replay page handed to its socket.
    await wait_for_metric(server, "ferry_bytes_out_total", 300 * 64 * 1024)
    grown = rss(server.proc.pid) - base
    await _bystander_works(server)
    for raw in silent:
        raw.writer.transport.abort()
    assert grown < 120 * MIB, f"RSS grew {grown / MIB:.0f} MiB for 300 silent readers"
