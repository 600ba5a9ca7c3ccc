/**
 * A message's life, for the flow view: received → appended → written → fsynced → acked
 * → delivered → in the database.
 *
 * What is measured and what is estimated, stage by stage:
 *
 * - received: the relay's receive time (`ts`, whole ms), measured;
 * - acked and delivered: `ts + durable_ms` from `$sys.tail`, measured per message (the
 *   relay's durable callback acks the batch and fans it out in one go); `delivered` is
 *   the number of subscribers it was handed to;
 * - appended / written / fsynced: the relay times these per WAL batch, not per message
 *   (common/latency.py PUBLISH_STAGES), so they are the p50s of the publish-path stages
 *   (`stats.stages`: queue; handoff + write; fsync; then wake) as last reported, laid
 *   out from `received` and scaled to end by the measured ack: marked "≈";
 * - on the sockets: + the `flush` stage p50, also "≈";
 * - in the database: the first `$sys.stats` whose `db.checkpoint_lsn` reached the
 *   message's LSN (observed, so within one stats interval of the real commit).
 */

import type { TailEntry } from "./protocol";

export type StageKey = "received" | "appended" | "written" | "fsynced" | "acked" | "delivered" | "logged";

export interface TimelineStage {
  key: StageKey;
  label: string;
  /** Epoch ms, or null when it has not happened (yet) or cannot be known. */
  at: number | null;
  estimated: boolean;
  note: string;
}

/** p50 (ms) of the publish-path stages, the latest known of each. */
export type StageP50 = Partial<Record<"queue" | "handoff" | "write" | "fsync" | "wake" | "flush", number>>;

export interface TrackedMessage {
  entry: TailEntry;
  /** The stage p50s as they were when the message came by. */
  stages: StageP50;
  /** When the database log was first seen to hold it (epoch ms). */
  loggedAt: number | null;
}

/** `dbState` is the database log's state ("off": no replayer, nothing is ever logged). */
export function timeline(m: TrackedMessage, dbState: string | null): TimelineStage[] {
  const e = m.entry;
  const ts = e.ts;
  const durable = e.durable_ms ?? 0;
  const acked = ts + durable;
  const s = m.stages;
  const queue = s.queue ?? 0;
  const written = queue + (s.handoff ?? 0) + (s.write ?? 0);
  const fsynced = written + (s.fsync ?? 0);
  const wake = fsynced + (s.wake ?? 0);
  const hasWal = s.fsync !== undefined;
  // the batch stages end before the measured ack: scale them into it
  const k = wake > durable && wake > 0 ? durable / wake : 1;
  const est = (offset: number): number => ts + offset * k;
  const wal = (at: number): number | null => (hasWal ? at : null);
  const noWal = hasWal ? "" : "no WAL stages (memory log)";
  return [
    { key: "received", label: "received", at: ts, estimated: false, note: `from ${e.from}` },
    { key: "appended", label: "appended to a WAL batch", at: wal(est(queue)), estimated: true, note: noWal || "p50 queue" },
    { key: "written", label: "written", at: wal(est(written)), estimated: true, note: noWal || "p50 handoff + write" },
    { key: "fsynced", label: "fsynced", at: wal(est(fsynced)), estimated: true, note: noWal || "p50 fdatasync" },
    { key: "acked", label: "acked", at: acked, estimated: false, note: "durable: ack sent" },
    {
      key: "delivered",
      label: `delivered to ${e.delivered ?? 0} subscriber${e.delivered === 1 ? "" : "s"}`,
      at: acked + (s.flush ?? 0),
      estimated: s.flush !== undefined,
      note: s.flush !== undefined ? "+ p50 flush to the sockets" : "handed to the outboxes",
    },
    {
      key: "logged",
      label: "written to the database",
      at: m.loggedAt,
      estimated: false,
      note: dbState === "off" ? "no database log" : m.loggedAt === null ? "waiting for the replayer" : `LSN ${e.lsn ?? "?"} checkpointed`,
    },
  ];
}
