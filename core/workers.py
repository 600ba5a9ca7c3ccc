"""`ferry serve --workers N`: N processes on one host sharing the ports (SO_REUSEPORT),
each a cluster node of its own (docs/cluster.md, "Several workers on one host").

Worker `i` (1..N) is node `<node_id>-w<i>` with its WAL in `<wal_dir>/w<i>`; the cluster's
nodes are `<n>-w<i>` for every `n` of `cluster_nodes` (this host alone when it is empty)
and every `i`, so every host of a cluster runs the same number of workers. They forward
through NATS like separate hosts: the kernel spreads connections over them, and a channel
is owned by one of them.

The supervisor (this process) forks the workers before any event loop or thread exists,
passes SIGTERM/SIGINT on to them and waits. A worker that ends on its own is started again
— unless it ended within `STARTUP_S` of its start (a start-up failure, such as a refused
node list: starting it again would fail again), which stops them all.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

from core.config import Config

log = logging.getLogger("ferry.workers")

STARTUP_S = 5.0


def worker_nodes(config: Config) -> tuple[str, ...]:
    hosts = config.cluster_nodes or (config.node_id,)
    return tuple(f"{host}-w{i}" for host in hosts for i in range(1, config.workers + 1))


def worker_config(config: Config, index: int) -> Config:
    return dataclasses.replace(
        config,
        workers=1,
        reuse_port=True,
        node_id=f"{config.node_id}-w{index}",
        wal_dir=os.path.join(config.wal_dir, f"w{index}"),
        cluster_nodes=worker_nodes(config),
    )


def supervise(config: Config, serve: Callable[[Config, bool], int]) -> int:
    """Run `serve(worker_config, first)` in `config.workers` forked processes until they
    end; the exit status is the worst of theirs."""
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, started at)
    stopping = False
    worst = 0

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = serve(worker_config(config, index), index == 1)
            finally:
                os._exit(code)
        children[pid] = (index, time.monotonic())

    def stop_all(sig: int) -> None:
        for pid in children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def on_signal(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        stop_all(sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for index in range(1, config.workers + 1):
        start(index)
    log.info("ferry: %d workers: %s", config.workers, ",".join(worker_nodes(config)))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index, started = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            worst = max(worst, code if code > 0 else 1 if code < 0 else 0)
            continue
        if time.monotonic() - started < STARTUP_S:
            log.critical("worker %d could not start (exit %d): stopping the others", index, code)
            worst = max(worst, code if code > 0 else 1)
            stopping = True
            stop_all(signal.SIGTERM)
            continue
        log.error("worker %d ended (exit %d): starting it again", index, code)
        start(index)
    return worst
