"""The cluster's failure table, as tested (docs/cluster.md): an owner SIGKILLed under load,
rotating the owner; a node started with another node list."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import websockets

from cluster.slots import SlotMap
from tests.cluster.support import Cluster, Load, require_nats
from tests.helpers import UNIT, Client, ServeProcess, wait_for, wait_for_sync

ROUNDS = int(os.environ.get("FERRYTEST_CLUSTER_KILL_ROUNDS", "3"))


def owned_by(slots: SlotMap, node: str, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(10_000) if slots.owner_of(f"{prefix}{i}") == node)


@dataclass
class Follower:
    """A subscriber on a node that does not own the channel: every seq it got, in order."""

    client: Client
    channel: str
    seqs: list[int] = field(default_factory=list)

    async def run(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                frame = await self.client.recv(timeout=3600)
                assert frame["op"] == "msg" and frame["ch"] == self.channel, frame
                self.seqs.append(frame["seq"])


async def _head(url: str, channel: str) -> int:
    client = await Client.connect(url)
    try:
        return int((await client.sub(channel))["seq"])
    finally:
        await client.close()


async def _history(url: str, channel: str, head: int) -> dict[int, int]:
    client = await Client.connect(url)
    try:
        subscribed = await client.sub(channel, since=0)
        assert subscribed["recovered"] is True and subscribed["seq"] >= head, subscribed
        got: dict[int, int] = {}
        while len(got) < subscribed["seq"]:
            frame = await client.expect("msg")
            got[frame["seq"]] = frame["data"]["i"]
        assert sorted(got) == list(range(1, subscribed["seq"] + 1))
        return got
    finally:
        await client.close()


async def _probe(url: str, channel: str) -> tuple[str, float]:
    """One publish: its answer's op or code, and how long it took."""
    client = await Client.connect(url)
    try:
        t0 = time.monotonic()
        await client.pub(channel, "probe", msg_id="probe")
        frame = await client.recv(UNIT * 2)
        took = time.monotonic() - t0
        if frame["op"] == "error":  # says which: not accepted (no responders)
            assert "cannot be reached; nothing was accepted" in frame["reason"], frame
        return frame.get("code", frame["op"]), took
    finally:
        await client.close()


async def _kill_round(cluster: Cluster, slots: SlotMap, round_no: int) -> float:
    """One owner SIGKILLed under load and restarted; how long `unavailable` took after it."""
    victim = cluster.ids[round_no % len(cluster.ids)]
    ingress, watcher = (node for node in cluster.ids if node != victim)
    doomed = owned_by(slots, victim, f"kill{round_no}.")
    spared = owned_by(slots, watcher, f"spared{round_no}.")
    follower = Follower(await Client.connect(cluster.url(watcher)), doomed)
    await follower.client.sub(doomed)
    watching = asyncio.create_task(follower.run())
    stop = asyncio.Event()
    load, other = Load(cluster.url(ingress), doomed), Load(cluster.url(ingress), spared)
    running = asyncio.gather(load.run(stop), other.run(stop))
    await wait_for(lambda: len(load.acked) >= 100, UNIT * 2, "acks before the kill")

    cluster.nodes[victim].kill()  # SIGKILL
    code, took = await _probe(cluster.url(ingress), doomed)
    assert code == "unavailable"
    code, took = await _probe(cluster.url(ingress), doomed)  # NATS knows it is gone now
    assert code == "unavailable" and took < 1.0, took  # not the 2 s forward timeout
    spared_before = len(other.acked)
    await wait_for(lambda: len(other.acked) >= spared_before + 50, UNIT, "other slots' acks")
    acked_before = len(load.acked)

    cluster.start(victim)
    cluster.wait_ready(victim)
    await wait_for(lambda: len(load.acked) >= acked_before + 100, UNIT * 2, "acks again")
    stop.set()
    await asyncio.wait_for(running, UNIT * 2)

    head = await _head(cluster.url(victim), doomed)
    assert head >= max(load.acked)  # seqs continued from the WAL's head
    history = await _history(cluster.url(victim), doomed, head)
    for seq, i in load.acked.items():  # nothing acked lost, each under its seq
        assert history[seq] == i
    await wait_for(lambda: len(follower.seqs) >= head, UNIT * 2, "the missed tail")
    assert follower.seqs == list(range(1, head + 1))  # no gap, nothing twice
    await follower.client.close()
    await asyncio.wait_for(watching, UNIT)
    return took


async def test_owner_sigkill_under_load_loses_nothing_acked_and_followers_catch_up(
    tmp_path: Path,
) -> None:
    require_nats()
    cluster = Cluster(tmp_path).start_all()
    slots = SlotMap(cluster.ids)
    try:
        took = [await _kill_round(cluster, slots, round_no) for round_no in range(ROUNDS)]
        print(f"unavailable after an owner SIGKILL: {[round(t * 1000, 1) for t in took]} ms")
    finally:
        cluster.stop_all()


def test_a_changed_node_list_is_refused_naming_the_slots(tmp_path: Path) -> None:
    require_nats()
    cluster = Cluster(tmp_path, n=3)
    first = cluster.start("n1")
    cluster.wait_ready("n1")  # started (a SIGTERM before the handlers are in kills it)
    first.signal()
    assert first.wait() == 0
    assert json.loads((tmp_path / "n1" / "wal" / "cluster.json").read_text())["nodes"] == [
        "n1", "n2", "n3",
    ]  # fmt: skip

    moved = SlotMap(("n1", "n2", "n3")).moves(SlotMap(("n1", "n2")))
    refused = cluster.start("n1", FERRY_CLUSTER_NODES="n1,n2")
    assert refused.wait() != 0
    out = refused.output()
    assert f"{len(moved)} slots would move" in out, out
    slot, (old, new) = next(iter(moved.items()))
    assert f"{slot} ({old} -> {new})" in out
    # the same list again: it starts
    again = cluster.start("n1")
    again.wait_healthy()
    again.kill()


def test_a_single_node_wal_cannot_join_a_cluster_silently(tmp_path: Path) -> None:
    require_nats()
    wal = tmp_path / "wal"
    single = ServeProcess({"FERRY_WAL_DIR": str(wal), "FERRY_REPLAYER": "false"})
    single.start(tmp_path / "single.log").wait_healthy()
    single.signal()
    assert single.wait() == 0
    env = {
        "FERRY_WAL_DIR": str(wal),
        "FERRY_REPLAYER": "false",
        "FERRY_NODE_ID": "n1",
        "FERRY_CLUSTER_NODES": "n1,n2",
        "FERRY_CLUSTER_ID": "refused",
    }
    joined = ServeProcess(env).start(tmp_path / "joined.log")
    assert joined.wait() != 0
    wait_for_sync(lambda: "slots would move" in joined.output(), UNIT, "the refusal")
    assert "was written by a cluster of n1," in joined.output()


async def _read_seqs(client: Client, channel: str, upto: int) -> list[int]:
    seqs: list[int] = []
    while not seqs or seqs[-1] < upto:
        frame = await client.expect("msg", UNIT * 2)
        assert frame["ch"] == channel
        seqs.append(frame["seq"])
    return seqs


async def _publish(client: Client, channel: str, n: int) -> int:
    for i in range(n):
        await client.pub(channel, i)
    seq = 0
    for _ in range(n):
        seq = (await client.expect("ack"))["seq"]
    return int(seq)


async def test_non_owner_sigkill_its_clients_recover_elsewhere_with_since(tmp_path: Path) -> None:
    require_nats()
    cluster = Cluster(tmp_path).start_all()
    try:
        slots = SlotMap(cluster.ids)
        owner, doomed, spare = cluster.ids
        channel = owned_by(slots, owner, "moving.")
        client = await Client.connect(cluster.url(doomed))
        await client.sub(channel)
        publisher = await Client.connect(cluster.url(spare))
        assert await _publish(publisher, channel, 30) == 30
        seen = await _read_seqs(client, channel, 30)
        cluster.nodes[doomed].kill()  # SIGKILL: its clients lose the connection
        head = await _publish(publisher, channel, 30)  # the owner is unaffected
        assert head == 60
        moved = await Client.connect(cluster.url(spare))
        subscribed = await moved.sub(channel, since=seen[-1])
        assert subscribed["recovered"] is True and subscribed["seq"] == head
        assert seen + await _read_seqs(moved, channel, head) == list(range(1, head + 1))
        for c in (moved, publisher):
            await c.close()
    finally:
        cluster.stop_all()


async def test_a_stopped_follower_resumes_in_order_or_closes_with_4409(tmp_path: Path) -> None:
    require_nats()
    cluster = Cluster(tmp_path, n=2).start_all()
    try:
        owner, follower = cluster.ids
        channel = owned_by(SlotMap(cluster.ids), owner, "stop.")
        watcher = await Client.connect(cluster.url(follower))
        await watcher.sub(channel)
        publisher = await Client.connect(cluster.url(owner))
        assert await _publish(publisher, channel, 10) == 10
        assert await _read_seqs(watcher, channel, 10) == list(range(1, 11))
        process = cluster.nodes[follower]
        process.signal(signal.SIGSTOP)
        try:  # stopped for 1.5 s (the fault's length) while the owner acks 200 a batch
            t0 = time.monotonic()
            head = 10
            while time.monotonic() - t0 < 1.5:
                head = await _publish(publisher, channel, 200)  # the owner does not wait
            took = time.monotonic() - t0
        finally:
            process.signal(signal.SIGCONT)
        assert head > 10 and (head - 10) % 200 == 0
        got: list[int] = []
        try:
            got = await _read_seqs(watcher, channel, head)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4409, closed
        assert got == list(range(11, 11 + len(got)))  # in order, never twice
        print(
            f"{head - 10} acks in {took:.2f}s with the follower stopped; it then delivered {len(got)}"
        )
        for c in (watcher, publisher):
            await c.close()
    finally:
        cluster.stop_all()
