"""Durability of `ferry serve` end to end: SIGKILL crash loop, `since` across a restart,
and WAL failures (fdatasync EIO, disk full) -> `unavailable`, /readyz 503, nothing acked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.helpers import (
    UNIT,
    Client,
    ServeProcess,
    free_port,
    http_get,
    wait_for,
    wait_for_sync,
)
from tests.load import Acked, run_load
from tests.wal.faults import fdatasync_fault_env

ROUNDS = int(os.environ.get("FERRYTEST_CRASH_ROUNDS", "20"))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "FERRY_WAL_DIR": str(tmp_path / "wal"),
        "FERRY_DB_URL": f"sqlite:///{tmp_path / 'ferry.db'}",
        "FERRY_HISTORY_SIZE": "1000000",
        "FERRY_HISTORY_CHANNEL_BYTES": str(1 << 30),  # whole channels: since=0 reaches seq 1
        "FERRY_HISTORY_TOTAL_BYTES": str(1 << 32),
        "FERRY_WAL_SEGMENT_BYTES": str(512 * 1024),
        "FERRY_PUBLISH_RATE": "100000",
        "FERRY_PUBLISH_BURST": "100000",
        **extra,
    }


def _data_slice(frame_text: str) -> bytes:
    marker = ',"data":'
    return frame_text[frame_text.index(marker) + len(marker) : -1].encode()


async def _history(url: str, channel: str) -> dict[int, bytes]:
    """Every message of `channel` from the server's history (sub with since=0)."""
    async with websockets.connect(url, max_size=None, open_timeout=UNIT) as ws:
        await ws.recv()
        await ws.send(json.dumps({"op": "sub", "ch": channel, "since": 0}))
        subscribed = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert subscribed["op"] == "subscribed" and subscribed["recovered"] is True, subscribed
        head = subscribed["seq"]
        got: dict[int, bytes] = {}
        seqs: list[int] = []
        while len(seqs) < head:
            text = await asyncio.wait_for(ws.recv(), UNIT)
            assert isinstance(text, str)
            frame = json.loads(text)
            assert frame["op"] == "msg" and frame["ch"] == channel
            seqs.append(frame["seq"])
            got[frame["seq"]] = _data_slice(text)
        assert seqs == list(range(1, head + 1)), f"{channel}: gaps or disorder"
        return got


async def _kill_under_load(
    server: ServeProcess,
    count: Callable[[], int],
    more: int,
    delay: float,
    stop: asyncio.Event,
    tasks: list[asyncio.Task[None]],
) -> None:
    """Once `count()` (the acks so far) has grown by more than `more`, wait `delay` (a
    random moment under load), SIGKILL the server, then stop the load and wait for its
    tasks to end."""
    upto = count() + more
    await wait_for(lambda: count() > upto, UNIT * 2, "acks in this round")
    await asyncio.sleep(delay)
    server.signal(signal.SIGKILL)
    assert await asyncio.to_thread(server.wait) == -signal.SIGKILL
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), UNIT * 2)


async def test_sigkill_crash_loop_loses_no_acked_message(tmp_path: Path) -> None:
    rng = random.Random(20261129)
    acked = Acked()
    for round_no in range(ROUNDS):
        server = ServeProcess(_env(tmp_path)).start(tmp_path / f"serve-{round_no}.log")
        try:
            await asyncio.to_thread(server.wait_healthy)
            # everything acked in earlier rounds survived, with its original seq, once
            by_channel: dict[str, dict[int, bytes]] = {}
            for channel in sorted({ch for ch, _ in acked.messages}):
                by_channel[channel] = await _history(server.url, channel)
            for (channel, seq), data in acked.messages.items():
                assert by_channel[channel].get(seq) == data, (
                    f"round {round_no}: lost or changed {channel}#{seq}"
                )
            stop = asyncio.Event()
            tasks = await run_load(server.url, 3, stop, acked, window=16)

            await _kill_under_load(server, acked.count, 50, rng.uniform(0.0, 0.4), stop, tasks)
        finally:
            server.kill()
    assert acked.count() > ROUNDS * 50


async def test_since_across_a_restart(tmp_path: Path) -> None:
    server = ServeProcess(_env(tmp_path, FERRY_HISTORY_SIZE="100")).start(tmp_path / "a.log")
    try:
        await asyncio.to_thread(server.wait_healthy)
        reader = await Client.connect(server.url)
        epoch = reader.welcome["epoch"]
        assert len(epoch) == 16
        await reader.sub("room.s")
        writer = await Client.connect(server.url)
        for i in range(5):
            await writer.pub("room.s", {"i": i}, str(i))
            await writer.expect("ack")
        seen = [(await reader.expect("msg"))["seq"] for _ in range(5)]
        assert seen == [1, 2, 3, 4, 5]
        await reader.close()  # the reader goes away...
        for i in range(5, 12):  # ...and misses these
            await writer.pub("room.s", {"i": i}, str(i))
            await writer.expect("ack")
        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait) == 0
    finally:
        server.kill()
    restarted = ServeProcess(_env(tmp_path, FERRY_HISTORY_SIZE="100")).start(tmp_path / "b.log")
    try:
        await asyncio.to_thread(restarted.wait_healthy)
        reader = await Client.connect(restarted.url)
        subscribed = await reader.sub("room.s", since=5)
        # the same WAL, so the same epoch as before the restart
        assert subscribed == {
            "op": "subscribed", "ch": "room.s", "seq": 12, "epoch": epoch, "recovered": True
        }  # fmt: skip
        missed = [await reader.expect("msg") for _ in range(7)]
        assert [m["seq"] for m in missed] == list(range(6, 13))
        assert [m["data"] for m in missed] == [{"i": i} for i in range(5, 12)]
        await reader.assert_silent()
        writer = await Client.connect(restarted.url)  # live messages continue the seq
        await writer.pub("room.s", "live", "x")
        assert (await writer.expect("ack"))["seq"] == 13
        assert (await reader.expect("msg"))["seq"] == 13
    finally:
        restarted.kill()


def _readyz(server: ServeProcess) -> tuple[int, bytes]:
    return http_get(server.http + "/readyz")


async def _assert_unavailable(server: ServeProcess, healthy: Client) -> None:
    """Publishing answers `unavailable`, nothing is acked, /readyz is 503, others still served."""
    publisher = await Client.connect(server.url)
    for i in range(3):
        await publisher.pub("room.f", {"after": i}, f"a{i}")
        frame = await publisher.recv()
        assert frame["op"] == "error" and frame["code"] == "unavailable", frame
        assert "Errno" not in frame["reason"] and "EIO" not in frame["reason"]  # no internal text
    status, body = await asyncio.to_thread(_readyz, server)
    assert status == 503 and b"not writable" in body
    await healthy.send({"op": "ping"})
    await healthy.expect("pong")
    _, metrics = await asyncio.to_thread(http_get, server.http + "/metrics")
    assert b"ferry_log_writable 0.0" in metrics


async def test_fdatasync_eio_stops_acking(tmp_path: Path) -> None:
    trigger = tmp_path / "fail-now"
    env = fdatasync_fault_env(tmp_path / "site", trigger=trigger, base={})
    server = ServeProcess({**_env(tmp_path), "PYTHONPATH": env["PYTHONPATH"]}).start(
        tmp_path / "serve.log"
    )
    try:
        await asyncio.to_thread(server.wait_healthy)
        healthy = await Client.connect(server.url)
        await healthy.sub("room.f")
        await healthy.pub("room.f", "before", "b")
        assert (await healthy.expect("ack"))["seq"] == 1
        await healthy.expect("msg")
        trigger.touch()  # every fdatasync from now on fails with EIO
        await _assert_unavailable(server, healthy)
        await healthy.assert_silent()  # the failed publishes were never delivered
        out = server.output()
        assert "fdatasync" in out and ("EIO" in out or "Input/output" in out), out
    finally:
        server.kill()


async def test_disk_full_stops_acking(tmp_path: Path, tmpfs: Callable[[str], Path]) -> None:
    small = tmpfs("1m")
    server = ServeProcess(
        _env(
            tmp_path,
            FERRY_WAL_DIR=str(small / "wal"),
            FERRY_WAL_SEGMENT_BYTES="4194304",
            FERRY_MAX_FRAME_BYTES="65536",
        )
    )
    server.start(tmp_path / "serve.log")
    try:
        await asyncio.to_thread(server.wait_healthy)
        healthy = await Client.connect(server.url)
        publisher = await Client.connect(server.url)
        acked = 0
        codes: list[Any] = []
        for i in range(200):  # ~6 MB into a 1 MiB filesystem
            await publisher.pub("room.big", "x" * 30000, str(i))
            frame = await publisher.recv()
            if frame["op"] == "ack":
                acked += 1
            else:
                codes.append(frame.get("code"))
                break
        assert codes == ["unavailable"], codes
        assert 0 < acked < 200
        await _assert_unavailable(server, healthy)
        assert "No space left" in server.output() or "ENOSPC" in server.output()
    finally:
        server.kill()


async def test_a_retried_mid_after_a_crash_is_one_message_with_one_seq(tmp_path: Path) -> None:
    """The ack may be lost with the process (SIGKILL right after it): the client retries
    with the same `mid` on the restarted server and gets the original seq, `dup`."""
    env = _env(tmp_path, FERRY_HISTORY_SIZE="100")
    server = ServeProcess(env).start(tmp_path / "a.log")
    try:
        await asyncio.to_thread(server.wait_healthy)
        writer = await Client.connect(server.url, user="alice")
        epoch = writer.welcome["epoch"]
        await writer.pub("room.m", {"n": 0}, "c-0")
        await writer.expect("ack")
        await writer.send(
            {"op": "pub", "ch": "room.m", "data": {"n": 1}, "id": "c-1", "mid": "m-1"}
        )
        first = await writer.expect("ack")
        assert first == {"op": "ack", "ch": "room.m", "seq": 2, "id": "c-1"}
        server.signal(signal.SIGKILL)
        assert await asyncio.to_thread(server.wait) == -signal.SIGKILL
    finally:
        server.kill()
    restarted = ServeProcess({**env, "FERRY_PORT": str(server.port)}).start(tmp_path / "b.log")
    try:
        await asyncio.to_thread(restarted.wait_healthy)
        writer = await Client.connect(restarted.url, user="alice")
        assert writer.welcome["epoch"] == epoch
        await writer.send(
            {"op": "pub", "ch": "room.m", "data": {"n": 1}, "id": "c-2", "mid": "m-1"}
        )
        assert await writer.expect("ack") == {
            "op": "ack", "ch": "room.m", "seq": 2, "id": "c-2", "dup": True
        }  # fmt: skip
        await writer.send(
            {"op": "pub", "ch": "room.m", "data": {"n": 2}, "id": "c-3", "mid": "m-2"}
        )
        assert (await writer.expect("ack"))["seq"] == 3
        assert list((await _history(restarted.url, "room.m")).values()) == [
            b'{"n": 0}', b'{"n": 1}', b'{"n": 2}'  # as json.dumps sent them, byte for byte
        ]  # fmt: skip
        # the database row holds the mid (the correlation id where there was none)
        db = tmp_path / "ferry.db"

        def logged() -> list[tuple[int, str]]:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                try:
                    rows: list[tuple[int, str]] = conn.execute(
                        "SELECT seq, client_msg_id FROM ferry_messages WHERE channel = 'room.m' "
                        "ORDER BY seq"
                    ).fetchall()
                except sqlite3.OperationalError:  # no table yet: the replayer has not
                    return []  # written its first batch (it waits for the durable head)
                return rows

        await asyncio.to_thread(wait_for_sync, lambda: len(logged()) == 3, UNIT * 2, "3 rows")
        assert logged() == [(1, "c-0"), (2, "m-1"), (3, "m-2")]
    finally:
        restarted.kill()


API_KEY = "svc-secret-that-is-long-enough-0123456789"


async def test_http_publishers_through_sigkills_lose_and_repeat_nothing(tmp_path: Path) -> None:
    """HTTP publishers under SIGKILL: every message answered 200 is in the WAL and in the
    database exactly once after the restarts, and a retried Idempotency-Key whose answer
    was lost with the process is the same message and seq."""
    api_port = free_port()
    env = _env(tmp_path, FERRY_API_KEYS=f"svc:{API_KEY}", FERRY_API_PORT=str(api_port))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    acked: dict[str, int] = {}  # payload id -> seq
    rng = random.Random(7)
    port = free_port()
    for round_no in range(3):
        server = ServeProcess({**env, "FERRY_PORT": str(port)}).start(tmp_path / f"{round_no}.log")
        try:
            await asyncio.to_thread(server.wait_healthy)
            base = f"http://127.0.0.1:{api_port}"
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=UNIT) as http:
                stop = asyncio.Event()

                async def publisher(
                    n: int, round_no: int = round_no, stop: asyncio.Event = stop
                ) -> None:
                    i = 0
                    while not stop.is_set():
                        key = f"r{round_no}-p{n}-{i}"
                        try:
                            response = await http.post(
                                "/api/v1/publish",
                                json={"ch": "room.http", "data": {"k": key}},
                                headers={"Idempotency-Key": key},
                            )
                        except httpx.HTTPError:
                            return  # the server went away mid-request: outcome unknown
                        if response.status_code == 200:
                            acked[key] = response.json()["seq"]
                        i += 1

                tasks = [asyncio.create_task(publisher(n)) for n in range(4)]
                await _kill_under_load(
                    server, acked.__len__, 30, rng.uniform(0.0, 0.3), stop, tasks
                )
        finally:
            server.kill()
    final = ServeProcess({**env, "FERRY_PORT": str(port)}).start(tmp_path / "final.log")
    try:
        await asyncio.to_thread(final.wait_healthy)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=UNIT
        ) as http:
            # a retry of an answered key, as a client would after losing the answer
            key, seq = next(iter(acked.items()))
            retry = await http.post(
                "/api/v1/publish",
                json={"ch": "room.http", "data": {"k": key}},
                headers={"Idempotency-Key": key},
            )
            assert retry.json()["seq"] == seq and retry.json()["dup"] is True
        history = await _history(final.url, "room.http")
        keys = [json.loads(data)["k"] for data in history.values()]
        assert len(keys) == len(set(keys)), "a message was logged twice"
        missing = set(acked) - set(keys)
        assert not missing, f"{len(missing)} acknowledged messages lost"
        assert all(json.loads(history[s])["k"] == k for k, s in acked.items())
        db = tmp_path / "ferry.db"

        def rows() -> list[tuple[int, str]]:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                return conn.execute(
                    "SELECT seq, client_msg_id FROM ferry_messages WHERE channel = 'room.http'"
                ).fetchall()

        await asyncio.to_thread(
            wait_for_sync, lambda: len(rows()) == len(history), UNIT * 4, "the database to catch up"
        )
        logged = rows()
        assert sorted(seq for seq, _ in logged) == sorted(history)
        assert {mid for _, mid in logged} >= set(acked)  # the Idempotency-Key is the row's id
    finally:
        final.kill()
