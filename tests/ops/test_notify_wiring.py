"""`ferry serve` with FERRY_WEBHOOK_URL posts its operational events: start, and the
database going down (here: wrong credentials) with the reason."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.helpers import UNIT, ServeProcess
from tests.ops.test_notifier import Webhook


async def test_serve_notifies_start_and_db_down(tmp_path: Path) -> None:
    hook = Webhook()
    await hook.start()
    server = ServeProcess(
        {
            "FERRY_WAL_DIR": str(tmp_path / "wal"),
            "FERRY_DB_URL": "mysql://nobody:wrong@127.0.0.1:3306/test?connect_timeout=2",
            "FERRY_WEBHOOK_URL": hook.url(),
        }
    ).start(tmp_path / "serve.log")
    try:
        await asyncio.to_thread(server.wait_healthy)
        seen: dict[str, str] = {}
        deadline = asyncio.get_running_loop().time() + UNIT * 3
        while not {"start", "db_down"} <= seen.keys():
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"got only {sorted(seen)}; log:\n{server.output()}"
            request = await asyncio.wait_for(hook.received.get(), remaining)
            payload = json.loads(request.body)
            text = json.dumps(payload)
            kind = (
                "db_down"
                if "database down" in text
                else "start"
                if "serving on port" in text
                else "other"
            )
            seen[kind] = text
        assert "Access denied" in seen["db_down"]
        assert ":wrong@" not in seen["db_down"]  # the password is redacted
    finally:
        server.kill()
        await hook.close()


async def test_serve_alerts_when_the_wal_stops_accepting_writes(tmp_path: Path) -> None:
    """fdatasync starts failing with EIO (tests/wal/faults.py): the publish that hits it is
    refused, the log turns unwritable, and the webhook hears `wal_unwritable` (once)."""
    from tests.helpers import Client
    from tests.wal.faults import fdatasync_fault_env

    hook = Webhook()
    await hook.start()
    trigger = tmp_path / "fail-now"
    fault_env = fdatasync_fault_env(tmp_path / "site", trigger=trigger, base={})
    server = ServeProcess(
        {
            "PYTHONPATH": fault_env["PYTHONPATH"],
            "FERRY_WAL_DIR": str(tmp_path / "wal"),
            "FERRY_DB_URL": f"sqlite:///{tmp_path / 'ferry.db'}",
            "FERRY_WEBHOOK_URL": hook.url(),
        }
    ).start(tmp_path / "serve.log")
    try:
        await asyncio.to_thread(server.wait_healthy)
        client = await Client.connect(server.url)
        await client.send({"op": "pub", "ch": "room.1", "data": 1, "id": "ok"})
        await client.expect("ack")
        trigger.touch()
        await client.send({"op": "pub", "ch": "room.1", "data": 2, "id": "eio"})
        refused = await client.recv()
        assert refused["op"] == "error", refused

        titles: list[str] = []
        deadline = asyncio.get_running_loop().time() + UNIT * 3
        while "wal_unwritable" not in titles:
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"got only {titles}; log:\n{server.output()}"
            request = await asyncio.wait_for(hook.received.get(), remaining)
            payload = json.loads(request.body)
            titles.append(payload["embeds"][0]["title"])
            if titles[-1] == "wal_unwritable":
                text = payload["embeds"][0]["description"]
                assert "stopped accepting writes" in text and "Input/output error" in text, text
        # The watch looks once a second: a few more looks bring no second alert (an absence,
        # so this one wait is a plain sleep).
        await asyncio.sleep(2.5)
        later = [json.loads(r.body)["embeds"][0]["title"] for r in hook.requests[len(titles) :]]
        assert "wal_unwritable" not in later, later
        await client.ws.close()
    finally:
        server.kill()
        await hook.close()
