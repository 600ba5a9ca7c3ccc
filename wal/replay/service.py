"""The replayer as a child process of `ferry serve`.

Why a process: this machine class has 2 cores and the relay's event loop owns one. The
replayer's work (reading segments, building rows, driving the database client) is pure
Python; in a thread it would fight the relay for the GIL, in its own process it runs on
the other core (measured in docs/benchmarks.md).

Logging is set up in the child as `ferry serve` resolved it (flags, environment or TOML
file): `--log-level` and `--log-format` on its command line, not secrets.

Pipe protocol (one line each, both directions):

    parent -> child   "DB <url>"   first line: the database URL (secrets never go on the
                                   child's command line, which `ps` shows to every user)
                      "D <lsn>"    the WAL's durable head: right after "DB" (0 too; the
                                   child reads nothing before it), then as it moves
                                   (never read past it)
                      "STOP"       commit what is durable and exit (EOF means the same)
    child  -> parent  {json}       ReplayStatus.as_dict(), on every change (rate-limited)

The parent turns the child's checkpoint into WAL retention (`WalLog.set_checkpoint`)
and its status into metrics and the dashboard's database card. A child that dies is
restarted with backoff; the child dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

from common.service import cancel_and_wait
from common.stats_doc import DbStats, DbStatus
from wal.log import WalLog
from wal.replay.replayer import Backoff
from wal.sinks.base import redact_url

log = logging.getLogger("ferry.replayer")

STATUS_INTERVAL = 0.1  # seconds between status lines while things change
# Seconds between durable-head notifications. Every one wakes the child: at 5 ms the
# wake-ups alone took the relay's p99 ack latency from ~4 to ~20-80 ms at 60k acks/s
# (docs/benchmarks.md); 50 ms costs at most 50 ms of replay lag.
DURABLE_INTERVAL = 0.05
# Settings the child has no use for and that hold secrets: not in its environment either
# (/proc/<pid>/environ is readable by the same user; the URL comes over the pipe).
CHILD_ENV_SECRETS = ("FERRY_DB_URL", "FERRY_JWT_SECRET", "FERRY_ADMIN_TOKEN", "FERRY_WEBHOOK_URL")


class ReplayService:
    """Runs and watches the replay child: a `common.service.Service`.

    It follows the `WalLog` it is given (durable head -> child; child's checkpoint ->
    `set_checkpoint`, which is what lets the WAL delete segments) and reports; it changes
    nothing of the relay's. What the relay does with the reports (`database_view`,
    `stats_section`) is decided in the composition root, `core.compose`.
    """

    name = "replayer"

    def __init__(
        self,
        wal: WalLog,
        wal_dir: str,
        db_url: str,
        node_id: str,
        *,
        extra_env: dict[str, str] | None = None,
        log_level: str = "info",
        log_format: str = "text",
    ) -> None:
        self._log = wal
        self.wal_dir = wal_dir
        self.db_url = db_url
        self.node_id = node_id
        self.extra_env = extra_env or {}
        self.status: dict[str, Any] = {
            "state": "starting",
            "last_error": None,
            "checkpoint": 0,
            "lag_records": 0,
            "lag_seconds": 0.0,
            "rows": 0,
        }
        self.rows_per_s = 0.0
        self._rows_prev = (0, time.monotonic())
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._durable = 0
        self._sent_durable = 0
        self._durable_scheduled = False
        self._stopping = False
        self.restarts = 0
        # serve's resolved logging, handed to the child (not secrets: on its command line)
        self._child_args = ["--log-level", log_level, "--log-format", log_format]
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- Server service protocol ---------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._log.add_durable_listener(self._on_durable)
        self._durable = self._log.durable_lsn
        self._task = self._loop.create_task(self._supervise(), name="ferry-replay-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            self._send_durable()
            try:
                proc.stdin.write(b"STOP\n")
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                await asyncio.wait_for(proc.wait(), 8.0)
            except TimeoutError:
                log.warning(
                    "replayer did not stop in time; killing it (it resumes from its checkpoint)"
                )
                proc.kill()
                await proc.wait()
        await cancel_and_wait(self._task)

    def stats(self) -> dict[str, Any]:
        task = self._task
        return {
            "running": task is not None and not task.done(),
            "state": self.status.get("state"),
            "restarts": self.restarts,
        }

    def database_view(self) -> DbStatus:
        """Side-effect-free view of the database log (for /metrics and the webhook watch)."""
        status = self.status
        checkpoint = int(status.get("checkpoint", 0) or 0)
        return DbStatus(
            state=status.get("state", "starting"),
            last_error=status.get("last_error"),
            url=redact_url(self.db_url),
            up=status.get("state") == "up",
            checkpoint_lsn=checkpoint,
            lag_records=max(0, self._durable - checkpoint),
            lag_seconds=float(status.get("lag_seconds") or 0.0),
            rows=int(status.get("rows", 0) or 0),
        )

    def stats_section(self) -> dict[str, DbStats]:
        """The `db` section of `$sys.stats` (moves the rows/s window: one caller only)."""
        view = self.database_view()
        now = time.monotonic()
        prev_rows, prev_at = self._rows_prev
        if now - prev_at >= 0.5:
            self.rows_per_s = round((view.rows - prev_rows) / (now - prev_at), 1)
            self._rows_prev = (view.rows, now)
        return {
            "db": DbStats(
                state=view.state,
                last_error=view.last_error,
                url=view.url,
                checkpoint_lsn=view.checkpoint_lsn,
                lag_records=view.lag_records,
                lag_seconds=view.lag_seconds if view.lag_records else 0.0,
                rows_per_s=self.rows_per_s,
            )
        }

    # --- durable head -> child -----------------------------------------------------------

    def _on_durable(self, _batch: object) -> None:
        self._durable = self._log.durable_lsn
        if not self._durable_scheduled and self._loop is not None:
            self._durable_scheduled = True
            self._loop.call_later(DURABLE_INTERVAL, self._send_durable)

    def _send_durable(self) -> None:
        self._durable_scheduled = False
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        if self._durable != self._sent_durable:
            self._sent_durable = self._durable
            try:
                proc.stdin.write(b"D %d\n" % self._durable)
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass

    # --- child lifecycle -----------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        while not self._stopping:
            started = time.monotonic()
            env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_SECRETS}
            env.update(self.extra_env)
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "wal.replay.child",
                "--wal-dir", self.wal_dir, "--node", self.node_id, "--db-from-stdin",
                *self._child_args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            assert self._proc.stdin is not None
            self._proc.stdin.write(b"DB " + self.db_url.encode() + b"\n")
            # Always tell a new child the durable head, 0 included: until it knows one it
            # would read whatever is on disk, which may be a record not yet synced, or (in
            # a preallocated segment, where the file does not grow) one half copied in.
            self._sent_durable = -1
            self._send_durable()
            assert self._proc.stdout is not None
            async for line in self._proc.stdout:
                self._on_status(line)
            code = await self._proc.wait()
            if self._stopping:
                return
            log.error("replayer exited with %s; restarting", code)
            self.restarts += 1
            self.status["state"] = "down"
            self.status["last_error"] = f"replayer process exited ({code})"
            if time.monotonic() - started > 30:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    def _on_status(self, line: bytes) -> None:
        try:
            status = json.loads(line)
        except ValueError:
            return
        self.status = status
        checkpoint = int(status.get("checkpoint", 0))
        if checkpoint:
            self._log.set_checkpoint(checkpoint)
