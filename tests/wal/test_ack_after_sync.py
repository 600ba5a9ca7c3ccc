"""Acks and deliveries wait for the fdatasync, deterministically; SIGTERM with the real WAL
and publishes in flight acks every publish it logged before the 1001 close."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path

import pytest
import websockets

from tests.helpers import UNIT, Client, ServeProcess, StartRelay
from wal import MessagePayload, iter_records
from wal.record import MESSAGE


async def test_no_ack_and_no_delivery_before_fdatasync_returns(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = threading.Event()  # set: the next fdatasync waits for `release`
    entered = threading.Event()
    release = threading.Event()
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        if held.is_set():
            entered.set()
            release.wait(UNIT * 4)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    relay = await start_relay(durability="wal")
    reader = await Client.connect(relay.url)
    await reader.sub("room.h")
    publisher = await Client.connect(relay.url)
    held.set()
    await publisher.pub("room.h", {"n": 1}, msg_id="held")
    assert await asyncio.to_thread(entered.wait, UNIT), "the batch never reached fdatasync"
    await publisher.assert_silent(0.3)  # no ack while the fdatasync has not returned
    await reader.assert_silent(0.3)  # and no delivery
    held.clear()
    release.set()
    ack = await publisher.expect("ack")
    msg = await reader.expect("msg")
    assert ack["id"] == "held" and msg["seq"] == ack["seq"] == 1


async def test_sigterm_acks_every_logged_publish_before_1001(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    server = ServeProcess(
        {
            "FERRY_WAL_DIR": str(wal_dir),
            "FERRY_DB_URL": f"sqlite:///{tmp_path / 'ferry.db'}",
            "FERRY_PUBLISH_RATE": "100000",
            "FERRY_PUBLISH_BURST": "100000",
        }
    ).start(tmp_path / "serve.log")
    try:
        server.wait_healthy()
        acked: list[int] = []
        async with websockets.connect(server.url, max_size=None) as ws:
            json.loads(await ws.recv())  # welcome
            sender_done = asyncio.Event()

            async def send() -> None:
                for i in range(20_000):
                    try:
                        await ws.send(json.dumps({"op": "pub", "ch": "t", "data": i, "id": i}))
                    except websockets.ConnectionClosed:
                        break
                    if i == 2000:
                        server.signal(signal.SIGTERM)  # with thousands in flight
                sender_done.set()

            task = asyncio.create_task(send())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), UNIT * 2))
                    if frame["op"] == "ack":
                        acked.append(frame["id"])
            await task
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert server.wait() == 0
    finally:
        server.kill()
    logged = [
        json.loads(r.body.data)
        for r in iter_records(str(wal_dir))
        if r.type == MESSAGE and isinstance(r.body, MessagePayload)
    ]
    assert len(logged) > 2000
    assert acked == logged  # every logged publish was acked before the close, in order
