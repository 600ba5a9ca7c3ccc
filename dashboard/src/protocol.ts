/**
 * ferry wire protocol v1, JSON encoding (`ferry.v1.json`), as the dashboard speaks it.
 * See docs/design.md §3. Every frame is one JSON object with an `op` field.
 *
 * Only the frames the dashboard needs are typed; anything else is ignored. Parsing is
 * pure (text in, typed frame or null out) so it can be reasoned about without a socket.
 */

import type * as Wire from "./stats.gen";

export const SUBPROTOCOL = "ferry.v1.json";
export const PROTOCOL_VERSION = 1;
export const STATS_CHANNEL = "$sys.stats";
export const TAIL_CHANNEL = "$sys.tail";

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

export function isTailEntry(d: unknown): d is TailEntry {
  return typeof d === "object" && d !== null && typeof (d as TailEntry).ch === "string";
}

// ---- frames --------------------------------------------------------------------------

export type ServerFrame =
  | { op: "welcome"; client: string; user: string; node: string; version: number }
  | { op: "subscribed"; ch: string; seq: number; recovered?: boolean }
  | { op: "unsubscribed"; ch: string }
  | { op: "msg"; ch: string; seq: number; ts: number; from: string; data: unknown }
  | { op: "ack"; id?: string | null; ch: string; seq: number }
  | { op: "error"; id?: string | null; code: string; reason: string }
  | { op: "pong" };

const KNOWN_OPS = new Set(["welcome", "subscribed", "unsubscribed", "msg", "ack", "error", "pong"]);

/** Decode one text frame; null for anything that is not a known v1 frame. */
export function parseServerFrame(text: string): ServerFrame | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) return null;
  const op = (v as { op?: unknown }).op;
  if (typeof op !== "string" || !KNOWN_OPS.has(op)) return null;
  return v as ServerFrame;
}

export const subFrame = (ch: string): string => JSON.stringify({ op: "sub", ch });
export const PING_FRAME = '{"op":"ping"}';

/**
 * A `pub` frame whose `data` is the caller's JSON text spliced in verbatim, so the relay
 * stores and forwards exactly what was typed (it never re-encodes `data`). The caller must
 * have validated `jsonText` (see `validateJson`).
 */
export function pubFrame(ch: string, jsonText: string, id: string): string {
  return `{"op":"pub","ch":${JSON.stringify(ch)},"id":${JSON.stringify(id)},"data":${jsonText.trim()}}`;
}

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
