"""WebSocket pings and pongs at the adapter.

A client's pings are answered through the connection's outbox (picows' auto-pong wrote
straight to the transport, past every limit: a client that pinged and never read took
`ferry serve` from 44 MiB to 3.8 GiB in 15 s). Only the pong that carries our ping's
payload answers it; unsolicited pongs and the client's own pings do not keep a connection
that never reads alive.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.core.adapter_raw import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWS,
    client_frame,
    close_code,
    parse_one,
    upgrade_request,
)
from tests.helpers import (
    UNIT,
    Client,
    Relay,
    ServeProcess,
    StartRelay,
    http_get,
    wait_for,
    wait_for_sync,
)

MiB = 1024 * 1024
# Peak RSS of the flooded `ferry serve` may grow by at most this much over its idle RSS.
# Measured: +12 MiB with 125-byte pings, +27 MiB with empty ones (4 MiB outbox limit);
# before the fix the same flood grew it by 1.7 GiB in 6 s.
RSS_GROWTH_BOUND = 64 * MiB


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(value.split()[0]) * 1024
    return values


def _metric(server: ServeProcess, name: str, timeout: float = UNIT * 4) -> float:
    for line in http_get(server.http + "/metrics", timeout)[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


class Flooder(threading.Thread):
    """Upgrades, then sends pings as fast as it can and reads nothing until `stop`; then
    reads whatever the server sent, up to its close frame, EOF or a reset. (The server
    closes a socket that still holds unread pings: the kernel answers that with a reset,
    which may discard the close frame on its way.)"""

    def __init__(self, port: int, payload: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(upgrade_request())
        self.blob = client_frame(OP_PING, payload) * (65536 // (6 + len(payload)))
        self.stop = threading.Event()
        self.sent = 0
        self.send_error: OSError | None = None
        self.close_code: int | None = None
        self.pongs = 0
        self.ended = ""

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.sock.sendall(self.blob)
                self.sent += len(self.blob)
            except TimeoutError:
                continue  # the server is busy (or stopped reading us): check `stop`
            except OSError as exc:
                self.send_error = exc
                break
        self._drain()

    def _drain(self) -> None:
        self.sock.settimeout(UNIT)
        data = b""
        head = False
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    self.ended = "eof"
                    return
                data += chunk
                if not head:
                    end = data.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    head, data = True, data[end + 4 :]
                pos = 0
                while (parsed := parse_one(data, pos)) is not None:
                    (opcode, _fin, payload), pos = parsed
                    if opcode == OP_PONG:
                        self.pongs += 1
                    elif opcode == OP_CLOSE:
                        self.close_code = close_code(payload)
                        self.ended = "close"
                        return
                data = data[pos:]
        except TimeoutError:
            self.ended = "still open"
        except OSError:
            self.ended = "reset"
        finally:
            self.sock.close()


@pytest.mark.parametrize("payload_size", [125, 0], ids=["125-byte-pings", "empty-pings"])
async def test_ping_flood_is_bounded_and_closed_4408(tmp_path: Path, payload_size: int) -> None:
    server = ServeProcess({"FERRY_DURABILITY": "memory", "FERRY_LOG_LEVEL": "info"})
    server.start(tmp_path / "serve.log")
    try:
        server.wait_healthy()
        assert server.proc is not None
        pid = server.proc.pid
        bystander = await Client.connect(server.url, user="bystander")
        await bystander.sub("calm")
        idle_rss = _status(pid)["VmRSS"]

        flooder = Flooder(server.port, b"p" * payload_size)
        flooder.start()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + UNIT * 4
        rounds = scrape_failures = 0
        # The bystander publishes and gets its ack and message while the flood goes on.
        while True:
            assert time.monotonic() < deadline, (
                f"no 4408 after {flooder.sent / MiB:.0f} MiB of pings"
                f" ({scrape_failures} /metrics scrapes timed out)"
            )
            assert _status(pid)["VmRSS"] - idle_rss < RSS_GROWTH_BOUND
            rounds += 1
            await bystander.pub("calm", {"round": rounds}, f"r{rounds}")
            frames = [await bystander.recv(UNIT * 4), await bystander.recv(UNIT * 4)]
            assert sorted(f["op"] for f in frames) == ["ack", "msg"]
            try:
                closes = await loop.run_in_executor(
                    None, _metric, server, "ferry_slow_consumer_closes_total", UNIT
                )
            except OSError:  # a scrape that timed out under the flood: the deadline decides
                scrape_failures += 1
                continue
            if closes >= 1:
                break
        flooder.stop.set()
        await loop.run_in_executor(None, flooder.join, UNIT * 2)
        assert not flooder.is_alive()

        peak = _status(pid)["VmHWM"]
        assert peak - idle_rss < RSS_GROWTH_BOUND, (
            f"peak RSS {peak / MiB:.0f} MiB, idle {idle_rss / MiB:.0f} MiB"
        )
        # Closed by the outbox limit (the metric above); the close frame says 4408 when it
        # gets through.
        assert flooder.ended in ("close", "eof", "reset"), flooder.ended
        if flooder.ended == "close":
            assert flooder.close_code == 4408
        assert rounds > 0
        # Only the bystander is left once the flooder's close grace (5 s) has run out.
        wait_for_sync(
            lambda: _metric(server, "ferry_connections") == 1, UNIT * 2, "the flooder to be gone"
        )
        # and after the flood
        await bystander.pub("calm", "after", "after")
        frames = [await bystander.recv(), await bystander.recv()]
        assert sorted(f["op"] for f in frames) == ["ack", "msg"]
        await bystander.close()
        assert "Traceback" not in server.output()
    finally:
        server.kill()


async def test_a_ping_is_answered_through_the_outbox(relay: Relay) -> None:
    ws = await RawWS.connect(relay.port)
    await ws.recv_until(OP_TEXT)  # welcome
    await ws.send(OP_PING, b"hello")
    assert await ws.recv() == (OP_PONG, True, b"hello")
    (conn,) = relay.hub.connections
    bytes_out = relay.hub.flusher.bytes_out
    await ws.send(OP_PING, b"")
    assert await ws.recv() == (OP_PONG, True, b"")
    await wait_for(lambda: relay.hub.flusher.bytes_out == bytes_out + 2, what="pong counted")
    assert conn.outbox is not None
    assert conn.outbox.size == 0


async def test_resume_writing_sends_the_pongs_held_back(relay: Relay) -> None:
    ws = await RawWS.connect(relay.port)
    await ws.recv_until(OP_TEXT)
    (conn,) = relay.hub.connections
    conn.pause_writing()
    await ws.send(OP_PING, b"a")
    await ws.send(OP_PING, b"b")

    def held() -> int:
        assert conn.ws is not None
        pongs = conn.ws.held_pongs
        return 0 if pongs is None else len(pongs)

    await wait_for(lambda: held() == 6, what="pongs held")
    conn.resume_writing()
    assert await ws.recv() == (OP_PONG, True, b"a")
    assert await ws.recv() == (OP_PONG, True, b"b")


async def _pinged(ws: RawWS) -> bytes:
    _opcode, _fin, payload = await ws.recv_until(OP_PING, UNIT)
    assert len(payload) == 8
    return payload


async def test_only_the_pong_with_our_payload_answers_a_ping(start_relay: StartRelay) -> None:
    relay = await start_relay(idle_timeout=0.3, ping_timeout=0.3)

    async def keep_sending(ws: RawWS, opcode: int, payload: bytes) -> None:
        try:
            while True:
                await ws.send(opcode, payload)
                await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            return  # dropped

    clients = {}
    for name in ("pongs_only", "pings_only", "wrong", "right"):
        clients[name] = await RawWS.connect(relay.port)
        await clients[name].recv_until(OP_TEXT)  # welcome
    conns = dict(zip(clients, relay.hub.connections, strict=True))
    # Unsolicited pongs used to count as liveness: this one was never dropped.
    # Pings show that a client writes, not that it reads.
    tasks = [
        asyncio.create_task(keep_sending(clients["pongs_only"], OP_PONG, b"ferry")),
        asyncio.create_task(keep_sending(clients["pings_only"], OP_PING, b"x")),
    ]
    try:
        payload = await _pinged(clients["wrong"])
        await clients["wrong"].send(OP_PONG, bytes(b ^ 1 for b in payload))
        right = clients["right"]
        for _ in range(3):  # answered each time: stays
            await right.send(OP_PONG, await _pinged(right))
        await wait_for(lambda: len(relay.hub.connections) == 1, what="only `right` left")
        assert relay.server.keepalive is not None
        assert relay.server.keepalive.dropped == 3
        for name in ("pongs_only", "pings_only", "wrong"):
            session = conns[name].session
            assert session is not None and session.close_code == 1011, name
        await right.send(OP_TEXT, json.dumps({"op": "ping", "id": 1}).encode())
        assert json.loads((await right.recv_until(OP_TEXT))[2]) == {"op": "pong", "id": 1}
    finally:
        for task in tasks:
            task.cancel()
