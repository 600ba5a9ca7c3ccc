"""`ferry bench http`: publishes through the HTTP API (docs/api.md), single or batched.

`ferry serve` runs on its defaults (WAL with fdatasync, the replayer on) with one API
key. W worker processes (uvloop) each hold C/W keep-alive connections; every connection
sends one request, waits for its answer (after the fsync), and sends the next: closed
loop, or with `--rate` an open loop at that many requests per second in total.
Throughput is messages per second (a batch of N items is N messages); latency is
request -> answer.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from typing import Any

from bench import procfs, targets
from bench.loadgen import new_histogram
from bench.report import Result, latency_summary

KEY = "bench-key-that-is-long-enough-0123456789"


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=0, help="items per request (0: single publishes)")
    p.add_argument("--connections", "-C", type=int, default=64, help="keep-alive connections")
    p.add_argument("--workers", type=int, default=1, help="client processes")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=0.0, help="open loop: requests/s in total")
    p.add_argument("--channels", type=int, default=100)
    p.add_argument("--payload", type=int, default=60, help="bytes of each message's data")
    p.add_argument("--wal-sync", choices=("fsync", "write"), default="fsync")
    p.add_argument("--db", help="database URL (default: SQLite in the run's directory)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")


def _request(body: bytes, path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _bodies(a: dict[str, Any], worker: int) -> list[bytes]:
    filler = "x" * max(0, a["payload"] - 12)
    if a["batch"]:
        items = ",".join(
            f'{{"ch":"room.{(worker + i) % a["channels"]}","data":{{"t":"{filler}"}}}}'
            for i in range(a["batch"])
        )
        return [_request(f'{{"items":[{items}]}}'.encode(), "/api/v1/publish/batch")]
    return [
        _request(f'{{"ch":"room.{c}","data":{{"t":"{filler}"}}}}'.encode(), "/api/v1/publish")
        for c in range(a["channels"])
    ]


async def _connection(
    port: int,
    requests: list[bytes],
    stop_at: float,
    interval: float,
    phase: float,
    out: dict[str, Any],
) -> None:
    """One keep-alive connection, one request in flight. Open loop: a request every
    `interval`, the first after `phase` of it, so the connections' requests are spread
    over the interval instead of all arriving in the same instant."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hist = out["hist"]
    i = 0
    next_at = time.perf_counter() + phase * interval
    try:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            if interval:
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                next_at += interval
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            hist.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
            if head.startswith(b"HTTP/1.1 200"):
                out["ok"] += 1
            else:
                out["errors"] += 1
    finally:
        writer.close()


def _worker(a: dict[str, Any], worker: int, port: int, pipe: Connection) -> None:
    import uvloop

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {"hist": new_histogram(), "ok": 0, "errors": 0}
        n = a["connections"] // a["workers"] + (
            1 if worker < a["connections"] % a["workers"] else 0
        )
        requests = _bodies(a, worker)
        interval = n / (a["rate"] / a["workers"]) if a["rate"] else 0.0
        pipe.send("ready")
        start_at = pipe.recv()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        stop_at = time.perf_counter() + a["seconds"]
        count = max(1, n)
        await asyncio.gather(
            *(
                _connection(
                    port, requests, stop_at, interval, (k + worker / a["workers"]) / count, out
                )
                for k in range(count)
            )
        )
        return out

    out = uvloop.run(main())
    pipe.send({"ok": out["ok"], "errors": out["errors"], "hist": out["hist"].encode()})


def run_http(a: argparse.Namespace) -> Result:
    from hdrh.histogram import HdrHistogram

    api_port = targets.free_port()
    target = targets.start(
        targets.FERRY,
        log="wal",
        wal_sync=a.wal_sync,
        db_url=a.db,
        extra={"FERRY_API_KEYS": f"bench:{KEY}", "FERRY_API_PORT": str(api_port)},
    )
    params = {
        k: getattr(a, k)
        for k in ("batch", "connections", "workers", "seconds", "rate", "channels", "payload")
    }
    ctx = multiprocessing.get_context("spawn")
    try:
        pipes, procs = [], []
        for w in range(a.workers):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(params, w, api_port, theirs), daemon=True)
            proc.start()
            pipes.append(ours)
            procs.append(proc)
        for pipe in pipes:
            assert pipe.recv() == "ready"
        start_at = time.time() + 0.5
        cpu0 = procfs.cpu_seconds(target.pid) if target.pid else None
        for pipe in pipes:
            pipe.send(start_at)
        results = [pipe.recv() for pipe in pipes]
        cpu1 = procfs.cpu_seconds(target.pid) if target.pid else None
        for proc in procs:
            proc.join(10)
        target.check()
    finally:
        target.stop()
    hist = new_histogram()
    for r in results:
        hist.add(HdrHistogram.decode(r["hist"]))
    ok = sum(r["ok"] for r in results)
    errors = sum(r["errors"] for r in results)
    per_request = a.batch or 1
    throughput = ok * per_request / a.seconds
    server = {}
    if cpu0 is not None and cpu1 is not None:
        server["cpu_cores"] = round((cpu1 - cpu0) / a.seconds, 2)
    goal_rate = 150_000 if a.batch else 20_000
    return Result(
        scenario="http",
        target="ferry",
        params=params,
        throughput=round(throughput, 1),
        unit="messages/s",
        ack_latency=latency_summary(hist, "request -> answer (after fsync)"),
        counts={"requests_ok": ok, "requests_failed": errors},
        server=server,
        goals=[
            {
                "goal": f">= {goal_rate:,} messages/s ({'batches' if a.batch else 'single'})",
                "value": round(throughput),
                "met": throughput >= goal_rate,
            }
        ],
        started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        load_avg=list(os.getloadavg()),
    )
