"""Three `ferry serve` nodes on loopback over the machine's NATS (docs/cluster.md): owners
agree, forwarded publishes get one gapless seq per channel in each publisher's order,
every node delivers the same stream, `since` works on any node (warm from the node's ring,
cold from the owner) and says `recovered: false` past the owner's history."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from cluster.slots import SLOTS, SlotMap, slot_of
from tests.cluster.support import Cluster, require_nats
from tests.helpers import ROOT, UNIT, Client, http_get

PUBS = int(os.environ.get("FERRYTEST_CLUSTER_PUBS", "5000"))  # per publisher (9 of them)
HISTORY = 1000  # FERRY_HISTORY_SIZE of the nodes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_nats()
    nodes = Cluster(tmp_path_factory.mktemp("cluster"), FERRY_HISTORY_SIZE=str(HISTORY))
    try:
        yield nodes.start_all()
    finally:
        nodes.stop_all()


def channel_owned_by(slots: SlotMap, node: str, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(10_000) if slots.owner_of(f"{prefix}{i}") == node)


def test_every_process_agrees_on_the_owners_and_they_spread_evenly() -> None:
    names = [f"room.{i}" for i in range(1000)]
    nodes = ("n1", "n2", "n3")
    here = [SlotMap(nodes).owner_of(name) for name in names]
    assert [SlotMap(reversed(nodes)).owner_of(name) for name in names] == here
    # other processes (another hash seed each): the same owners
    code = (
        "import json,sys; from cluster.slots import SlotMap; "
        "m = SlotMap(sys.argv[1].split(',')); "
        "print(json.dumps([m.owner_of(f'room.{i}') for i in range(1000)]))"
    )
    for seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", code, ",".join(nodes)],
            capture_output=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=UNIT * 4,
        ).stdout
        assert json.loads(out) == here
    counts = {node: here.count(node) for node in nodes}
    assert all(250 <= n <= 420 for n in counts.values()), counts  # 333 each, about
    assert {slot_of(name) for name in names} <= set(range(SLOTS))
    # one node more moves only the slots the new node wins
    moves = SlotMap(nodes).moves(SlotMap((*nodes, "n4")))
    assert moves and all(new == "n4" for _, new in moves.values())
    assert 30 <= len(moves) <= 100, len(moves)  # 64 of 256, about


async def _publish_many(url: str, channel: str, tag: str, n: int) -> list[int]:
    """Publish n messages (pipelined, at most 500 unanswered); the acked seqs in send order."""
    async with websockets.connect(url, max_size=None, open_timeout=UNIT) as ws:
        await ws.recv()
        seqs: dict[int, int] = {}
        window = asyncio.Semaphore(500)

        async def send() -> None:
            for i in range(n):
                await window.acquire()
                frame = {"op": "pub", "ch": channel, "data": {"p": tag, "i": i}, "id": i}
                await ws.send(json.dumps(frame))

        async def receive() -> None:
            while len(seqs) < n:
                frame = json.loads(await asyncio.wait_for(ws.recv(), UNIT * 2))
                assert frame["op"] == "ack", frame
                seqs[frame["id"]] = frame["seq"]
                window.release()

        await asyncio.gather(send(), receive())
        return [seqs[i] for i in range(n)]


async def _collect(client: Client, channel: str, upto: int) -> list[int]:
    seqs: list[int] = []
    while not seqs or seqs[-1] < upto:
        frame = await client.recv(UNIT * 2)
        assert frame["op"] == "msg" and frame["ch"] == channel, frame
        seqs.append(frame["seq"])
    return seqs


async def test_nine_publishers_on_three_nodes_get_one_gapless_seq_delivered_alike(
    cluster: Cluster,
) -> None:
    channel = "busy.1"
    subscribers = [await Client.connect(cluster.url(node)) for node in cluster.ids]
    for sub in subscribers:
        assert (await sub.sub(channel))["seq"] == 0
    runs = [
        _publish_many(cluster.url(node), channel, f"{node}-{k}", PUBS)
        for node in cluster.ids
        for k in range(3)
    ]
    total = 9 * PUBS
    results = await asyncio.wait_for(
        asyncio.gather(*runs, *(_collect(s, channel, total) for s in subscribers)),
        UNIT * 30,
    )
    acks: list[list[int]] = results[:9]
    delivered: list[list[int]] = results[9:]
    for seqs in acks:
        assert all(a < b for a, b in itertools.pairwise(seqs)), "acks out of send order"
    assert sorted(seq for seqs in acks for seq in seqs) == list(range(1, total + 1))
    for seqs in delivered:  # every node: 1..head, in order, once
        assert seqs == list(range(1, total + 1))
    for sub in subscribers:
        await sub.close()


async def _since(url: str, channel: str, since: int) -> tuple[dict[str, Any], list[int]]:
    client = await Client.connect(url)
    try:
        subscribed = await client.sub(channel, since=since)
        seqs: list[int] = []
        if subscribed.get("recovered"):
            seqs = await _collect(client, channel, subscribed["seq"]) if subscribed["seq"] else []
        await client.assert_silent(0.1)
        return subscribed, seqs
    finally:
        await client.close()


async def test_since_on_any_node_warm_and_cold(cluster: Cluster) -> None:
    slots = SlotMap(cluster.ids)
    owner = cluster.ids[0]
    warm, cold = (node for node in cluster.ids if node != owner)
    channel = channel_owned_by(slots, owner, "since.")
    # the warm node follows the channel from its first message on
    follower = await Client.connect(cluster.url(warm))
    await follower.sub(channel)
    publisher = await Client.connect(cluster.url(cold))
    for i in range(50):
        await publisher.pub(channel, {"i": i}, msg_id=str(i))
    for i in range(50):
        assert (await publisher.expect("ack"))["seq"] == i + 1
    assert await _collect(follower, channel, 50) == list(range(1, 51))

    subscribed, seqs = await _since(cluster.url(warm), channel, 20)  # from its ring
    assert subscribed["recovered"] is True and subscribed["seq"] == 50
    assert seqs == list(range(21, 51))
    subscribed, seqs = await _since(cluster.url(cold), channel, 0)  # from the owner
    assert subscribed["recovered"] is True and subscribed["seq"] == 50
    assert seqs == list(range(1, 51))
    # the epoch is the owner's on every node: a client moving between nodes keeps it
    epochs = set()
    for node in cluster.ids:
        client = await Client.connect(cluster.url(node))
        epochs.add((await client.sub(channel, since=50))["epoch"])
        await client.close()
    assert len(epochs) == 1

    # past the owner's history (no database behind it here): honestly not recovered
    for i in range(50, HISTORY + 100):
        await publisher.pub(channel, {"i": i})
    head = HISTORY + 100
    for _ in range(50, head):
        await publisher.expect("ack")
    await _collect(follower, channel, head)
    for node in (warm, cold, owner):
        subscribed, seqs = await _since(cluster.url(node), channel, 5)
        assert subscribed["recovered"] is False and subscribed["seq"] == head, (node, subscribed)
    subscribed, seqs = await _since(cluster.url(cold), channel, head - 10)
    assert subscribed["recovered"] is True and seqs == list(range(head - 9, head + 1))
    await follower.close()
    await publisher.close()


async def test_a_retry_with_the_same_mid_through_another_node_is_a_duplicate(
    cluster: Cluster,
) -> None:
    slots = SlotMap(cluster.ids)
    owner = cluster.ids[1]
    channel = channel_owned_by(slots, owner, "retry.")
    others = [node for node in cluster.ids if node != owner]
    first = await Client.connect(cluster.url(others[0]), user="alice")
    await first.send({"op": "pub", "ch": channel, "data": 1, "mid": "m-1", "id": 1})
    ack = await first.expect("ack")
    again = await Client.connect(cluster.url(others[1]), user="alice")
    await again.send({"op": "pub", "ch": channel, "data": 1, "mid": "m-1", "id": 2})
    dup = await again.expect("ack")
    assert dup["seq"] == ack["seq"] and dup.get("dup") is True
    # another sender's same mid is its own message
    bob = await Client.connect(cluster.url(others[1]), user="bob")
    await bob.send({"op": "pub", "ch": channel, "data": 1, "mid": "m-1", "id": 3})
    assert (await bob.expect("ack"))["seq"] == ack["seq"] + 1
    for client in (first, again, bob):
        await client.close()


def test_the_wal_of_each_node_holds_only_its_own_channels(cluster: Cluster) -> None:
    """The forwarded messages live in their owner's WAL only (`ferry wal dump`)."""
    slots = SlotMap(cluster.ids)
    seen: set[str] = set()
    for node in cluster.ids:
        out = subprocess.run(
            [sys.executable, "-m", "core.cli", "wal", "dump", str(cluster.tmp / node / "wal")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=UNIT * 6,
            check=True,
        ).stdout
        records = [json.loads(line) for line in out.splitlines()]
        channels = {r["ch"] for r in records if r["type"] == "message"}
        assert all(slots.owner_of(ch) == node for ch in channels), (node, channels)
        seen |= channels
    assert "busy.1" in seen  # the test above ran first: 45,000 forwarded publishes


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_metrics_count_what_crossed_nodes(cluster: Cluster) -> None:
    """After the nine publishers above (this module runs in order, on one cluster)."""
    owner = SlotMap(cluster.ids).owner_of("busy.1")  # 45,000 publishes, 30,000 forwarded
    forwarded = intake = 0.0
    for node in cluster.ids:
        status, body = http_get(cluster.nodes[node].http + "/metrics")
        assert status == 200
        text = body.decode()
        assert _metric(text, "ferry_cluster_nats_connected") == 1
        forwarded += _metric(text, "ferry_cluster_forwarded_total")
        if node == owner:
            intake = _metric(text, "ferry_cluster_intake_total")
        else:
            assert _metric(text, "ferry_cluster_feed_applied_total") >= 9 * PUBS
    assert forwarded >= 6 * PUBS and intake >= 6 * PUBS
