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
