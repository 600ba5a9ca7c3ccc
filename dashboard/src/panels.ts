/**
 * The stats panels: headline tiles, WAL card, database card, top-channels table.
 * `render(stats)` runs inside the frame scheduler and writes only values that changed.
 */

import { byTestId, h, setAttr, setHidden, setText } from "./dom";
import { DASH, fmtBytes, fmtDuration, fmtInt, fmtMs, fmtNum } from "./format";
import type { Stats, TopChannel } from "./protocol";

const TOP_ROWS = 20;

/** A value element: formatted text, raw number in data-value for tests and tooling. */
function put(el: HTMLElement, text: string, raw: number | string | null | undefined): void {
  setText(el, text);
  setAttr(el, "data-value", raw === null || raw === undefined ? "" : String(raw));
}

const rate = (n: number | null | undefined) => (typeof n === "number" ? `${fmtNum(n)}/s` : DASH);
const byteRate = (n: number | null | undefined) => (typeof n === "number" ? `${fmtBytes(n)}/s` : DASH);

export class StatsPanels {
  private readonly el = {
    connections: byTestId("stat-connections"),
    subscriptions: byTestId("stat-subscriptions"),
    channels: byTestId("stat-channels"),
    msgsIn: byTestId("stat-msgs-in"),
    deliveries: byTestId("stat-deliveries"),
    bytesIn: byTestId("stat-bytes-in"),
    bytesOut: byTestId("stat-bytes-out"),
    ackP50: byTestId("stat-ack-p50"),
    ackP99: byTestId("stat-ack-p99"),
    slow: byTestId("stat-slow-closes"),
    errors: byTestId("stat-errors"),
    errorsDetail: byTestId("stat-errors-detail"),

    walCard: byTestId("wal-card"),
    walState: byTestId("wal-state"),
    walBadge: byTestId("wal-badge"),
    walFailure: byTestId("wal-failure"),
    walSync: byTestId("wal-sync"),
    walHead: byTestId("wal-head"),
    walSegments: byTestId("wal-segments"),
    walBytes: byTestId("wal-bytes"),
    walRpf: byTestId("wal-records-per-fsync"),
    walFsync: byTestId("wal-fsync"),

    dbCard: byTestId("db-card"),
    dbState: byTestId("db-state"),
    dbUrl: byTestId("db-url"),
    dbCheckpoint: byTestId("db-checkpoint"),
    dbLag: byTestId("db-lag"),
    dbRows: byTestId("db-rows"),
    dbError: byTestId("db-error"),

    top: byTestId<HTMLTableSectionElement>("top-channels"),
    topEmpty: byTestId("top-channels-empty"),
  };
  private readonly topRows: HTMLTableRowElement[] = [];

  render(s: Stats): void {
    const e = this.el;
    put(e.connections, fmtInt(s.connections), s.connections);
    put(e.subscriptions, fmtInt(s.subscriptions), s.subscriptions);
    put(e.channels, fmtInt(s.channels), s.channels);
    put(e.msgsIn, rate(s.msgs_in_per_s), s.msgs_in_per_s);
    put(e.deliveries, rate(s.deliveries_per_s), s.deliveries_per_s);
    put(e.bytesIn, byteRate(s.bytes_in_per_s), s.bytes_in_per_s);
    put(e.bytesOut, byteRate(s.bytes_out_per_s), s.bytes_out_per_s);
    put(e.ackP50, fmtMs(s.ack_p50_ms), s.ack_p50_ms);
    put(e.ackP99, fmtMs(s.ack_p99_ms), s.ack_p99_ms);
    put(e.slow, fmtInt(s.slow_consumer_closes), s.slow_consumer_closes);

    const errs = Object.entries(s.errors ?? {}).filter(([, n]) => typeof n === "number" && n > 0);
    errs.sort((a, b) => b[1] - a[1]);
    const total = errs.reduce((t, [, n]) => t + n, 0);
    put(e.errors, s.errors ? fmtInt(total) : DASH, s.errors ? total : null);
    setText(e.errorsDetail, errs.length ? errs.map(([c, n]) => `${c} ${fmtInt(n)}`).join(" · ") : "none");
    setAttr(e.errors.closest(".tile")!, "data-alert", total > 0 ? "warn" : null);

    this.renderWal(s);
    this.renderDb(s);
    this.renderTop(s.top_channels ?? []);
  }

  private renderWal(s: Stats): void {
    const e = this.el;
    const w = s.wal;
    const state = !w || w.writable === null ? "unknown" : w.writable ? "writable" : "failed";
    setAttr(e.walState, "data-state", state);
    setAttr(e.walCard, "data-state", state);
    setText(e.walBadge, state === "failed" ? "not writable" : state);
    const failure = state === "failed" ? w?.failure || "the WAL refused a write or fsync" : "";
    setText(e.walFailure, failure);
    setHidden(e.walFailure, !failure);
    const sync = w?.sync ?? null;
    setText(e.walSync, sync === "write" ? "write (unsafe on power loss)" : (sync ?? DASH));
    setAttr(e.walSync, "data-alert", sync === "write" ? "warn" : null);
    put(e.walHead, fmtInt(w?.head_lsn), w?.head_lsn);
    put(e.walSegments, fmtInt(w?.segments), w?.segments);
    put(e.walBytes, fmtBytes(w?.bytes), w?.bytes);
    put(e.walRpf, fmtNum(w?.records_per_fsync), w?.records_per_fsync);
    setText(e.walFsync, `${fmtMs(w?.fsync_p50_ms)} / ${fmtMs(w?.fsync_p99_ms)}`);
  }

  private renderDb(s: Stats): void {
    const e = this.el;
    const d = s.db;
    const state = d?.state ?? "unknown";
    setText(e.dbState, state);
    setAttr(e.dbState, "data-state", state);
    setAttr(e.dbCard, "data-state", state);
    setText(e.dbUrl, d?.url || DASH);
    put(e.dbCheckpoint, fmtInt(d?.checkpoint_lsn), d?.checkpoint_lsn);
    const lag =
      d && (d.lag_records !== null || d.lag_seconds !== null)
        ? `${fmtInt(d.lag_records)} records · ${fmtDuration(d.lag_seconds)}`
        : DASH;
    put(e.dbLag, lag, d?.lag_records);
    put(e.dbRows, d ? rate(d.rows_per_s) : DASH, d?.rows_per_s);
    setText(e.dbError, d ? d.last_error || "none" : DASH);
    setAttr(e.dbError, "data-alert", d?.last_error ? "error" : null);
  }

  /** Fixed pool of rows: rewritten in place, extra rows hidden, never rebuilt. */
  private renderTop(top: TopChannel[]): void {
    const rows = top.slice(0, TOP_ROWS);
    const max = rows.reduce((m, r) => Math.max(m, r.rate ?? 0), 0);
    while (this.topRows.length < rows.length) {
      const tr = h("tr");
      tr.append(h("td", "ch"), h("td", "num"), h("td", "num"));
      this.el.top.append(tr);
      this.topRows.push(tr);
    }
    this.topRows.forEach((tr, i) => {
      const r = rows[i];
      setHidden(tr, !r);
      if (!r) return;
      const [ch, rt, subs] = tr.cells;
      setText(ch, r.ch);
      setAttr(ch, "title", r.ch);
      setText(rt, fmtNum(r.rate));
      setText(subs, fmtInt(r.subscribers));
      const w = max > 0 && r.rate ? `${Math.max(1, Math.round((100 * r.rate) / max))}%` : "0%";
      if (tr.style.getPropertyValue("--w") !== w) tr.style.setProperty("--w", w);
    });
    setHidden(this.el.topEmpty, rows.length > 0);
  }
}

/** Header: node, user, uptime. */
export class HeaderView {
  private readonly node = byTestId("node-id");
  private readonly uptime = byTestId("uptime");
  private readonly user = byTestId("user");

  welcome(node: string, user: string): void {
    setText(this.node, node || DASH);
    setText(this.user, user || DASH);
  }

  stats(s: Stats): void {
    if (s.node) setText(this.node, s.node);
    setText(this.uptime, fmtDuration(s.uptime_s));
  }
}
