"""The JS client across what servers do to it, as the Python client's
tests/clients/test_restarts.py: a graceful restart under many clients loses and repeats
nothing, and `$sys.stats` starting over after a restart is reported as a new epoch."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from tests.clients.js.conftest import Serve
from tests.clients.js.node import NodeScript, scenario_env
from tests.clients.support import ADMIN
from tests.helpers import UNIT

# Clients in one Node process (the Python test has 200 too).
READERS = int(os.environ.get("FERRYTEST_JS_RESTART_CLIENTS", "200"))


async def test_a_graceful_restart_under_many_clients_loses_and_repeats_nothing(
    serve: Serve, scenario: Any
) -> None:
    server = serve(FERRY_SHUTDOWN_TIMEOUT="5")
    script: NodeScript = scenario(
        "restart", scenario_env(url=server.url, n=READERS, channel="restart.room")
    )
    await script.start()
    await script.event("before", UNIT * 4)
    server.signal(signal.SIGTERM)  # graceful: every client gets 1001
    assert await asyncio.to_thread(server.wait) == 0
    await asyncio.to_thread(serve, server.port)  # same port, same WAL
    script.send("restarted")
    report = await script.finish(UNIT * 6)
    assert report["n"] == READERS
    assert report["acks"] == [
        {"seq": 1, "dup": False},
        {"seq": 2, "dup": False},
        {"seq": 3, "dup": False},
    ]
    # each reader got 1, 2, 3 once each, in order, without a gap (the report lists the rest)
    assert report["wrong"] == []
    assert report["restartCloses"] == [1001], "the restart reached every client as 1001"
    assert report["readies"] == [2], "every reader reconnected once"
    assert report["errors"] == []


async def test_sys_stats_across_a_restart_is_a_new_epoch_not_a_silent_continuation(
    serve: Serve, scenario: Any
) -> None:
    env = {"FERRY_ADMIN_TOKEN": ADMIN, "FERRY_STATS_INTERVAL": "0.2"}
    server = serve(**env)
    script: NodeScript = scenario("stats", scenario_env(url=server.url, token=ADMIN))
    await script.start()
    first = await script.event("first")
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait) == 0
    await asyncio.to_thread(serve, server.port, **env)
    report = await script.finish(UNIT * 4)
    old, new = first["epoch"], report["epoch"]
    assert old and new and old != new, "the restarted stream has a new epoch"
    gaps = report["gaps"]
    assert len(gaps) == 1, gaps
    gap = gaps[0]
    assert (gap["ch"], gap["reason"], gap["epoch"], gap["from"]) == ("$sys.stats", "epoch", new, 1)
    before = [m for m in report["received"] if m["after"] == 0]
    after = [m for m in report["received"] if m["after"] == 1]
    # the old stream: consecutive seqs of the old epoch; the new one: from just past the
    # head the resubscription found (what the gap said was not delivered), consecutive
    assert {m["epoch"] for m in before} == {old}
    assert [m["seq"] for m in before] == list(range(before[0]["seq"], before[-1]["seq"] + 1))
    assert {m["epoch"] for m in after} == {new}
    assert [m["seq"] for m in after] == list(range(gap["to"] + 1, gap["to"] + 1 + len(after)))
    assert report["closes"][0] == 1001
    assert report["errors"] == []
