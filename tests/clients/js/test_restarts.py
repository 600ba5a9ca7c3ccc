"""The JS client across what servers do to it, as the Python client's
tests/clients/test_restarts.py: a graceful restart under many clients loses and repeats
nothing (also with publishes in flight through it), and `$sys.stats` starting over after a
restart is reported as a new epoch."""

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


async def restart_under_clients(
    serve: Serve, scenario: Any, n: int = READERS, **values: Any
) -> dict[str, Any]:
    """Run restart.mjs: SIGTERM the relay once every reader has the first message, start it
    again on the same port and WAL; the report, with what every client saw checked."""
    server = serve(FERRY_SHUTDOWN_TIMEOUT="5")
    env = scenario_env(url=server.url, n=n, channel="restart.room", **values)
    script: NodeScript = scenario("restart", env)
    await script.start()
    await script.event("before", UNIT * 4)
    server.signal(signal.SIGTERM)  # graceful: every client gets 1001
    assert await asyncio.to_thread(server.wait) == 0
    await asyncio.to_thread(serve, server.port)  # same port, same WAL
    script.send("restarted")
    report = await script.finish(UNIT * 6)
    assert report["n"] == n
    # each reader got every acked message once, in seq order, without a gap
    assert report["wrongCount"] == 0, report["wrong"]
    assert report["restartCloses"] == [1001], "the restart reached every client as 1001"
    assert report["readies"] == [2], "every reader reconnected once"
    return report


async def test_a_graceful_restart_under_many_clients_loses_and_repeats_nothing(
    serve: Serve, scenario: Any
) -> None:
    # as the Python test: one message before the restart, one after, then the marker
    report = await restart_under_clients(serve, scenario, during=0, after=1)
    assert report["acks"] == [[1, False], [2, False], [3, False]]
    assert report["rejected"] == [] and report["errors"] == []


async def test_publishes_in_flight_across_a_graceful_restart_are_acked_once_and_never_refused(
    serve: Serve, scenario: Any
) -> None:
    # One publish at a time from before the SIGTERM until 20 after every client is back.
    # A publish the shutting-down server reads after the shutdown began is left unanswered
    # (Router.draining), never refused: the client resends it after the 1001 with its mid.
    # (Before, the WAL closed first and such a publish was answered `unavailable`: 9 runs
    # in 10 refused 1 to 1,000+ of them.)
    report = await restart_under_clients(serve, scenario, during=1, after=20)
    acks = report["acks"]
    # acked in order, each once, 1..M (one in flight at the restart may be answered
    # dup:true with its original seq); the readers got exactly the acked ones
    assert [seq for seq, _ in acks] == list(range(1, len(acks) + 1))
    assert sum(1 for _, dup in acks if dup) <= 1
    assert len(acks) >= 1 + 20 + 1
    assert report["rejected"] == [], report["rejected"]
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
