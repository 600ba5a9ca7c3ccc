"""Prometheus metrics of one WAL, in the registry the caller passes (never the global one:
tests open many logs in one process). Updated once per batch, never per record."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FSYNC_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    float("inf"),
)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, float("inf"))


class WalMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # registry=None: the metrics exist but are registered nowhere.
        r = registry
        self.appends = Counter("ferry_wal_appends", "Records made durable in the WAL", registry=r)
        self.bytes = Counter("ferry_wal_written_bytes", "Bytes written to WAL segments", registry=r)
        self.batches = Counter(
            "ferry_wal_batches", "WAL batches (one write + fdatasync each)", registry=r
        )
        self.fsync_seconds = Histogram(
            "ferry_wal_fsync_seconds",
            "fdatasync latency per batch",
            buckets=FSYNC_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "ferry_wal_batch_records", "Records per fdatasync", buckets=BATCH_BUCKETS, registry=r
        )
        self.segments = Gauge("ferry_wal_segments", "WAL segment files", registry=r)
        self.size_bytes = Gauge(
            "ferry_wal_size_bytes",
            "Bytes of data (headers and records) in WAL segments; preallocated space not counted",
            registry=r,
        )
        self.durable_lsn = Gauge("ferry_wal_durable_lsn", "Last durable LSN", registry=r)
        self.checkpoint_lsn = Gauge(
            "ferry_wal_checkpoint_lsn", "Replayer checkpoint the WAL was told about", registry=r
        )
        self.writable = Gauge("ferry_wal_writable", "1 while the WAL accepts appends", registry=r)
        self.errors = Counter(
            "ferry_wal_write_errors",
            "Errors that made the WAL unwritable (write, fsync, heads store, ...; the first is fatal)",
            registry=r,
        )
        self.last_error_errno = Gauge(
            "ferry_wal_last_error_errno", "errno of the write/fsync error, 0 if none", registry=r
        )
        self.truncated_bytes = Gauge(
            "ferry_wal_recovery_truncated_bytes",
            "Bytes cut from a torn tail at startup",
            registry=r,
        )
        self.recovery_seconds = Gauge(
            "ferry_wal_recovery_seconds", "Time the startup scan of the WAL took", registry=r
        )
        self.heads_as_of = Gauge(
            "ferry_wal_heads_as_of_lsn", "LSN heads.db is complete up to", registry=r
        )
        self.heads_dirty = Gauge(
            "ferry_wal_heads_dirty", "Channel heads durable but not yet in heads.db", registry=r
        )
        self.heads_flushes = Counter(
            "ferry_wal_heads_flushes", "Transactions that stored dirty heads", registry=r
        )
        self.heads_flush_seconds = Histogram(
            "ferry_wal_heads_flush_seconds",
            "Time one heads.db flush took (in its own thread)",
            buckets=FSYNC_BUCKETS,
            registry=r,
        )
