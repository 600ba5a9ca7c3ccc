"""`ferry bench cluster`: the cluster's figures (docs/cluster.md), reported, never asserted.

    ferry bench cluster ingest   [--publishers 20 --window 32]  publishers on node c2, every
                                  channel owned by c1: forwarded acks/s (durable, the WAL)
    ferry bench cluster latency  [--rate 5000]                  the same at a fixed rate:
                                  forwarded pub->ack p50/p99
    ferry bench cluster fanout   [--subscribers 100]            1 publisher on the owner c1,
                                  the subscribers dealt over every node: deliveries/s

Nodes c1..cN (`--nodes`, 2) are `ferry serve` children on loopback, on NATS at `--nats`
(127.0.0.1:4222) under a cluster id of their own. The server CPU per unit is every node's
CPU over the measured window (`server.nodes`); the load generator is bench/loadgen.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import secrets
from typing import Any

from bench import procfs, targets
from bench.loadgen import WorkerSpec
from bench.report import Result
from bench.runner import Watcher, run_load
from bench.scenarios import Plan, build_result
from cluster.slots import SlotMap

MODES = ("ingest", "latency", "fanout")


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=MODES)
    p.add_argument("--nodes", type=int, default=2, help="cluster nodes (default 2)")
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="the NATS server")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="excluded warm-up (default 2)")
    p.add_argument("--workers", type=int, default=2, help="load-generator processes")
    p.add_argument("--payload", type=int, default=128, help="bytes of published data")
    p.add_argument("--publishers", "-P", type=int, default=20)
    p.add_argument("--window", "-W", type=int, default=32, help="unacked pubs each")
    p.add_argument("--rate", type=float, default=5000.0, help="latency: total publishes/s")
    p.add_argument("--subscribers", "-S", type=int, default=100)
    p.add_argument("--sample-every", type=int, default=None, help="latency of every Nth msg")
    p.add_argument("--wal-sync", default="fsync", choices=("fsync", "write"))
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")


class NodesCpu:
    """A `Watcher`: every node's CPU seconds over the measured window."""

    name = "nodes_cpu"

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {node: procfs.cpu_seconds(pid) for node, pid in pids.items()}

    def finish(self) -> dict[str, Any]:
        return {
            node: round(procfs.cpu_seconds(pid) - self.before[node], 3)
            for node, pid in self.pids.items()
        }


def _owned(slots: SlotMap, node: str, prefix: str, n: int) -> list[str]:
    owned = (
        name for name in (f"{prefix}{i}" for i in range(1_000_000)) if slots.owner_of(name) == node
    )
    return list(itertools.islice(owned, n))


def _plan(a: argparse.Namespace, urls: dict[str, str], slots: SlotMap) -> Plan:
    owner, ingress = "c1", "c2"

    def spec(index: int, url: str, **kw: Any) -> WorkerSpec:
        return WorkerSpec(
            index=index, url=url, payload=a.payload, sample_every=a.sample_every, user_prefix="b",
            **kw,
        )  # fmt: skip

    if a.mode == "fanout":
        (channel,) = _owned(slots, owner, "fanout.", 1)
        k = max(1, min(a.workers, a.subscribers))
        nodes = list(urls)
        subs: list[list[str]] = [[] for _ in range(k)]
        for i in range(a.subscribers):  # dealt over the nodes, then over the workers
            subs[i % k].append(channel)
        specs = [
            spec(
                i, urls[nodes[i % len(nodes)]], subscribers=tuple(subs[i]),
                publishers=(channel,) if i == 0 else (), window=a.window,
            )
            for i in range(k)
        ]  # fmt: skip
        return Plan(specs, {"S": a.subscribers, "W": a.window, "nodes": len(urls)}, "deliveries/s")
    pubs = _owned(slots, owner, "fwd.", a.publishers)
    k = max(1, min(a.workers, len(pubs)))
    rate = a.rate if a.mode == "latency" else 0.0
    specs = [
        spec(
            i, urls[ingress], publishers=tuple(pubs[i::k]),
            window=0 if rate else a.window, rate=rate / k if rate else 0.0,
        )
        for i in range(k)
    ]  # fmt: skip
    params: dict[str, Any] = {"P": a.publishers, "B": a.payload, "nodes": len(urls)}
    params.update({"rate": rate} if rate else {"W": a.window})
    return Plan(specs, params, "acks/s")


def run_cluster(a: argparse.Namespace) -> Result:
    if a.sample_every is None:
        a.sample_every = 1 if a.mode == "latency" else 32
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load = [round(x, 2) for x in procfs.load_average()]
    ids = [f"c{i + 1}" for i in range(max(2, a.nodes))]
    slots = SlotMap(ids)
    cluster_env = {
        "FERRY_CLUSTER_NODES": ",".join(ids),
        "FERRY_CLUSTER_ID": "bench" + secrets.token_hex(4),
        "FERRY_NATS_URL": a.nats,
        "FERRY_REPLAYER": "false",
    }
    with contextlib.ExitStack() as stack:
        nodes: dict[str, targets.Target] = {}
        for node in ids:
            target = targets.start_ferry(
                "wal", wal_sync=a.wal_sync, extra={**cluster_env, "FERRY_NODE_ID": node}
            )
            stack.enter_context(target)
            nodes[node] = target
        pids = {node: t.pid for node, t in nodes.items() if t.pid is not None}
        plan = _plan(a, {node: t.url for node, t in nodes.items()}, slots)
        scenario = "ingest" if a.mode != "fanout" else "fanout"
        main = "c2" if scenario == "ingest" else "c1"

        def on_window(_seconds: float) -> list[Watcher]:
            return [NodesCpu(pids)]

        m = run_load(
            plan.specs,
            seconds=a.seconds,
            warmup=a.warmup,
            server_pid=pids[main],
            on_window=on_window,
        )
        for target in nodes.values():
            target.check()
    result = build_result(scenario, f"ferry-cluster-{a.mode}", plan, m, [])
    result.started_at = started
    result.load_avg = load
    result.settings = {**cluster_env, "FERRY_WAL_SYNC": a.wal_sync}
    result.code = procfs.code_version(str(targets.ROOT))
    per_node = m.extras.get("nodes_cpu", {})
    units = m.acked if scenario == "ingest" else m.delivered
    total = sum(per_node.values())
    result.server["nodes"] = per_node
    result.server["cpu_s"] = round(total, 3)
    result.server["cpu_us_per_unit"] = round(total * 1e6 / units, 4) if units else None
    result.notes.append(
        f"server CPU is every node's ({', '.join(f'{n} {s}s' for n, s in per_node.items())}); "
        f"ingress/owner: {'c2 -> c1' if scenario == 'ingest' else 'subscribers on every node'}"
    )
    return result
