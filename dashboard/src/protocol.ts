/**
 * ferry wire protocol v1, JSON encoding (`ferry.v1.json`), as the dashboard speaks it.
 * See docs/design.md §3. Every frame is one JSON object with an `op` field.
 *
 * Only the frames the dashboard needs are typed. The socket itself (parsing, reconnects,
 * subscriptions, publishes) is ferry-client's; relay.ts hands these frames to main.ts.
 */

import type * as Wire from "./stats.gen";

export const PROTOCOL_VERSION = 1;
export const STATS_CHANNEL = "$sys.stats";
export const TAIL_CHANNEL = "$sys.tail";
export const FLOW_CHANNEL = "$sys.flow";

/** Channel names: 1–200 chars of [A-Za-z0-9_.:@$-] (docs/design.md §3). */
export const CHANNEL_RE = /^[A-Za-z0-9_.:@$-]{1,200}$/;

// ---- the `$sys.*` payloads -------------------------------------------------------------
// The field names and literal values come from the server's Structs (stats.gen.ts, made
// from common/stats_doc.py); here every field may also be null, as the panels expect it.

type OrNull<T> = { [K in keyof T]: T[K] | null };

export type WalStats = OrNull<Wire.WalStats>;
export type DbState = Wire.DbStats["state"];
export type DbStats = OrNull<Wire.DbStats>;
export type TopChannel = Pick<Wire.TopChannel, "ch"> & OrNull<Omit<Wire.TopChannel, "ch">>;

/** One `$sys.stats` message (1 Hz). Any field may be null when the server doesn't know it. */
export type Stats = OrNull<Omit<Wire.Stats, "wal" | "db" | "top_channels">> & {
  wal: WalStats | null;
  db: DbStats | null;
  top_channels: TopChannel[] | null;
};

/** One sampled `$sys.tail` message. */
export type TailEntry = Wire.TailEntry;

/**
 * A `$sys.stats` payload, by shape. An admin can publish to `$sys.*` too; a value that
 * isn't a stats object must not blank the panels or put holes in the charts.
 */
export function isStats(d: unknown): d is Stats {
  return typeof d === "object" && d !== null && !Array.isArray(d) && "connections" in d && "ts_ms" in d;
}

/** One `$sys.flow` message (per stats interval, while the flow view is open). */
export type Flow = Wire.Flow;
export type FlowChannel = Wire.FlowChannel;
export type FlowConnection = Wire.FlowConnection;
export type FlowEdge = Wire.FlowEdge;
export type FlowClosed = Wire.FlowClosed;

export function isFlow(d: unknown): d is Flow {
  if (typeof d !== "object" || d === null || Array.isArray(d)) return false;
  const f = d as Flow;
  return Array.isArray(f.edges) && Array.isArray(f.channels) && Array.isArray(f.connections);
}

export function isTailEntry(d: unknown): d is TailEntry {
  return typeof d === "object" && d !== null && typeof (d as TailEntry).ch === "string";
}

// ---- frames --------------------------------------------------------------------------

export type ServerFrame =
  | { op: "welcome"; client: string; user: string; node: string; version: number }
  | { op: "subscribed"; ch: string; seq: number; recovered?: boolean }
  | { op: "unsubscribed"; ch: string }
  | { op: "msg"; ch: string; seq: number; ts: number; from: string; data: unknown }
  | { op: "error"; id?: string | null; code: string; reason: string }
  | { op: "pong" };

/** Null when `text` is one valid JSON value, else the parser's complaint. */
export function validateJson(text: string): string | null {
  if (text.trim() === "") return "empty: enter a JSON value, e.g. {\"hello\":\"ferry\"}";
  try {
    JSON.parse(text);
    return null;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}
