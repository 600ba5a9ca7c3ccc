"""The tests' one publish load (bench/loadgen.py is the benchmark's): websockets clients
that publish to `load.<i>`, record exactly what was acked, and optionally subscribe.

In-process, for durability tests (`run_load`): every ack is kept as (channel, seq) ->
the exact JSON text of `data`, so a test can compare it with the WAL and the database
after killing the server. As a process, for the dashboard measurement (so the browser
driving and the load don't share a GIL):

    python -m tests.load --url ws://127.0.0.1:PORT/ws --rate 10000 --seconds 14

prints one JSON line with what was sent, acked and delivered and the rates over the run;
it runs `--seconds`, or less when it gets SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import websockets

from tests.helpers import UNIT

TICK_S = 0.005  # pacing between send bursts
MSG_PREFIX = '{"op":"msg"'


@dataclass
class Acked:
    """(channel, seq) -> the exact JSON text of `data` that was acked, and the counts."""

    messages: dict[tuple[str, int], bytes] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    delivered: int = 0

    def count(self) -> int:
        return len(self.messages)


async def _open(url: str) -> websockets.ClientConnection:
    ws = await websockets.connect(
        url, subprotocols=[websockets.Subprotocol("ferry.v1.json")], max_size=None,
        open_timeout=UNIT, close_timeout=1,
    )  # fmt: skip
    await asyncio.wait_for(ws.recv(), UNIT)  # welcome
    return ws


async def publisher(
    url: str,
    index: int,
    acked: Acked,
    stop: asyncio.Event,
    window: int = 16,
    pad: int = 64,
    rate: float = 0.0,
) -> None:
    """Publish to `load.<index>` until `stop` (or the server goes away), at most `window`
    unacked, at `rate` messages/s (0: as fast as acks come back)."""
    channel = f"load.{index}".encode()
    pending: dict[str, bytes] = {}
    room = asyncio.Event()
    try:
        ws = await _open(f"{url}?user=p{index}")
    except (OSError, TimeoutError, websockets.InvalidHandshake):
        return

    async def read_acks() -> None:
        try:
            async for raw in ws:
                frame: dict[str, Any] = json.loads(raw)
                if frame["op"] == "ack":
                    acked.messages[(frame["ch"], frame["seq"])] = pending.pop(frame["id"])
                elif frame["op"] == "error":
                    acked.errors.append(frame["code"])
                    pending.pop(frame.get("id", ""), None)
                room.set()
        except websockets.ConnectionClosed:
            pass  # the server went away: the loop below sees `reader.done()`

    reader = asyncio.create_task(read_acks())
    reader.add_done_callback(lambda _: room.set())
    n = 0
    started = time.monotonic()
    try:
        while not stop.is_set() and not reader.done():
            due = int((time.monotonic() - started) * rate) - n if rate else window
            while due > 0 and len(pending) < window:
                n += 1
                due -= 1
                data = json.dumps({"p": index, "n": n, "pad": "é" * pad}, ensure_ascii=False)
                msg_id = f"{index}-{n}"
                pending[msg_id] = data.encode()
                acked.sent += 1
                await ws.send(
                    b'{"op":"pub","ch":"%s","data":%s,"id":"%s"}'
                    % (channel, pending[msg_id], msg_id.encode()),
                    text=True,
                )
            room.clear()
            if len(pending) >= window:
                await asyncio.wait_for(room.wait(), UNIT * 4)
            elif rate:
                await asyncio.sleep(TICK_S)
        # the acks still in flight
        deadline = time.monotonic() + UNIT * 4
        while pending and not reader.done() and time.monotonic() < deadline:
            room.clear()
            await asyncio.wait_for(room.wait(), max(0.0, deadline - time.monotonic()))
    except (websockets.ConnectionClosed, OSError, TimeoutError):
        pass  # the server was killed: what was acked before is what must survive
    finally:
        await ws.close()
        reader.cancel()


async def subscriber(url: str, channels: list[str], acked: Acked, stop: asyncio.Event) -> None:
    """Subscribe to `channels` and count the messages until `stop`."""
    ws = await _open(url)

    async def read() -> None:
        async for frame in ws:
            if isinstance(frame, str) and frame.startswith(MSG_PREFIX):
                acked.delivered += 1

    reader = asyncio.create_task(read())
    try:
        for ch in channels:
            await ws.send(json.dumps({"op": "sub", "ch": ch}))
        await stop.wait()
    finally:
        # Close while the reader still drains: a full receive queue would stall the
        # closing handshake until close_timeout.
        await ws.close()
        reader.cancel()


async def run_load(
    url: str, publishers: int, stop: asyncio.Event, acked: Acked, **kw: Any
) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(publisher(url, i, acked, stop, **kw)) for i in range(publishers)]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    acked = Acked()
    stop = asyncio.Event()
    # SIGTERM ends the run early (the test stops us when its measurement is done).
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    channels = [f"load.{i}" for i in range(args.publishers)]
    subs = [
        asyncio.create_task(subscriber(args.url, channels, acked, stop))
        for _ in range(args.subscribers)
    ]
    started = time.monotonic()
    tasks = await run_load(
        args.url,
        args.publishers,
        stop,
        acked,
        window=args.window,
        pad=args.pad,
        rate=args.rate / args.publishers,
    )
    try:
        await asyncio.wait_for(stop.wait(), args.seconds)
    except TimeoutError:
        stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    await asyncio.gather(*subs, return_exceptions=True)
    return {
        "sent": acked.sent,
        "acked": acked.count(),
        "delivered": acked.delivered,
        "errors": len(acked.errors),
        "seconds": round(elapsed, 3),
        "target_rate": args.rate,
        "acked_per_s": round(acked.count() / elapsed, 1),
        "delivered_per_s": round(acked.delivered / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a paced publish load on a ferry relay")
    p.add_argument("--url", required=True, help="ws://host:port/ws of the relay")
    p.add_argument("--rate", type=float, default=10_000, help="publishes/s in total")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--publishers", type=int, default=4)
    p.add_argument("--subscribers", type=int, default=1)
    p.add_argument("--window", type=int, default=2000, help="unacked publishes per connection")
    p.add_argument("--pad", type=int, default=64, help="padding characters per message")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
