// Generated from common/stats_doc.py by `python -m common.stats_doc`: do not edit.
// What the server sends on `$sys.stats`, `$sys.tail` and `$sys.flow`; protocol.ts adds the dashboard's
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

/** One sampled `$sys.tail` message: a durable message's envelope and a JSON preview,
and what its life looked like up to the fan-out (its timeline in the flow view). */
export interface TailEntry {
  ch: string;
  seq: number;
  from: string;
  ts: number;
  size: number;
  preview: string;
  lsn?: number;
  durable_ms?: number;
  delivered?: number;
}

/** One `$sys.flow` message: who published where and who received it, over the last
interval, top-N by messages per second (core/flow.py). */
export interface Flow {
  node: string;
  ts_ms: number;
  interval_s: number;
  msgs_per_s: number;
  active_channels: number;
  publishers: FlowPublisher[];
  channels: FlowChannel[];
  edges: FlowEdge[];
  connections: FlowConnection[];
  closed: FlowClosed[];
  others: FlowOthers;
}

/** A publishing user (the messages' `from`) among the busiest of the interval. */
export interface FlowPublisher {
  user: string;
  rate: number;
}

/** A channel among the busiest of the interval, with a bounded view of it. */
export interface FlowChannel {
  ch: string;
  rate: number;
  head: number;
  subscribers: number;
  users: number;
  shown: FlowSubscriber[];
  history_first: number | null;
  history_last: number | null;
  logged_seq: number | null;
  owner: string;
}

/** One subscriber of a channel in the flow view. */
export interface FlowSubscriber {
  client: string;
  user: string;
  encoding: "json" | "msgpack";
  outbox_bytes: number;
  state: "closing" | "ok" | "overflowed" | "paused";
}

/** Messages per second from `src` to `dst`. Node ids: `p:<user>` a publisher,
`c:<channel>` a channel, `s:<client>` a subscribing connection; `p:*`, `c:*` and
`s:*<channel>` are the ones folded into "others" (`count` of them). */
export interface FlowEdge {
  src: string;
  dst: string;
  rate: number;
  count?: number;
  hop?: "feed" | "forward" | null;
}

/** A connection shown in the graph: what the flow view tells about it when clicked. */
export interface FlowConnection {
  client: string;
  user: string;
  encoding: "json" | "msgpack";
  subscriptions: number;
  channels: string[];
  published: number;
  publish_rate: number;
  delivery_rate: number;
  errors: number;
  outbox_bytes: number;
  state: "closing" | "ok" | "overflowed" | "paused";
}

/** A connection that closed in the interval. */
export interface FlowClosed {
  client: string;
  user: string;
  code: number;
  ts_ms: number;
}

/** What the top-N left out, folded. */
export interface FlowOthers {
  publishers: number;
  channels: number;
  rate: number;
}
