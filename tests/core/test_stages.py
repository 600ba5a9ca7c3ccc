"""Where a durable publish spends its time, as a running relay shows it: every stage of
common.latency.PUBLISH_STAGES in `$sys.stats` (the dashboard's view) and in /metrics."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from common.latency import PUBLISH_STAGES
from tests.helpers import UNIT, Client, StartRelay, http_get

ADMIN = "admin-token-of-at-least-32-bytes-long"


async def test_sys_stats_and_metrics_show_every_stage_of_a_durable_publish(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(durability="wal", admin_token=ADMIN, stats_interval=0.1)
    admin = await Client.connect(relay.url, token=ADMIN)
    await admin.sub("$sys.stats")
    alice = await Client.connect(relay.url)
    await alice.sub("room")
    for i in range(20):
        await alice.pub("room", i, f"p{i}")
    for _ in range(40):  # its ack and its message
        await alice.recv()
    stages: dict[str, Any] = {}
    seen: dict[str, int] = {}
    deadline = asyncio.get_running_loop().time() + 5 * UNIT
    while set(seen) != set(PUBLISH_STAGES):  # the 20 batches may span two intervals
        assert asyncio.get_running_loop().time() < deadline, f"stages so far: {seen}"
        frame = await admin.expect("msg", timeout=5 * UNIT)
        stages = frame["data"]["stages"]
        assert list(stages) == [s for s in PUBLISH_STAGES if s in stages]  # in path order
        for name, stage in stages.items():
            if stage["count"]:
                seen[name] = seen.get(name, 0) + stage["count"]
                assert stage["p50_ms"] is not None and stage["p50_ms"] >= 0
                assert stage["p99_ms"] >= stage["p50_ms"]
    loop = asyncio.get_running_loop()
    status, body = await loop.run_in_executor(None, http_get, relay.http + "/metrics")
    assert status == 200
    counts = dict(
        re.findall(
            r'^ferry_publish_stage_seconds_count\{stage="(\w+)"\} (\S+)$', body.decode(), re.M
        )
    )
    assert set(counts) == set(PUBLISH_STAGES)
    for name in PUBLISH_STAGES:
        assert float(counts[name]) >= seen[name] > 0, name


async def test_the_memory_log_reports_no_disk_stages(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(admin_token=ADMIN, stats_interval=0.1)
    admin = await Client.connect(relay.url, token=ADMIN)
    await admin.sub("$sys.stats")
    alice = await Client.connect(relay.url)
    await alice.sub("room")
    await alice.pub("room", 1, "p")
    await alice.recv()
    await alice.recv()
    for _ in range(50):  # stats rounds, 0.1 s apart
        frame = await admin.expect("msg", timeout=5 * UNIT)
        if "deliver" in frame["data"]["stages"]:
            break
    assert set(frame["data"]["stages"]) == {"deliver", "flush"}
