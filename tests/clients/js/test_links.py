"""The JS client on links that misbehave and across encodings, as the Python client's
tests/clients/test_client.py: a half-open link found by its silence and replaced, inbox
DMs sent while offline caught up once and in order, and msgpack and JSON clients that see
the same values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.clients.faultproxy import C2S, FaultProxy
from tests.clients.js.conftest import Serve
from tests.clients.js.node import NodeScript, scenario_env
from tests.helpers import UNIT, ServeProcess


@pytest.fixture
async def proxied(serve: Serve) -> AsyncIterator[tuple[ServeProcess, FaultProxy]]:
    server = serve()
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        yield server, proxy


async def test_half_open_link_is_detected_by_silence_and_replaced(
    proxied: tuple[ServeProcess, FaultProxy], scenario: Any
) -> None:
    server, proxy = proxied
    env = scenario_env(url=server.url, proxy_url=proxy.url(), channel="halfopen")
    script: NodeScript = scenario("halfopen", env)
    await script.start()
    await script.event("ready")
    assert proxy.blackhole() == 1  # the socket stays open, nothing flows
    script.send("blackholed")
    report = await script.finish(UNIT * 3)
    acks = {data: (seq, dup) for seq, dup, data in report["acks"]}
    # each acked once, never dup (the two into the hole were never logged before), seqs
    # 1..6 in each publisher's order, the marker last
    assert sorted(seq for seq, _ in acks.values()) == [1, 2, 3, 4, 5, 6]
    assert not any(dup for _, dup in acks.values())
    assert acks[0][0] < acks[1][0] < acks[2][0] and acks["x0"][0] < acks["x1"][0]
    assert acks["end"][0] == 6
    by_seq = sorted((seq, data) for data, (seq, _) in acks.items())
    assert report["received"] == [list(x) for x in by_seq], "each once, in order"
    # the subscriber's two went into the hole and were resent on the new link, same mids
    into_hole, resent = report["mids"]
    assert len(into_hole) == 2 and resent == into_hole
    assert [f["mid"] for f in proxy.frames(C2S, "pub")] == resent
    assert report["gaps"] == []
    # found by silence (4000, the client's own code), not by a close from either side
    assert report["closes"] == [4000]
    assert report["states"].count("ready") == 2
    assert report["silentPings"] >= 1, "it pinged into the silence before giving up"
    assert report["sockets"] == 2 and proxy.accepted == 2
    assert report["resub"] == 1
    resubs = [f for f in proxy.frames(C2S, "sub") if f["ch"] == "halfopen"]
    assert [f.get("since") for f in resubs] == [None, 0], "resubscribed from where it was"
    assert report["errors"] == []


async def test_inbox_dms_sent_while_offline_arrive_once_in_order(
    proxied: tuple[ServeProcess, FaultProxy], scenario: Any
) -> None:
    server, proxy = proxied
    env = scenario_env(bob_url=proxy.url("/ws?user=bob"), alice_url=server.url + "?user=alice")
    script: NodeScript = scenario("inbox", env)
    await script.start()
    await script.event("online")
    proxy.refuse(True)
    assert proxy.cut() == 1
    script.send("offline")
    await script.event("sent")  # d2..d4 were acked while bob was away
    proxy.refuse(False)
    report = await script.finish(UNIT * 3)
    assert report["inbox"] == {"ch": "@bob", "seq": 0}
    assert report["box"] == {"ch": "@bob", "seq": 6, "same": True}
    assert report["acks"] == [1, 2, 3, 4, 5, 6]
    assert report["received"] == [[i, f"d{i}", "alice"] for i in range(1, 7)]
    assert report["gaps"] == [] and report["errors"] == []
    assert report["closes"][0] == 1006  # the cut
    # caught up by resubscribing with the last inbox seq read, in the same epoch (the first
    # connection's sub since=0 is the client tracking the inbox from the welcome's head)
    subs = [f for f in proxy.frames(C2S, "sub") if f["ch"] == "@bob"]
    assert [f["since"] for f in subs] == [0, 1], subs
    assert len({f["epoch"] for f in subs}) == 1


async def test_msgpack_and_json_clients_see_the_same_values(serve: Serve, scenario: Any) -> None:
    server = serve()
    script: NodeScript = scenario("codecs", scenario_env(url=server.url, channel="mix"))
    await script.start()
    report = await script.finish()
    assert report["protocols"] == {
        "mp": "ferry.v1.msgpack",
        "mpBinary": True,
        "js": "ferry.v1.json",
        "jsBinary": False,
    }
    assert report["acks"] == [1, 2]
    first = {"f": 1.5, "s": "é", "big": 2**40, "neg": -7}
    second = {"list": [1, None, True], "s": "ü", "nested": {"a": [0.25]}}
    # bytes are bytes in msgpack and base64 text in JSON; everything else is equal
    assert report["got"]["mp"] == [[1, {"bin": {"bytes": [0, 1]}, **first}], [2, second]]
    assert report["got"]["js"] == [[1, {"bin": "AAE=", **first}], [2, second]]
    assert report["errors"] == []
