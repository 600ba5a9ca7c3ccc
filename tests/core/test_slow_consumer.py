"""Slow-consumer policy: a client that stops reading is closed with 4408, a healthy
subscriber on the same channel keeps receiving, and the server's memory stays bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tests.helpers import UNIT, Client, ServeProcess, http_get, wait_for

PAYLOAD = "x" * 1000
MESSAGES = 6000  # ~6 MB through the channel


class StalledReader(WSListener):
    """Subscribes, then stops reading from its socket; records the close code."""

    def __init__(self) -> None:
        self.close_code: WSCloseCode | None = None
        self.frames = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.disconnect()
        else:
            self.frames += 1


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _metric(http: str, name: str) -> float:
    status, body = http_get(http + "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_stalled_reader_is_closed_4408(tmp_path: Path) -> None:
    server = ServeProcess(
        {
            "FERRY_DURABILITY": "memory",
            "FERRY_MAX_OUTBOX_BYTES": str(256 * 1024),
            "FERRY_REPLAYER": "false",
            "FERRY_PUBLISH_RATE": "100000",
            "FERRY_PUBLISH_BURST": "100000",
        }
    )
    server.start(tmp_path / "serve.log")
    try:
        server.wait_healthy()
        assert server.proc is not None
        healthy = await Client.connect(server.url, user="healthy")
        await healthy.sub("busy")
        transport, stalled = await ws_connect(StalledReader, server.url + "?user=stalled")
        assert isinstance(stalled, StalledReader)
        transport.send(WSMsgType.TEXT, b'{"op":"sub","ch":"busy"}')
        await wait_for(lambda: stalled.frames >= 2, what="stalled reader subscribed")
        transport.underlying_transport.pause_reading()  # stop reading: the socket fills up
        rss_before = _rss_kb(server.proc.pid)

        publisher = await Client.connect(server.url, user="pub")
        received = 0

        async def consume() -> None:
            nonlocal received
            while received < MESSAGES:
                frame = await healthy.recv(UNIT * 2)
                if frame["op"] == "msg":
                    assert frame["seq"] == received + 1
                    received += 1

        consumer = asyncio.create_task(consume())
        for i in range(1, MESSAGES + 1):
            await publisher.pub("busy", PAYLOAD)
            if i % 100 == 0:
                for _ in range(100):
                    await publisher.expect("ack")

                # A healthy reader keeps up; pace the publisher to it (not to the stalled one).
                def kept_up(upto: int = i - 100) -> bool:
                    return received >= upto

                await wait_for(kept_up, what="healthy subscriber to keep up")
        await asyncio.wait_for(consumer, UNIT * 6)
        assert received == MESSAGES  # the healthy subscriber kept receiving everything

        assert _metric(server.http, "ferry_slow_consumer_closes_total") == 1
        rss_growth_mb = (_rss_kb(server.proc.pid) - rss_before) / 1024
        assert rss_growth_mb < 64, f"server RSS grew {rss_growth_mb:.0f} MB"

        # The stalled client, once it reads again, finds the 4408 close after what was buffered.
        transport.underlying_transport.resume_reading()
        await asyncio.wait_for(transport.wait_disconnected(), UNIT * 2)
        assert stalled.close_code is not None and stalled.close_code.value == 4408
        await publisher.close()
        await healthy.close()
    finally:
        server.kill()
