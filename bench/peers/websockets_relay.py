"""The protocol-v1 subset (docs/design.md §3) on the python `websockets` library (asyncio API),
written the way such relays usually are: `json.loads` every frame, `json.dumps` each
outgoing message once and `websockets.broadcast` it (one write per subscriber). No
durability, no auth, no limits. Compact separators keep the frames ferry-sized.

    welcome on connect; sub -> subscribed (seq = channel head); unsub -> unsubscribed;
    pub -> ack (with the channel seq, id echoed) + msg to every subscriber; ping -> pong

Usage: python websockets_relay.py [--host 127.0.0.1] [--port 8082]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve


def dumps(obj: dict[str, Any]) -> str:
    if obj.get("id", 0) is None:
        del obj["id"]  # like ferry and the Node peer: no id given, none echoed
    return json.dumps(obj, separators=(",", ":"))


class Channel:
    def __init__(self) -> None:
        self.seq = 0
        self.subs: set[ServerConnection] = set()


channels: dict[str, Channel] = {}
next_client = 0


def channel(name: str) -> Channel:
    ch = channels.get(name)
    if ch is None:
        ch = channels[name] = Channel()
    return ch


async def handler(ws: ServerConnection) -> None:
    global next_client
    next_client += 1
    mine: set[Channel] = set()
    await ws.send(
        dumps(
            {
                "op": "welcome",
                "client": f"py-{next_client}",
                "user": "anonymous",
                "node": "websockets",
                "version": 1,
            }
        )
    )
    try:
        async for raw in ws:
            try:
                frame = json.loads(raw)
                op = frame["op"]
            except (ValueError, KeyError, TypeError):
                await ws.send(dumps({"op": "error", "code": "bad_request", "reason": "malformed"}))
                continue
            name = frame.get("ch")
            msg_id = frame.get("id")
            if op == "sub":
                ch = channel(name)
                ch.subs.add(ws)
                mine.add(ch)
                await ws.send(dumps({"op": "subscribed", "ch": name, "seq": ch.seq, "id": msg_id}))
            elif op == "unsub":
                ch = channel(name)
                ch.subs.discard(ws)
                mine.discard(ch)
                await ws.send(dumps({"op": "unsubscribed", "ch": name, "id": msg_id}))
            elif op == "pub":
                ch = channel(name)
                ch.seq += 1
                await ws.send(dumps({"op": "ack", "ch": name, "seq": ch.seq, "id": msg_id}))
                msg = {
                    "op": "msg",
                    "ch": name,
                    "seq": ch.seq,
                    "ts": time.time_ns() // 1_000_000,
                    "from": "anonymous",
                    "data": frame.get("data"),
                }
                broadcast(ch.subs, dumps(msg))
            elif op == "ping":
                await ws.send(dumps({"op": "pong", "id": msg_id}))
            else:
                await ws.send(dumps({"op": "error", "code": "bad_request", "reason": "unknown op"}))
    finally:
        for ch in mine:
            ch.subs.discard(ws)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with serve(handler, host, port, compression=None, max_size=64 * 1024):
        print(f"websockets relay listening on {host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
