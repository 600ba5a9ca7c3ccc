"""The coordinator: spawn the workers, run ONE timeline for all of them, read /proc.

    connect phase ─▶ ready ─▶ t_start ── warm-up ──▶ t_measure ══ measured ══▶ t_end
                              publishing starts      counters, CPU, RSS and latency count
                                                     only inside [t_measure, t_end]

The server's CPU seconds are read from /proc/PID/stat at t_measure and t_end, the same
instants at which every worker snapshots its counters.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Protocol

from bench import procfs
from bench.loadgen import WorkerReady, WorkerResult, WorkerSpec, new_histogram, worker_main

if TYPE_CHECKING:  # hdrhistogram is the `bench` extra
    from hdrh.histogram import HdrHistogram

START_LEAD_S = 0.3  # time between "go" and t_start, so every worker gets it first


class Watcher(Protocol):
    """Something run alongside a phase (a profiler, memory snapshots)."""

    name: str

    def finish(self) -> dict[str, Any]: ...


class BenchError(Exception):
    """The run could not produce a result (server died, workers failed to connect, ...)."""


@dataclass
class ServerSample:
    cpu_s: float | None = None  # the server process and its children (e.g. the replayer)
    cpu_s_main: float | None = None  # the server process alone
    children: list[dict[str, Any]] = field(default_factory=list)
    rss_kb_before_connect: int | None = None
    rss_kb_connected: int | None = None
    rss_kb_end: int | None = None
    peak_rss_kb: int | None = None


@dataclass
class Measurement:
    """What one run of the load generator measured (raw; scenarios turn it into a Result)."""

    seconds: float
    warmup: float
    workers: int
    connected: int
    connect_failures: int
    connect_s: float
    published: int = 0
    acked: int = 0
    delivered: int = 0
    errors: int = 0
    disconnects: int = 0
    client_cpu_s: list[float] = field(default_factory=list)
    latency: HdrHistogram = field(default_factory=new_histogram)
    ack_latency: HdrHistogram = field(default_factory=new_histogram)
    connect_latency: HdrHistogram = field(default_factory=new_histogram)
    server: ServerSample = field(default_factory=ServerSample)
    machine_busy_s: float | None = None  # all cores, everybody's processes, in the window
    first_error: str = ""
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)  # Watcher.name -> finish()


def _expect(
    pipes: list[Connection], procs: list[BaseProcess], tag: str, timeout: float
) -> list[Any]:
    """One `(tag, payload)` message from every worker, or BenchError."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(pipes):
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"workers did not report {tag!r} within {timeout:.0f}s")
        waiting = [p for i, p in enumerate(pipes) if i not in got]
        for pipe in multiprocessing.connection.wait(waiting, left):
            assert isinstance(pipe, Connection)
            i = pipes.index(pipe)
            try:
                message = pipe.recv()
            except EOFError:
                raise BenchError(
                    f"worker {i} exited (code {procs[i].exitcode}) before {tag!r}"
                ) from None
            if message[0] != tag:
                raise BenchError(f"worker {i} sent {message[0]!r}, expected {tag!r}")
            got[i] = message[1]
    return [got[i] for i in range(len(pipes))]


def _sleep_until(t: float, check: Callable[[], None]) -> None:
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.25))
        check()


def run_load(
    specs: list[WorkerSpec],
    *,
    seconds: float,
    warmup: float,
    server_pid: int | None,
    connect_timeout: float = 120.0,
    settle: float = 0.0,
    on_window: Callable[[float], list[Watcher]] | None = None,
    on_connect: Callable[[], list[Watcher]] | None = None,
) -> Measurement:
    """Run the workers through one timeline.

    Hooks: `on_connect()` is called before the workers start connecting and
    `on_window(seconds)` at t_measure; the watchers they return are finished once every
    worker is connected, resp. after t_end, into `Measurement.extras`.
    """
    procfs.raise_nofile_limit()
    ctx = multiprocessing.get_context("spawn")
    server = ServerSample()

    def check_server() -> None:
        if server_pid is not None and not procfs.alive(server_pid):
            raise BenchError(f"the server (pid {server_pid}) is gone")

    def rss() -> int | None:
        return procfs.status_kb(server_pid, "VmRSS") if server_pid is not None else None

    server.rss_kb_before_connect = rss()
    pipes: list[Connection] = []
    procs: list[BaseProcess] = []
    extras: dict[str, dict[str, Any]] = {}
    try:
        connect_watchers = on_connect() if on_connect is not None else []
        for spec in specs:
            ours, theirs = ctx.Pipe()
            proc: BaseProcess = ctx.Process(target=worker_main, args=(spec, theirs), daemon=True)
            proc.start()
            theirs.close()
            pipes.append(ours)
            procs.append(proc)
        readies: list[WorkerReady] = _expect(pipes, procs, "ready", connect_timeout)
        check_server()
        if settle > 0:
            time.sleep(settle)
        server.rss_kb_connected = rss()
        for w in connect_watchers:
            extras[w.name] = w.finish()
        t_start = time.monotonic() + START_LEAD_S
        t_measure = t_start + warmup
        t_end = t_measure + seconds
        for pipe in pipes:
            pipe.send(("go", t_start, t_measure, t_end))
        _sleep_until(t_measure, check_server)
        cpu0 = procfs.tree_cpu_seconds(server_pid) if server_pid is not None else None
        busy0 = procfs.machine_busy_seconds()
        watchers = on_window(seconds) if on_window is not None else []
        _sleep_until(t_end, check_server)
        cpu1 = procfs.tree_cpu_seconds(server_pid) if server_pid is not None else None
        busy = procfs.machine_busy_seconds() - busy0
        results: list[WorkerResult] = _expect(pipes, procs, "result", 30.0 + seconds)
        if server_pid is not None:
            server.rss_kb_end = rss()
            server.peak_rss_kb = procfs.status_kb(server_pid, "VmHWM")
        if server_pid is not None and cpu0 is not None and cpu1 is not None:
            deltas = {p: c - cpu0.get(p, 0.0) for p, c in cpu1.items()}
            server.cpu_s = sum(deltas.values())
            server.cpu_s_main = deltas[server_pid]
            for p, d in deltas.items():
                if p != server_pid:
                    try:
                        peak: int | None = procfs.status_kb(p, "VmHWM")
                    except OSError:
                        peak = None  # exited meanwhile
                    cmd = procfs.command_line(p)
                    server.children.append(
                        {"pid": p, "cmd": cmd, "cpu_s": round(d, 3), "peak_rss_kb": peak}
                    )
        for pipe in pipes:
            pipe.send(("done",))
        for w in watchers:
            extras[w.name] = w.finish()
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for pipe in pipes:
            pipe.close()

    m = Measurement(
        seconds=seconds,
        warmup=warmup,
        workers=len(specs),
        connected=sum(r.connected for r in readies),
        connect_failures=sum(r.connect_failures for r in readies),
        connect_s=max(r.connect_s for r in readies),
        server=server,
        extras=extras,
        machine_busy_s=busy,
    )
    m.first_error = next((r.first_error for r in readies if r.first_error), "")
    for r in results:
        m.published += r.published
        m.acked += r.acked
        m.delivered += r.delivered
        m.errors += r.errors
        m.disconnects += r.disconnects
        m.client_cpu_s.append(r.cpu_s)
        m.latency.decode_and_add(r.latency)
        m.ack_latency.decode_and_add(r.ack_latency)
        m.connect_latency.decode_and_add(r.connect_latency)
        if not m.first_error:
            m.first_error = str(r.extra.get("first_error") or "")
    return m
