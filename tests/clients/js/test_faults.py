"""The JS client against a real relay, through the loopback fault proxy where a test needs
to break the network: a lost ack, an offline queue with deadlines, pacing under a low
publish rate, and a subscriber that was away longer than the history reaches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.clients.faultproxy import C2S, S2C, FaultProxy
from tests.clients.js.conftest import Serve
from tests.clients.js.node import scenario_env
from tests.helpers import UNIT, Client, ServeProcess


@pytest.fixture
async def proxied(serve: Serve) -> AsyncIterator[tuple[ServeProcess, FaultProxy]]:
    server = serve()
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        yield server, proxy


async def history(url: str, channel: str) -> list[Any]:
    """Every message of `channel` the relay holds, in seq order (data only)."""
    reader = await Client.connect(url)
    try:
        subscribed = await reader.sub(channel, since=0)
        assert subscribed["recovered"] is True, subscribed
        frames = [await reader.expect("msg") for _ in range(subscribed["seq"])]
        assert [f["seq"] for f in frames] == list(range(1, subscribed["seq"] + 1))
        return [f["data"] for f in frames]
    finally:
        await reader.close()


async def test_lost_ack_is_one_message_and_resolves_dup(
    proxied: tuple[ServeProcess, FaultProxy], scenario: Any
) -> None:
    server, proxy = proxied
    k = 5
    dropped = proxy.drop_ack(lambda f: f.get("ch") == "lost.1" and f.get("seq") == k)
    script = scenario("lost_ack", scenario_env(url=proxy.url(), channel="lost.1", k=10))
    await script.start()
    report = await script.finish()
    frame = await asyncio.wait_for(dropped, UNIT)
    assert frame["seq"] == k
    # the publish whose ack was lost resolves once, dup:true, with the original seq
    assert report["results"] == [[i, i == k] for i in range(1, 11)]
    assert report["closes"] == [1006]
    # one message, not two
    assert await history(server.url, "lost.1") == [{"i": i} for i in range(10)]
    pubs = [f for f in proxy.frames(C2S, "pub") if f["data"] == {"i": k - 1}]
    assert len(pubs) == 2 and pubs[0]["mid"] == pubs[1]["mid"] and pubs[0]["id"] == pubs[1]["id"]
    assert len({f["mid"] for f in proxy.frames(C2S, "pub")}) == 10


async def test_offline_queue_keeps_order_and_deadlines(
    proxied: tuple[ServeProcess, FaultProxy], scenario: Any
) -> None:
    server, proxy = proxied
    script = scenario("offline", scenario_env(url=proxy.url(), channel="off.1"))
    await script.start()
    await script.event("online-acked")
    proxy.refuse(True)
    assert proxy.cut() == 1
    script.send("offline")
    expired = await script.event("expired")
    assert expired["state"] in ("waiting", "connecting")
    proxy.refuse(False)
    report = await script.finish(UNIT * 2)
    results = {int(i): r for i, r in report["results"].items()}
    short = [i for i in range(3, 13) if i % 3 == 0]
    assert [results[i] for i in short] == ["timeout"] * len(short)
    kept = [0, 1, 2, *(i for i in range(3, 13) if i % 3)]
    assert [results[i] for i in kept] == list(range(1, len(kept) + 1)), "acked in publish order"
    assert await history(server.url, "off.1") == [{"i": i} for i in kept]
    sent = {f["data"]["i"] for f in proxy.frames(C2S, "pub")}
    assert sent.isdisjoint(short), "an expired publish was sent"


async def test_pacing_under_a_low_publish_rate(serve: Serve, scenario: Any) -> None:
    server = serve(FERRY_PUBLISH_RATE="40", FERRY_PUBLISH_BURST="5")
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        script = scenario("pacing", scenario_env(url=proxy.url(), channel="pace.1", n=80))
        await script.start()
        report = await script.finish(UNIT * 4)
        assert report["limits"]["publish_rate"] == 40 and report["limits"]["publish_burst"] == 5
        assert sorted(report["results"]) == list(range(1, 81))
        assert [f["code"] for f in proxy.frames(S2C, "error")] == [], "refused publishes"
        assert len(proxy.frames(C2S, "pub")) == 80, "each publish sent once"


async def test_history_exceeded_is_one_gap_with_the_exact_range(
    serve: Serve, scenario: Any
) -> None:
    # no replayer, so no deep history from the database: past the ring the data is gone
    server = serve(FERRY_HISTORY_SIZE="10", FERRY_REPLAYER="false")
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        env = scenario_env(url=server.url, proxy_url=proxy.url(), channel="gap.1")
        script = scenario("gap", env)
        await script.start()
        await script.event("live")
        proxy.refuse(True)
        proxy.cut()
        script.send("offline")
        await script.event("published")
        proxy.refuse(False)
        report = await script.finish()
    epoch = report["epoch"]
    assert isinstance(epoch, str) and epoch
    assert report["gaps"] == [
        {"ch": "gap.1", "from": 6, "to": 35, "reason": "history", "epoch": epoch}
    ]
    assert report["received"] == [1, 2, 3, 4, 5, 36]
