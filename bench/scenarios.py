"""The scenarios: what each asks of the load generator, and what it reports.

    fanout       1 publisher -> 1 channel -> S subscribers; W unacked pubs in flight
                 throughput = deliveries/s; latency = publish->deliver (sampled)
    rooms        R rooms x M members, each subscribed to its room and publishing to it at
                 an open-loop total rate; throughput = deliveries/s; latency = publish->deliver
    ingest       P publishers, no subscribers, W in flight each (or an open-loop --rate);
                 throughput = acks/s; latency = pub->ack (durable: needs the WAL)
    latency      R rooms x S subscribers, one publisher per room, a fixed total rate (open
                 loop); latency = publish->deliver of every message, p50/p99/p99.9
    connections  N idle connections; server RSS per connection; latency = connect->welcome
    replay       see bench/replay.py

Goals from the issue are reported against (met / missed), never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import procfs, targets
from bench.loadgen import WorkerSpec
from bench.memtrace import MemorySnapshots
from bench.profiling import Profiler
from bench.report import Result, latency_summary
from bench.runner import Measurement, Watcher, run_load
from bench.stages import StageWatcher

LOAD_SCENARIOS = ("fanout", "rooms", "latency", "ingest", "connections")
COMPARABLE = ("fanout", "rooms", "latency", "connections")


class NeedsWal(Exception):
    """The scenario needs `FERRY_DURABILITY=wal` and the WAL package is not there yet."""


@dataclass
class Plan:
    specs: list[WorkerSpec]
    params: dict[str, Any]
    unit: str
    settle: float = 0.0


def _split(items: list[str], parts: int) -> list[tuple[str, ...]]:
    """`items` dealt round-robin into `parts` tuples (so every part gets every kind)."""
    return [tuple(items[i::parts]) for i in range(parts)]


def _spec(a: argparse.Namespace, index: int, url: str, **kw: Any) -> WorkerSpec:
    return WorkerSpec(
        index=index,
        url=url,
        payload=a.payload,
        sample_every=a.sample_every,
        user_prefix="b",
        **kw,
    )


def plan_fanout(a: argparse.Namespace, url: str) -> Plan:
    k = max(1, min(a.workers, a.subscribers))
    subs = _split(["fanout"] * a.subscribers, k)
    specs = [
        _spec(
            a,
            i,
            url,
            subscribers=subs[i],
            publishers=("fanout",) if i == 0 else (),
            window=a.window,
        )
        for i in range(k)
    ]
    params = {"S": a.subscribers, "W": a.window, "B": a.payload}
    return Plan(specs, params, "deliveries/s")


def plan_rooms(a: argparse.Namespace, url: str) -> Plan:
    members = [f"room.{r}" for r in range(a.rooms) for _ in range(a.members)]
    k = max(1, min(a.workers, len(members)))
    parts = _split(members, k)
    total = len(members)
    specs = [
        _spec(a, i, url, members=parts[i], rate=a.rate * len(parts[i]) / total) for i in range(k)
    ]
    params = {"R": a.rooms, "M": a.members, "rate": a.rate, "B": a.payload}
    return Plan(specs, params, "deliveries/s")


def plan_latency(a: argparse.Namespace, url: str) -> Plan:
    """Subscribers dealt over the workers; the publishers (one per room, the total rate
    spread evenly) in worker 0, so a publish and its deliveries are timed on one clock
    (CLOCK_MONOTONIC, shared by the worker processes)."""
    rooms = [f"lat.{r}" for r in range(a.rooms)]
    subs = [room for room in rooms for _ in range(a.subscribers)]
    k = max(1, min(a.workers, len(subs)))
    parts = _split(subs, k)
    specs = [
        _spec(
            a,
            i,
            url,
            subscribers=parts[i],
            publishers=tuple(rooms) if i == 0 else (),
            rate=a.rate if i == 0 else 0.0,
        )
        for i in range(k)
    ]
    params = {"R": a.rooms, "S": a.subscribers, "rate": a.rate, "B": a.payload}
    return Plan(specs, params, "deliveries/s")


def plan_ingest(a: argparse.Namespace, url: str) -> Plan:
    pubs = [f"ingest.{i}" for i in range(a.publishers)]
    k = max(1, min(a.workers, len(pubs)))
    parts = _split(pubs, k)
    specs = [
        _spec(
            a,
            i,
            url,
            publishers=parts[i],
            window=0 if a.rate else a.window,
            rate=a.rate * len(parts[i]) / len(pubs) if a.rate else 0.0,
        )
        for i in range(k)
    ]
    params: dict[str, Any] = {"P": a.publishers, "B": a.payload}
    params.update({"rate": a.rate} if a.rate else {"W": a.window})
    return Plan(specs, params, "acks/s")


def plan_connections(a: argparse.Namespace, url: str) -> Plan:
    k = max(1, min(a.workers, a.connections))
    share = [a.connections // k + (1 if i < a.connections % k else 0) for i in range(k)]
    specs = [
        WorkerSpec(index=i, url=url, idle=share[i], connect_concurrency=a.concurrency)
        for i in range(k)
    ]
    return Plan(specs, {"N": a.connections}, "connects/s", settle=1.0)


PLANS: dict[str, Callable[[argparse.Namespace, str], Plan]] = {
    "fanout": plan_fanout,
    "rooms": plan_rooms,
    "latency": plan_latency,
    "ingest": plan_ingest,
    "connections": plan_connections,
}


# --- goals (reported, not asserted) ------------------------------------------------------


def _goal(text: str, value: float | None, ok: Callable[[float], bool]) -> dict[str, Any]:
    return {"goal": text, "value": value, "met": value is not None and ok(value)}


def goals_for(r: Result) -> list[dict[str, Any]]:
    p, s = r.params, r.server
    cpu = s.get("cpu_us_per_unit")
    p99 = (r.latency or r.ack_latency or {}).get("p99_ms")
    if r.target != "ferry" and r.target != targets.EXTERNAL:
        return []
    if r.scenario == "fanout":
        at = "" if (p.get("S"), p.get("B")) == (100, 128) else " (goal is for S=100, B=128)"
        return [
            _goal(f">= 1.5M deliveries/s{at}", r.throughput, lambda v: v >= 1_500_000),
            _goal(f"<= 0.5 us server CPU per delivery{at}", cpu, lambda v: v <= 0.5),
        ]
    if r.scenario == "ingest":
        out = [_goal(">= 100k acks/s (P=50, with replayer)", r.throughput, lambda v: v >= 100_000)]
        if p.get("rate"):
            out.append(_goal("p99 pub->ack <= 5 ms at half rate", p99, lambda v: v <= 5.0))
        return out
    if r.scenario == "rooms":
        return [
            _goal(
                "p99 publish->deliver <= 2 ms (1000 conns, 100 rooms, 10k pub/s)",
                p99,
                lambda v: v <= 2.0,
            )
        ]
    if r.scenario == "latency":
        lat = r.latency or {}
        at = (
            ""
            if (p.get("R"), p.get("S"), p.get("rate")) == (10, 20, 5000.0)
            else " (goal: 10x20 at 5k/s)"
        )
        return [
            _goal(f"p50 publish->deliver <= 0.5 ms{at}", lat.get("p50_ms"), lambda v: v <= 0.5),
            _goal(f"p99 publish->deliver <= 2 ms{at}", lat.get("p99_ms"), lambda v: v <= 2.0),
            _goal(f"p99.9 publish->deliver <= 5 ms{at}", lat.get("p999_ms"), lambda v: v <= 5.0),
        ]
    if r.scenario == "connections":
        return [
            _goal(
                "<= 10 KB server RSS per idle connection (15,000)",
                s.get("rss_per_conn_kb"),
                lambda v: v <= 10.0,
            )
        ]
    return []


# --- running -------------------------------------------------------------------------------


def resolve_log(a: argparse.Namespace, scenario: str) -> tuple[str, list[str]]:
    """Which `FERRY_DURABILITY` ferry runs with, and the notes that go with the choice."""
    log: str = a.log
    if log == "auto":
        log = "wal" if targets.wal_available() else "memory"
        if log == "memory":
            if scenario == "ingest":
                raise NeedsWal(
                    "ingest measures durable acks and needs the WAL (wal.log.WalLog), "
                    "which is not there yet; `--log memory` runs it without durability"
                )
            return log, [
                "WAL not available yet: ferry ran with FERRY_DURABILITY=memory (no fdatasync)"
            ]
    if log == "memory":
        return log, ["ferry ran with FERRY_DURABILITY=memory: acks are not durable"]
    return log, [f"ferry ran with FERRY_DURABILITY=wal, FERRY_WAL_SYNC={a.wal_sync}"]


def _server_env(a: argparse.Namespace) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in a.server_env or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server-env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def _picows_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """`--picows KEY=VALUE` flags; VALUE is JSON when it parses (2048, false), else a string."""
    out: dict[str, Any] = {}
    for item in getattr(a, "picows", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--picows wants KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def start_target(
    a: argparse.Namespace, scenario: str, name: str
) -> tuple[targets.Target, list[str]]:
    if a.url:
        return targets.attach(a.url, a.pid), [f"server given: {a.url} (pid {a.pid})"]
    if name != targets.FERRY:
        return targets.start(name), [f"peer {name}: protocol-v1 subset, no durability"]
    log, notes = resolve_log(a, scenario)
    tracemalloc = bool(getattr(a, "tracemalloc", False))
    picows = _picows_overrides(a)
    target = targets.start(
        targets.FERRY,
        log=log,
        wal_sync=a.wal_sync,
        db_url=a.db,
        extra=_server_env(a),
        tracemalloc=tracemalloc,
        picows=picows,
    )
    if tracemalloc:
        notes.append("server ran under tracemalloc: its RSS figures include the tracing")
    if picows:
        notes.append(f"what-if: ferry's picows server forced to {picows} (bench/serve_wrapper.py)")
    return target, notes


def run_scenario(a: argparse.Namespace, scenario: str, target_name: str) -> Result:
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load = list(procfs.load_average())
    target, notes = start_target(a, scenario, target_name)
    with target:
        plan = PLANS[scenario](a, target.url)
        pid = target.pid if a.profile else None
        prefix = f"{a.profile}-{scenario}-{target.name}"
        # Idle connections cost nothing once open: their profile is the connect phase.
        connect_phase = scenario == "connections"

        def on_connect() -> list[Watcher]:
            watchers: list[Watcher] = []
            if getattr(a, "tracemalloc", False) and target.pid and target.workdir:
                watchers.append(MemorySnapshots(target.pid, target.workdir).start())
            if pid is not None and connect_phase:
                profiler = Profiler(pid, prefix, native=a.profile_native, phase="connect")
                watchers.append(profiler.start(None))
            return watchers

        def on_window(seconds: float) -> list[Watcher]:
            watchers: list[Watcher] = []
            if target.name == targets.FERRY and not connect_phase:
                watchers.append(StageWatcher(target.url).start())
            if pid is not None and not connect_phase:
                watchers.append(Profiler(pid, prefix, native=a.profile_native).start(seconds))
            return watchers

        m = run_load(
            plan.specs,
            seconds=a.seconds,
            warmup=a.warmup,
            server_pid=target.pid,
            settle=plan.settle,
            on_window=on_window,
            on_connect=on_connect,
        )
        target.check()
    result = build_result(scenario, target.name, plan, m, notes)
    result.started_at = started
    result.load_avg = [round(x, 2) for x in load]
    result.settings = target.settings
    result.code = procfs.code_version(str(targets.ROOT))
    return result


def build_result(
    scenario: str, target: str, plan: Plan, m: Measurement, notes: list[str]
) -> Result:
    seconds = m.seconds
    if scenario == "ingest":
        units = m.acked
    elif scenario == "connections":
        units = m.connected
    else:
        units = m.delivered
    throughput = m.connected / m.connect_s if scenario == "connections" else units / seconds
    server: dict[str, Any] = {
        "cpu_s": None if m.server.cpu_s is None else round(m.server.cpu_s, 3),
        "cpu_util": None if m.server.cpu_s is None else round(m.server.cpu_s / seconds, 3),
        "cpu_us_per_unit": None,
        "peak_rss_kb": m.server.peak_rss_kb,
        "rss_kb_end": m.server.rss_kb_end,
    }
    if m.server.children:
        # e.g. ferry's replayer runs as a child process: its CPU is the server's too
        server["cpu_s_main"] = round(m.server.cpu_s_main or 0.0, 3)
        if units and scenario != "connections":
            server["cpu_us_per_unit_main"] = round((m.server.cpu_s_main or 0.0) * 1e6 / units, 4)
        server["children"] = m.server.children
    if m.server.cpu_s is not None and units and scenario != "connections":
        server["cpu_us_per_unit"] = round(m.server.cpu_s * 1e6 / units, 4)
    if scenario == "connections":
        before, after = m.server.rss_kb_before_connect, m.server.rss_kb_connected
        server["rss_kb_before_connect"] = before
        server["rss_kb_connected"] = after
        if before is not None and after is not None and m.connected:
            server["rss_per_conn_kb"] = round((after - before) / m.connected, 2)
        server["idle_cpu_s"] = server["cpu_s"]
    if scenario == "connections":
        latency = latency_summary(m.connect_latency, "connect->welcome")
        ack_latency = None
    elif scenario == "ingest":
        latency = None
        ack_latency = latency_summary(m.ack_latency, "pub->ack")
    else:
        latency = latency_summary(m.latency, "publish->deliver")
        ack_latency = latency_summary(m.ack_latency, "pub->ack")
    client_util = [round(c / seconds, 3) for c in m.client_cpu_s]
    # How much of the machine others used meanwhile (other engineers' tests, ...): every
    # busy core-second that was neither the server (and its children) nor a worker.
    noise: dict[str, Any] = {}
    if m.machine_busy_s is not None:
        ours = (m.server.cpu_s or 0.0) + sum(m.client_cpu_s)
        noise = {
            "machine_busy_cores": round(m.machine_busy_s / seconds, 2),
            "others_cores": round(max(0.0, m.machine_busy_s - ours) / seconds, 2),
        }
    notes = list(notes)
    if m.connect_failures:
        notes.append(f"{m.connect_failures} connections failed: {m.first_error}")
    elif m.errors:
        notes.append(f"{m.errors} error answers, first: {m.first_error}")
    if m.disconnects:
        notes.append(f"{m.disconnects} connections dropped during the window")
    if noise.get("others_cores", 0.0) > 0.25:
        notes.append(f"other processes used {noise['others_cores']} cores during the window: noisy")
    if any(u > 0.9 for u in client_util):
        notes.append(
            "a load-generator worker was CPU-bound (>90%): the figure is a lower bound "
            "for the server; try --workers"
        )
    if "profile" in m.extras:
        notes.append("py-spy sampled the server during this run: its figures carry that overhead")
    memory = m.extras.get("memory")
    if memory is not None and m.connected:
        memory["traced_bytes_per_conn"] = round(memory["traced_growth_bytes"] / m.connected, 1)
        for row in memory["top"]:
            row["bytes_per_conn"] = round(row["bytes"] / m.connected, 1)
            row["blocks_per_conn"] = round(row["blocks"] / m.connected, 2)
    result = Result(
        scenario=scenario,
        target=target,
        params=plan.params,
        throughput=round(throughput, 1),
        unit=plan.unit,
        latency=latency,
        ack_latency=ack_latency,
        counts={
            "published": m.published,
            "acked": m.acked,
            "delivered": m.delivered,
            "errors": m.errors,
            "disconnects": m.disconnects,
            "connected": m.connected,
            "connect_failures": m.connect_failures,
        },
        server=server,
        client={
            "workers": m.workers,
            "cpu_util": client_util,
            "connect_s": round(m.connect_s, 3),
            "seconds": seconds,
            "warmup": m.warmup,
        },
        machine=procfs.machine_info(),
        noise=noise,
        notes=notes,
        profile=m.extras.get("profile"),
        memory=memory,
        stages=m.extras.get("stages") or None,
    )
    result.goals = goals_for(result)
    return result


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)
