"""Operational watch: turns state changes into webhook notifications (core.notifier).

Once a second it looks at the durable log (does it still accept writes?), the database
state (from the replayer), the replay backlog and the WAL's fsync latency, and notifies on:
start, wal_unwritable (a write or fsync failed: acks have stopped, the most severe state),
wal_writable, db_down, db_up, wal_backlog (lag past `alert_backlog_records`), slow_fsync (p99
past `alert_fsync_ms`). The notifier rate-limits repeats per kind (never a change of state)
and never blocks the loop; without FERRY_WEBHOOK_URL this service is not started.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from common.service import Loop
from common.stats_doc import DbStatus
from core.notifier import Notifier

if TYPE_CHECKING:
    from core.server import Server

log = logging.getLogger("ferry.watch")

CHECK_INTERVAL_S = 1.0


class OpsWatch:
    """A `Service`: one `check()` a second in a `Loop` (a failed check is logged, counted
    in `stats()`, and the next one runs)."""

    name = "watch"

    def __init__(
        self,
        server: Server,
        webhook_url: str,
        node_id: str,
        backlog_records: int,
        fsync_ms: float,
        min_interval_s: float = 60.0,
    ) -> None:
        self.notifier = Notifier(webhook_url, node_id=node_id, min_interval_s=min_interval_s)
        self.backlog_records = backlog_records
        self.fsync_ms = fsync_ms
        self._db_state: str | None = None
        self._wal_writable: bool | None = None
        self._server = server
        self._loop = Loop("ferry-watch", self.check, CHECK_INTERVAL_S)

    async def start(self) -> None:
        server = self._server
        self.notifier.start()
        config = server.config
        self.notifier.notify(
            "start",
            f"ferry {config.node_id} serving on port {server.port} "
            f"(durability={config.durability}, sync={config.wal_sync})",
        )
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self.notifier.close()

    def stats(self) -> dict[str, Any]:
        sent = dataclasses.asdict(self.notifier.stats)
        return {**self._loop.stats(), **{f"notifier_{k}": v for k, v in sent.items()}}

    def _db_status(self) -> DbStatus | None:
        # The side-effect-free view: stats_section() keeps the dashboard's rows/s window.
        db_status = self._server.relay.db_status
        return db_status() if db_status is not None else None

    def check(self) -> None:
        self._check_wal()
        db = self._db_status()
        if db is not None:
            self._check_db(db)
        wal = self._server.log.stats()
        p99 = wal.get("fsync_p99_ms")
        if p99 is not None and p99 > self.fsync_ms:
            self.notifier.notify(
                "slow_fsync", f"WAL fsync p99 {p99:.1f} ms (threshold {self.fsync_ms:g} ms)"
            )

    def _check_db(self, db: DbStatus) -> None:
        if db.state in ("down", "up") and db.state != self._db_state:
            if db.state == "down":
                self.notifier.notify(
                    "db_down",
                    f"database down: {db.last_error or 'unreachable'} "
                    f"({db.url}); the WAL keeps every message",
                )
            elif self._db_state is not None:
                self.notifier.notify("db_up", f"database back up ({db.url}); replaying the backlog")
            self._db_state = db.state
        if db.lag_records > self.backlog_records:
            self.notifier.notify(
                "wal_backlog",
                f"replay backlog {db.lag_records} records ({db.lag_seconds} s behind)",
            )

    def _check_wal(self) -> None:
        relay = self._server.relay
        if relay.closing:
            return  # shutting down: the log closes on purpose
        durable_log = relay.log
        writable = bool(durable_log.writable)
        failure = durable_log.failure
        if not writable and failure == "closed":
            return
        if not writable and self._wal_writable is not False:
            self.notifier.notify(
                "wal_unwritable",
                f"the WAL stopped accepting writes ({failure}): publishes are refused with "
                "`unavailable` and /readyz is 503; nothing acked is lost. Fix the disk, then "
                "restart ferry (`ferry wal verify` first)",
            )
        elif writable and self._wal_writable is False:
            self.notifier.notify("wal_writable", "the WAL accepts writes again")
        self._wal_writable = writable
