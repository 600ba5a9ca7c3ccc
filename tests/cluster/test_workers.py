"""`ferry serve --workers 2`: two processes share the port (SO_REUSEPORT), each a cluster
node `<node>-w<i>`; connections land on both, a channel's stream is one across them, and
a changed worker count is refused like any changed node list."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from cluster.slots import SlotMap
from core.workers import STARTUP_S
from tests.cluster.support import NATS_URL, require_nats
from tests.helpers import UNIT, Client, ServeProcess, wait_for_sync


async def _until(client: Client, frame: dict[str, Any], op: str) -> dict[str, Any]:
    """Send `frame` until it is answered with `op`: a worker that has not joined the cluster
    yet answers `unavailable` (its owner has no responders: nothing was accepted)."""
    deadline = time.monotonic() + UNIT * 2
    while True:
        await client.send(frame)
        answer = await client.recv()
        if answer["op"] == op:
            return answer
        assert answer.get("code") == "unavailable" and time.monotonic() < deadline, answer


def _workers(tmp_path: Path, cluster_id: str, n: int, log: str) -> ServeProcess:
    env = {
        "FERRY_NODE_ID": "h1",
        "FERRY_CLUSTER_ID": cluster_id,
        "FERRY_NATS_URL": NATS_URL,
        "FERRY_WAL_DIR": str(tmp_path / "wal"),
        "FERRY_REPLAYER": "false",
    }
    return ServeProcess(env, args=["--workers", str(n)]).start(tmp_path / log)


async def test_two_workers_share_the_port_and_one_stream(tmp_path: Path) -> None:
    require_nats()
    cluster_id = "w" + secrets.token_hex(6)
    serve = _workers(tmp_path, cluster_id, 2, "serve.log")
    try:
        serve.wait_healthy()
        # the second worker may start listening a moment after the first answers /healthz
        clients: list[Client] = []
        by_node: dict[str, list[Client]] = {}
        deadline = time.monotonic() + UNIT * 4
        while len(by_node) < 2 or min(len(c) for c in by_node.values()) < 2:
            assert time.monotonic() < deadline, f"connections only on {set(by_node)}"
            client = await Client.connect(serve.url)
            clients.append(client)
            by_node.setdefault(client.welcome["node"], []).append(client)
        assert set(by_node) == {"h1-w1", "h1-w2"}
        slots = SlotMap(("h1-w1", "h1-w2"))
        channel = next(f"w.{i}" for i in range(100) if slots.owner_of(f"w.{i}") == "h1-w2")
        publisher = by_node["h1-w1"][0]  # forwarded to the other worker
        subscribers = [by_node["h1-w1"][1], by_node["h1-w2"][0]]
        for sub in subscribers:  # (a worker may not have joined yet: unavailable, retried)
            await _until(sub, {"op": "sub", "ch": channel}, "subscribed")
        first = {"op": "pub", "ch": channel, "data": 0, "mid": "0", "id": "0"}  # its mid: safe
        assert (await _until(publisher, first, "ack"))["seq"] == 1
        for i in range(1, 20):
            await publisher.pub(channel, i, msg_id=str(i))
        assert [(await publisher.expect("ack"))["seq"] for _ in range(19)] == list(range(2, 21))
        for sub in subscribers:
            assert [(await sub.expect("msg"))["seq"] for _ in range(20)] == list(range(1, 21))
        for client in clients:
            await client.close()
        serve.signal(signal.SIGTERM)
        assert serve.wait(UNIT * 4) == 0
        assert (tmp_path / "wal" / "w1").is_dir() and (tmp_path / "wal" / "w2").is_dir()

        refused = _workers(tmp_path, cluster_id, 3, "refused.log")
        assert refused.wait(UNIT * 4) != 0
        assert "slots would move" in refused.output()
    finally:
        serve.kill()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_a_killed_worker_is_started_again(tmp_path: Path) -> None:
    require_nats()
    serve = _workers(tmp_path, "w" + secrets.token_hex(6), 2, "serve.log")
    try:
        serve.wait_healthy()
        assert serve.proc is not None
        supervisor = serve.proc.pid
        wait_for_sync(lambda: len(_children(supervisor)) == 2, UNIT, "two workers")
        # past the start-up grace: a worker ending now is restarted, not the end of all
        wait_for_sync(
            lambda: time.monotonic() - _started(supervisor) > STARTUP_S + 1, UNIT * 2, "grace"
        )
        victim = _children(supervisor)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for_sync(
            lambda: len(kids := _children(supervisor)) == 2 and victim not in kids,
            UNIT * 2,
            "the worker started again",
        )
        assert serve.proc.poll() is None
        wait_for_sync(  # serving again (a SIGTERM before its handlers are in would kill it)
            lambda: serve.output().count("ferry serving") == 3, UNIT * 2, "the new worker"
        )
        serve.signal(signal.SIGTERM)
        assert serve.wait(UNIT * 4) == 0
    finally:
        serve.kill()


def _started(pid: int) -> float:
    """How long ago (monotonic) the process started, from /proc (field 22, clock ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.monotonic() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


async def _on(url: str, node: str) -> Client:
    """A connection that landed on worker `node` (the kernel picks: others are closed)."""
    deadline = time.monotonic() + UNIT * 2
    while True:
        client = await Client.connect(url)
        if client.welcome["node"] == node:
            return client
        await client.close()
        assert time.monotonic() < deadline, f"no connection landed on {node}"


async def _pipelined(client: Client, channel: str, tag: str, n: int) -> list[int]:
    for i in range(n):
        await client.send({"op": "pub", "ch": channel, "data": {"p": tag, "i": i}, "id": i})
    acks = [await client.expect("ack") for _ in range(n)]
    assert [a["id"] for a in acks] == list(range(n))
    return [int(a["seq"]) for a in acks]


async def test_publishers_on_both_workers_get_one_gapless_stream(tmp_path: Path) -> None:
    """Tests 2, 3 and 5 of issue 16 with the workers as the nodes, at a smaller size."""
    require_nats()
    serve = _workers(tmp_path, "w" + secrets.token_hex(6), 2, "serve.log")
    try:
        serve.wait_healthy()
        nodes = ("h1-w1", "h1-w2")
        channel = next(
            f"g.{i}" for i in range(100) if SlotMap(nodes).owner_of(f"g.{i}") == nodes[0]
        )
        subs = [await _on(serve.url, node) for node in nodes]
        for sub in subs:
            await _until(sub, {"op": "sub", "ch": channel}, "subscribed")
        pubs = [await _on(serve.url, node) for node in nodes for _ in range(3)]
        first = {"op": "pub", "ch": channel, "data": "first", "mid": "first", "id": "first"}
        await _until(pubs[-1], first, "ack")  # the owner has joined: forwards find it
        n = 1000
        runs = [_pipelined(p, channel, str(k), n) for k, p in enumerate(pubs)]
        acks: list[list[int]] = await asyncio.wait_for(asyncio.gather(*runs), UNIT * 6)
        total = 6 * n + 1
        for seqs in acks:
            assert seqs == sorted(seqs)
        assert sorted(s for seqs in acks for s in seqs) == list(range(2, total + 1))
        for sub in subs:
            got = [(await sub.expect("msg"))["seq"] for _ in range(total)]
            assert got == list(range(1, total + 1))
        late = await _on(serve.url, nodes[1])  # the other worker, from its ring
        subscribed = await late.sub(channel, since=total - 100)
        assert subscribed["recovered"] is True and subscribed["seq"] == total
        assert [(await late.expect("msg"))["seq"] for _ in range(100)] == list(
            range(total - 99, total + 1)
        )
        old = await late.sub(channel, since=10)  # past every ring (1,000 messages): honest
        assert old["recovered"] is False and old["seq"] == total
        for client in (*subs, *pubs, late):
            await client.close()
    finally:
        serve.kill()


async def test_the_owner_worker_sigkilled_under_load_loses_nothing_acked(tmp_path: Path) -> None:
    """Test 6 of issue 16 with the workers as the nodes: the worker owning the channel is
    SIGKILLed while a publisher on the other worker forwards to it. Its publishes answer
    `unavailable` at once, the supervisor starts it again on its WAL, the seqs go on, and
    the subscriber on the other worker gets every acked message once, in order, no gap."""
    require_nats()
    serve = _workers(tmp_path, "w" + secrets.token_hex(6), 2, "serve.log")
    try:
        await asyncio.to_thread(serve.wait_healthy)
        assert serve.proc is not None
        supervisor = serve.proc.pid
        nodes = ("h1-w1", "h1-w2")
        channel = next(
            f"k.{i}" for i in range(100) if SlotMap(nodes).owner_of(f"k.{i}") == nodes[0]
        )
        sub = await _on(serve.url, nodes[1])
        await _until(sub, {"op": "sub", "ch": channel}, "subscribed")
        pub = await _on(serve.url, nodes[1])  # on the other worker: every publish is forwarded
        lock = tmp_path / "wal" / "w1" / "writer.lock"
        owner = int(lock.read_text())
        # past the supervisor's start-up grace: a worker ending now is restarted
        await asyncio.to_thread(
            wait_for_sync,
            lambda: time.monotonic() - _started(supervisor) > STARTUP_S + 1,
            UNIT * 2,
            "grace",
        )
        acked: dict[str, int] = {}
        refused_after_kill: list[float] = []
        killed_at = 0.0
        i = 0
        deadline = time.monotonic() + UNIT * 6
        restarted = False
        after_restart = 0
        while after_restart < 50:
            assert time.monotonic() < deadline, (len(acked), restarted, after_restart)
            mid = f"m{i}"
            while True:  # the same mid until it is acked: an unknown outcome is deduped
                await pub.send({"op": "pub", "ch": channel, "data": i, "mid": mid, "id": mid})
                answer = await pub.recv()
                if answer["op"] == "ack":
                    acked[mid] = int(answer["seq"])
                    break
                assert answer["op"] == "error" and answer["code"] == "unavailable", answer
                if killed_at and not refused_after_kill:
                    refused_after_kill.append(time.monotonic() - killed_at)
                assert time.monotonic() < deadline, "no ack after the restart"
                await asyncio.sleep(0.02)  # the retry a client makes, paced
            i += 1
            if i == 200:
                os.kill(owner, signal.SIGKILL)
                killed_at = time.monotonic()
            if killed_at and not restarted:
                text = lock.read_text() if lock.exists() else ""
                restarted = text.strip().isdigit() and int(text) != owner
            if restarted:
                after_restart += 1
        assert refused_after_kill, "the owner's death was never answered unavailable"
        seqs = [acked[f"m{k}"] for k in range(i)]
        assert seqs == list(range(1, i + 1)), "every publish acked once, seqs continue"
        got = [(await sub.expect("msg", UNIT * 2))["seq"] for _ in range(i)]
        assert got == list(range(1, i + 1)), "the follower: each once, in order, no gap"
        for client in (sub, pub):
            await client.close()
    finally:
        serve.kill()
