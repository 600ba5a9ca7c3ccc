// Generated from common/stats_doc.py by `python -m common.stats_doc`: do not edit.
// What the server sends on `$sys.stats` and `$sys.tail`; protocol.ts adds the dashboard's
// defensive view (any field may be null in a message an admin published by hand).

/** One `$sys.stats` message; rates and latencies are over the last interval. */
export interface Stats {
  node: string;
  uptime_s: number;
  ts_ms: number;
  connections: number;
  subscriptions: number;
  channels: number;
  history_bytes: number;
  msgs_in_per_s: number;
  deliveries_per_s: number;
  bytes_in_per_s: number;
  bytes_out_per_s: number;
  ack_p50_ms: number | null;
  ack_p99_ms: number | null;
  slow_consumer_closes: number;
  errors: Record<string, number>;
  top_channels: TopChannel[];
  wal: WalStats;
  db: DbStats;
  stages?: Record<string, StageLatency>;
  services?: Record<string, Record<string, string | number | boolean | null>>;
  hooks?: HooksStats;
}

export interface TopChannel {
  ch: string;
  rate: number;
  subscribers: number;
}

/** The durable log: whether it takes writes, and the WAL's numbers (null for the memory log). */
export interface WalStats {
  writable: boolean;
  failure: string | null;
  sync: "fsync" | "write";
  head_lsn: number | null;
  bytes: number | null;
  segments: number | null;
  fsync_p50_ms: number | null;
  fsync_p99_ms: number | null;
  records_per_fsync: number | null;
}

/** The replayer's database; the replay numbers are left out while no replayer runs. */
export interface DbStats {
  state: "down" | "off" | "recovering" | "starting" | "up";
  last_error: string | null;
  url: string | null;
  checkpoint_lsn?: number;
  lag_records?: number;
  lag_seconds?: number;
  rows_per_s?: number;
}

/** One stage of the publish path (common.latency.PUBLISH_STAGES) over the last
interval: quantiles estimated from its histogram's buckets, and how many batches
(or flushes) it timed. */
export interface StageLatency {
  p50_ms: number | null;
  p99_ms: number | null;
  count: number;
}

/** The application webhooks (core/hooks.py); the section is left out without
FERRY_HOOKS_URL. Counts are events since start, `batches` are accepted POSTs. */
export interface HooksStats {
  queued: number;
  held: number;
  in_flight: number;
  sent: number;
  batches: number;
  failed_attempts: number;
  dropped: Record<string, number>;
  last_error: string | null;
}

/** One sampled `$sys.tail` message: a durable message's envelope and a JSON preview. */
export interface TailEntry {
  ch: string;
  seq: number;
  from: string;
  ts: number;
  size: number;
  preview: string;
}
