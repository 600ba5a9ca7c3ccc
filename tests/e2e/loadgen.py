"""A small paced publish load for the dashboard measurement, run as its own process so the
test's browser driving and the load do not share a GIL:

    python -m tests.e2e.loadgen --url ws://127.0.0.1:PORT/ws --rate 10000 --seconds 14

`--publishers` connections publish to `load.<i>` at `--rate` messages/s in total (no
message ids, at most `--window` unacked per connection); `--subscribers` connections
subscribe to every load channel, so the relay also fans out. Prints one JSON line with
what was sent, acked and delivered, and the rates over the run. Runs `--seconds`, or less
when it gets SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass

import websockets

from tests.helpers import UNIT

TICK_S = 0.005
ACK_PREFIX = '{"op":"ack"'
MSG_PREFIX = '{"op":"msg"'
ERROR_PREFIX = '{"op":"error"'


@dataclass
class Counts:
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    errors: int = 0


async def _open(url: str) -> websockets.ClientConnection:
    ws = await websockets.connect(
        url, subprotocols=[websockets.Subprotocol("ferry.v1.json")], max_size=None,
        open_timeout=UNIT, close_timeout=1,
    )  # fmt: skip
    await asyncio.wait_for(ws.recv(), UNIT)  # welcome
    return ws


async def _publisher(
    url: str,
    index: int,
    rate: float,
    window: int,
    pad: str,
    until: float,
    stop: asyncio.Event,
    counts: Counts,
) -> None:
    ws = await _open(f"{url}?user=load{index}")
    acked = 0
    room = asyncio.Event()

    async def read_acks() -> None:
        nonlocal acked
        async for frame in ws:
            if isinstance(frame, str) and frame.startswith(ACK_PREFIX):
                acked += 1
                counts.acked += 1
            elif isinstance(frame, str) and frame.startswith(ERROR_PREFIX):
                acked += 1
                counts.errors += 1
            room.set()

    reader = asyncio.create_task(read_acks())
    prefix = f'{{"op":"pub","ch":"load.{index}","data":{{"n":'
    suffix = f',"pad":"{pad}"}}}}'
    sent = 0
    started = time.monotonic()
    try:
        while (now := time.monotonic()) < until and not stop.is_set():
            due = int((now - started) * rate) - sent
            while due > 0 and sent - acked < window:
                sent += 1
                due -= 1
                counts.sent += 1
                await ws.send(prefix + str(sent) + suffix)
            if sent - acked >= window:
                room.clear()
                try:
                    await asyncio.wait_for(room.wait(), UNIT)
                except TimeoutError:
                    break
            else:
                await asyncio.sleep(TICK_S)  # pacing between send bursts
        deadline = time.monotonic() + 2.0  # the acks still in flight, briefly
        while acked < sent and time.monotonic() < deadline:
            room.clear()
            try:
                await asyncio.wait_for(room.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
    finally:
        await ws.close()
        reader.cancel()


async def _subscriber(url: str, channels: list[str], counts: Counts, stop: asyncio.Event) -> None:
    ws = await _open(url)

    async def read() -> None:
        async for frame in ws:
            if isinstance(frame, str) and frame.startswith(MSG_PREFIX):
                counts.delivered += 1

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


async def run(args: argparse.Namespace) -> dict[str, float]:
    counts = Counts()
    channels = [f"load.{i}" for i in range(args.publishers)]
    stop = asyncio.Event()
    # SIGTERM ends the run early (the test stops us when its measurement is done).
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    subs = [
        asyncio.create_task(_subscriber(args.url, channels, counts, stop))
        for _ in range(args.subscribers)
    ]
    started = time.monotonic()
    until = started + args.seconds
    per_publisher = args.rate / args.publishers
    pad = "x" * args.pad
    await asyncio.gather(
        *(
            _publisher(args.url, i, per_publisher, args.window, pad, until, stop, counts)
            for i in range(args.publishers)
        )
    )
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*subs, return_exceptions=True)
    return {
        **asdict(counts),
        "seconds": round(elapsed, 3),
        "target_rate": args.rate,
        "acked_per_s": round(counts.acked / elapsed, 1),
        "delivered_per_s": round(counts.delivered / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="ws://host:port/ws of the relay")
    p.add_argument("--rate", type=float, default=10_000, help="publishes/s in total")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--publishers", type=int, default=4)
    p.add_argument("--subscribers", type=int, default=1)
    p.add_argument("--window", type=int, default=2000, help="unacked publishes per connection")
    p.add_argument("--pad", type=int, default=64, help="padding characters per message")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
