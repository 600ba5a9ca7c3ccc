"""Fan-out: every subscriber gets every message, in seq order, once."""

from __future__ import annotations

import asyncio
import json

from tests.helpers import UNIT, Client, Relay, StartRelay, gather_bounded

SUBSCRIBERS = 200
MESSAGES = 150


async def _collect(client: Client, n: int) -> list[int]:
    seqs: list[int] = []
    while len(seqs) < n:
        frame = await client.recv(UNIT * 2)
        assert frame["op"] == "msg" and frame["ch"] == "fan.out", frame
        assert frame["data"] == {"i": frame["seq"] - 1, "pad": "x" * 64}
        seqs.append(frame["seq"])
    return seqs


async def test_200_subscribers_get_everything_in_order(start_relay: StartRelay) -> None:
    # All 200 connect at once from 127.0.0.1: more unfinished handshakes from one address
    # than the default max_handshakes_per_ip lets in (tests/core/test_adapter_guard.py).
    relay = await start_relay(max_handshakes_per_ip=SUBSCRIBERS)
    subs = await gather_bounded(
        *(Client.connect(relay.url, user=f"s{i}") for i in range(SUBSCRIBERS))
    )
    await gather_bounded(*(c.sub("fan.out") for c in subs))
    publisher = await Client.connect(relay.url, user="pub")
    for i in range(MESSAGES):
        await publisher.send(
            {"op": "pub", "ch": "fan.out", "data": {"i": i, "pad": "x" * 64}, "id": str(i)}
        )
    acks = [await publisher.expect("ack") for _ in range(MESSAGES)]
    assert [a["seq"] for a in acks] == list(range(1, MESSAGES + 1))
    assert [a["id"] for a in acks] == [str(i) for i in range(MESSAGES)]
    results = await gather_bounded(*(_collect(c, MESSAGES) for c in subs), timeout=UNIT * 12)
    for seqs in results:
        assert seqs == list(range(1, MESSAGES + 1))  # no gaps, no duplicates, in order
    # nothing extra after the last one
    await subs[0].assert_silent()
    assert relay.hub.router.counters.deliveries == SUBSCRIBERS * MESSAGES
    await asyncio.gather(*(c.close() for c in [*subs, publisher]))


async def test_each_message_is_written_once_per_tick_per_connection(relay: Relay) -> None:
    """Coalescing: a burst of messages reaches a subscriber in far fewer socket writes."""
    sub = await Client.connect(relay.url, user="s")
    await sub.sub("burst")
    publisher = await Client.connect(relay.url, user="p")
    flusher = relay.hub.flusher
    writes_before = flusher.writes
    burst = 500
    frames = [json.dumps({"op": "pub", "ch": "burst", "data": i}) for i in range(burst)]
    for text in frames:
        await publisher.ws.send(text)
    got = 0
    while got < burst:
        frame = await sub.recv()
        got += frame["op"] == "msg"
    writes = flusher.writes - writes_before
    # acks to the publisher + msgs to the subscriber: without coalescing this is 2 * burst
    assert writes < burst, f"{writes} socket writes for {2 * burst} frames"


async def test_long_history_replay_is_paced_not_dropped(start_relay: StartRelay) -> None:
    """`sub` with `since` over a history far larger than the outbox limit: the replay is
    paced by the socket (no 4408), in order, and live messages follow without a gap."""
    relay = await start_relay(
        max_frame_bytes=4096,
        max_outbox_bytes=16 * 1024,
        history_size=5000,
        history_channel_bytes=8 * 1024 * 1024,
        publish_rate=1e6,
        publish_burst=10**6,
    )
    publisher = await Client.connect(relay.url)
    total = 3000
    for i in range(total):
        await publisher.pub("hist", {"i": i, "pad": "y" * 150})
        if i % 200 == 199:
            for _ in range(200):
                await publisher.expect("ack")
    reader = await Client.connect(relay.url)
    subscribed = await reader.sub("hist", since=0)
    assert subscribed["seq"] == total and subscribed["recovered"] is True
    # more messages while the replay is still running
    for i in range(total, total + 50):
        await publisher.pub("hist", {"i": i, "pad": "y" * 150})
    seqs: list[int] = []
    while len(seqs) < total + 50:
        frame = await reader.expect("msg")
        assert frame["data"]["i"] == frame["seq"] - 1
        seqs.append(frame["seq"])
    assert seqs == list(range(1, total + 51))
    assert relay.hub.slow_consumer_closes == 0
