"""Crash mid-stream: the JS client's publisher and subscriber ride out SIGKILLs of the relay.

3,000 messages, at most 100 awaiting their ack; the relay is SIGKILLed at a random point
and restarted on the same WAL and port, up to three times (while the
stream still runs: a fast one can be over before the third). Afterwards: every publish resolved
exactly once, the acked seqs are exactly 1..N (a publish whose ack was lost in the crash is
resent with its mid and answered dup:true with its original seq), and the subscriber got
every message exactly once, in order, with its payload, without a gap."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from typing import Any

from tests.clients.js.conftest import Serve
from tests.clients.js.node import NodeScript, scenario_env
from tests.helpers import UNIT, Client

N = 3000
ROUNDS = int(os.environ.get("FERRYTEST_JS_CRASH_ROUNDS", "3"))
CHANNEL = "crash.1"  # the scenario's default channel


def check_stream(report: dict[str, Any], n: int) -> None:
    results = report["results"]
    assert report["resolvedTwice"] == 0
    assert report["maxInflight"] <= 100
    errors = [(i, r) for i, r in enumerate(results) if r is None or r[0] == "error"]
    assert errors == [], f"publishes that did not resolve with an ack: {errors[:10]}"
    seqs = sorted(r[0] for r in results)
    assert seqs == list(range(1, n + 1)), "acked seqs are not exactly 1..N"
    seq_of = {i: r[0] for i, r in enumerate(results)}
    received = report["received"]
    delivered = [seq for seq, _, _ in received]
    marker = n + 1  # the closing publish after the N
    assert delivered == [*range(1, n + 1), marker], "not each exactly once, in order"
    for seq, i, pad in received[:-1]:
        assert seq_of[i] == seq and pad == i % 50, f"seq {seq} carries message {i}"
    assert report["gaps"] == []


async def test_crash_mid_stream(serve: Serve, scenario: Any) -> None:
    rng = random.Random()
    server = serve()
    port = server.port
    script: NodeScript = scenario("crash", scenario_env(url=server.url, n=N, window=100))
    await script.start()
    await script.event("ready")
    kills = []
    heads: list[int] = []  # the channel's head each restart recovered
    head = 0  # the channel's head after the last restart: no ack before the kill went past it
    for round_no in range(ROUNDS):
        # a random moment in this round's third of the stream, and after the restart: the
        # events read so far may run ahead of the kill, so an ack count past the head the
        # new server recovered is the proof the publisher is back
        at = rng.randrange(round_no * N // ROUNDS + 100, (round_no + 1) * N // ROUNDS - 100, 100)
        at = max(at, head + 1)
        if at > N - 50:
            break  # the stream is (nearly) over: no kill can come mid-stream any more

        def acked(at: int = at) -> bool:
            return any(e.get("count", 0) >= at for e in script.events if e["event"] == "acked")

        await script.wait_for(acked, f"{at} acks", UNIT * 6)
        await asyncio.sleep(rng.uniform(0, 0.05))  # not only on an ack boundary
        server.signal(signal.SIGKILL)
        assert await asyncio.to_thread(server.wait) == -signal.SIGKILL
        kills.append(at)
        server = await asyncio.to_thread(serve, port)
        probe = await Client.connect(server.url)
        head = int((await probe.sub(CHANNEL))["seq"])
        await probe.close()
        heads.append(head)
    report = await script.finish(UNIT * 12)
    check_stream(report, N)
    # the publisher reconnected after every kill that came while it still had messages to
    # send (the stream can be over before a late round's kill); the subscriber at least once
    # (a kill may come before it is back)
    mid_stream = sum(1 for h in heads if h < N)
    assert mid_stream >= 1, heads
    reconnects = report["reconnects"]
    assert reconnects["pub"] >= mid_stream and reconnects["sub"] >= 1, (reconnects, heads)
    dups = sum(1 for r in report["results"] if r[1])
    print(
        f"crash mid-stream: {len(kills)} kills (after {kills} acks; heads {heads}), {N} messages, "
        f"0 lost, 0 duplicated, 0 gaps; {dups} acks were dup:true"
    )
