"""Steady publish load for durability tests, recording exactly what was acked."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import websockets

from tests.helpers import UNIT


@dataclass
class Acked:
    """(channel, seq) -> the exact JSON text of `data` that was acked."""

    messages: dict[tuple[str, int], bytes] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def count(self) -> int:
        return len(self.messages)


async def publisher(
    url: str,
    index: int,
    acked: Acked,
    stop: asyncio.Event,
    window: int = 16,
    pad: int = 64,
    rate: float = 0.0,
) -> None:
    """Publish to `load.<index>` until `stop` (or the server goes away), `window` in flight."""
    channel = f"load.{index}"
    try:
        async with websockets.connect(
            f"{url}?user=p{index}", open_timeout=UNIT, max_size=None
        ) as ws:
            await ws.recv()  # welcome
            pending: dict[str, bytes] = {}
            n = 0
            while not stop.is_set():
                while len(pending) < window and not stop.is_set():
                    n += 1
                    data = json.dumps(
                        {"p": index, "n": n, "pad": "é" * pad}, ensure_ascii=False
                    ).encode()
                    msg_id = f"{index}-{n}"
                    pending[msg_id] = data
                    await ws.send(
                        b'{"op":"pub","ch":"%s","data":%s,"id":"%s"}'
                        % (channel.encode(), data, msg_id.encode()),
                        text=True,
                    )
                    if rate:
                        await asyncio.sleep(1.0 / rate)
                frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), UNIT * 4))
                if frame["op"] == "ack":
                    acked.messages[(frame["ch"], frame["seq"])] = pending.pop(frame["id"])
                elif frame["op"] == "error":
                    acked.errors.append(frame["code"])
                    pending.pop(frame.get("id", ""), None)
            # collect the acks still in flight
            while pending:
                frame = json.loads(await asyncio.wait_for(ws.recv(), UNIT * 4))
                if frame["op"] == "ack":
                    acked.messages[(frame["ch"], frame["seq"])] = pending.pop(frame["id"])
                elif frame["op"] == "error":
                    pending.pop(frame.get("id", ""), None)
    except (websockets.ConnectionClosed, OSError, TimeoutError):
        # the server was killed: what was acked before is what must survive
        return


async def run_load(
    url: str, publishers: int, stop: asyncio.Event, acked: Acked, **kw: Any
) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(publisher(url, i, acked, stop, **kw)) for i in range(publishers)]
