/**
 * The time-series charts (uPlot). A shared column store holds the last five minutes of
 * `$sys.stats`; `push()` appends one sample, `render()` (called from the frame scheduler,
 * at most once per stats message) hands the columns to each chart.
 */

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h, setText } from "./dom";
import { fmtBytes, fmtInt, fmtMs, fmtNum } from "./format";
import type { Stats } from "./protocol";

/** How much history the charts keep. */
export const WINDOW_S = 300;
/** A sample further than this from the previous one starts a new line segment (gap). */
const GAP_S = 5;

type Pick = (s: Stats) => number | null | undefined;
type Fmt = (n: number | null) => string;

interface SeriesDef {
  label: string;
  pick: Pick;
  color: string;
  fill?: boolean;
  /** Right-hand axis (its own scale). */
  right?: boolean;
}

interface ChartDef {
  name: string;
  title: string;
  /** Legend values (latest, or under the cursor). */
  fmt: Fmt;
  fmtRight?: Fmt;
  /** Axis ticks: short, unit only where it helps. */
  tick: Tick;
  tickRight?: Tick;
  series: SeriesDef[];
}

/** Formats one tick; `decimals` follows the tick spacing so labels never repeat. */
type Tick = (v: number, decimals: number) => string;

const C = {
  blue: "#5aa9ff",
  teal: "#3ddbb0",
  amber: "#ffb547",
  pink: "#ff6b9a",
  violet: "#a98bff",
};

const rate = (n: number | null) => (n === null ? "—" : `${fmtNum(n)}/s`);
const byteRate = (n: number | null) => (n === null ? "—" : `${fmtBytes(n)}/s`);
const secs = (n: number | null) => (n === null ? "—" : `${fmtNum(n)} s`);

const compactTick = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
const countTick: Tick = (v, d) => (Math.abs(v) >= 10_000 ? compactTick.format(v) : v.toFixed(d));
const msTick: Tick = (v, d) => (v === 0 ? "0" : `${v.toFixed(d)} ms`);
const secTick: Tick = (v, d) => (v === 0 ? "0" : `${v.toFixed(d)} s`);
const byteTick: Tick = (v) => (v === 0 ? "0" : fmtBytes(v).replace(".0 ", " "));

export const CHARTS: readonly ChartDef[] = [
  {
    name: "connections",
    title: "Connections",
    fmt: fmtInt,
    tick: countTick,
    series: [{ label: "connections", pick: (s) => s.connections, color: C.blue, fill: true }],
  },
  {
    name: "msgs",
    title: "Messages / s",
    fmt: rate,
    tick: countTick,
    series: [
      { label: "in", pick: (s) => s.msgs_in_per_s, color: C.teal, fill: true },
      { label: "deliveries", pick: (s) => s.deliveries_per_s, color: C.blue },
    ],
  },
  {
    name: "bytes",
    title: "Bandwidth / s",
    fmt: byteRate,
    tick: byteTick,
    series: [
      { label: "in", pick: (s) => s.bytes_in_per_s, color: C.teal, fill: true },
      { label: "out", pick: (s) => s.bytes_out_per_s, color: C.violet },
    ],
  },
  {
    name: "lag",
    title: "Replay lag",
    fmt: fmtInt,
    fmtRight: secs,
    tick: countTick,
    tickRight: secTick,
    series: [
      { label: "records", pick: (s) => s.db?.lag_records, color: C.amber, fill: true },
      { label: "seconds", pick: (s) => s.db?.lag_seconds, color: C.pink, right: true },
    ],
  },
  {
    name: "fsync",
    title: "WAL fsync latency",
    fmt: fmtMs,
    tick: msTick,
    series: [
      { label: "p50", pick: (s) => s.wal?.fsync_p50_ms, color: C.blue },
      { label: "p99", pick: (s) => s.wal?.fsync_p99_ms, color: C.amber },
    ],
  },
  {
    name: "ack",
    title: "Publish → ack latency",
    fmt: fmtMs,
    tick: msTick,
    series: [
      { label: "p50", pick: (s) => s.ack_p50_ms, color: C.blue },
      { label: "p99", pick: (s) => s.ack_p99_ms, color: C.amber },
    ],
  },
];

const CHART_H = 160;
const AXIS_STROKE = "#8a94a6";
const GRID_STROKE = "rgba(255,255,255,0.06)";
const FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

function tickFmt(tick: Tick) {
  return (_u: uPlot, splits: number[], _axis: number, _space: number, incr: number) => {
    let decimals = 0;
    while (decimals < 3 && Math.abs(Math.round(incr * 10 ** decimals) - incr * 10 ** decimals) > 1e-9) decimals++;
    return splits.map((v) => (v === null ? "" : tick(v, decimals)));
  };
}

const pad2 = (n: number) => String(n).padStart(2, "0");

/** Time ticks on one line: 14:05 on whole minutes, 14:05:30 in between. */
function timeTicks(_u: uPlot, splits: number[]): string[] {
  return splits.map((v) => {
    const d = new Date(v * 1000);
    const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    return d.getSeconds() ? `${hm}:${pad2(d.getSeconds())}` : hm;
  });
}

/** Tick steps for bytes: 1-2-5 steps of KiB, MiB, GiB, so labels come out round. */
const BYTE_INCRS = [1, 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4]
  .flatMap((unit) => [1, 2, 5, 10, 20, 50, 100, 200, 500].map((n) => n * unit));

/** Time tick steps (seconds): whole seconds up to an hour. */
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];

/** Tick steps for counts: whole numbers only (uPlot's default goes down to 0.1). */
const INT_INCRS = [1, 1e3, 1e6, 1e9]
  .flatMap((scale) => [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500].map((n) => n * scale))
  .sort((a, b) => a - b);

function zeroBased(_u: uPlot, _min: number | null, max: number | null): uPlot.Range.MinMax {
  const top = max !== null && max > 0 ? max * 1.15 : 1;
  return [0, top];
}

function hexAlpha(hex: string, a: number): string {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}

interface LiveChart {
  def: ChartDef;
  plot: uPlot;
  box: HTMLElement;
  values: HTMLElement[];
  /** Column indices into the store, one per series. */
  cols: number[];
  hoverIdx: number | null;
}

export class ChartBoard {
  private readonly xs: number[] = [];
  private readonly cols: (number | null)[][] = [];
  private readonly picks: Pick[] = [];
  private readonly charts: LiveChart[] = [];
  private readonly pendingSize = new Map<LiveChart, number>();
  private dirty = false;

  constructor(root: HTMLElement, private readonly requestFrame: () => void) {
    for (const def of CHARTS) this.charts.push(this.create(root, def));
    const ro = new ResizeObserver((entries) => {
      for (const e of entries) {
        const c = this.charts.find((x) => x.box === e.target);
        if (c) this.pendingSize.set(c, Math.floor(e.contentRect.width));
      }
      this.requestFrame();
    });
    for (const c of this.charts) ro.observe(c.box);
  }

  private create(root: HTMLElement, def: ChartDef): LiveChart {
    const card = h("figure", "chart");
    card.dataset.testid = `chart-${def.name}`;
    const head = h("figcaption", "chart-head");
    head.append(h("span", "chart-title", def.title));
    const legend = h("span", "chart-legend");
    const values: HTMLElement[] = [];
    for (const s of def.series) {
      const item = h("span", "chart-key");
      const sw = h("i", "swatch");
      sw.style.background = s.color;
      const v = h("b", "", "—");
      item.append(sw, `${s.label} `, v);
      legend.append(item);
      values.push(v);
    }
    head.append(legend);
    const box = h("div", "chart-box");
    card.append(head, box);
    root.append(card);

    const cols = def.series.map((s) => {
      this.picks.push(s.pick);
      this.cols.push([]);
      return this.cols.length - 1;
    });

    const hasRight = def.series.some((s) => s.right);
    const axes: uPlot.Axis[] = [
      {
        stroke: AXIS_STROKE,
        font: FONT,
        grid: { stroke: GRID_STROKE, width: 1 },
        ticks: { stroke: GRID_STROKE, width: 1, size: 4 },
        space: 70,
        size: 26,
        incrs: TIME_INCRS,
        values: timeTicks,
      },
      {
        stroke: AXIS_STROKE,
        font: FONT,
        grid: { stroke: GRID_STROKE, width: 1 },
        ticks: { show: false },
        size: 62,
        gap: 4,
        space: 28,
        values: tickFmt(def.tick),
        ...(def.tick === countTick ? { incrs: INT_INCRS } : def.tick === byteTick ? { incrs: BYTE_INCRS } : {}),
      },
    ];
    if (hasRight) {
      axes.push({
        scale: "right",
        side: 1,
        stroke: AXIS_STROKE,
        font: FONT,
        grid: { show: false },
        ticks: { show: false },
        size: 48,
        gap: 4,
        space: 28,
        values: tickFmt(def.tickRight ?? def.tick),
      });
    }

    const live: LiveChart = { def, plot: null as unknown as uPlot, box, values, cols, hoverIdx: null };
    const opts: uPlot.Options = {
      width: Math.max(200, Math.floor(box.clientWidth) || 300),
      height: CHART_H,
      pxAlign: 0,
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      scales: {
        x: { time: true },
        y: { range: zeroBased },
        right: { range: zeroBased },
      },
      axes,
      series: [
        {},
        ...def.series.map((s) => ({
          label: s.label,
          scale: s.right ? "right" : "y",
          stroke: s.color,
          width: 1.5,
          fill: s.fill ? hexAlpha(s.color, 0.12) : undefined,
          points: { show: false },
        })),
      ],
      hooks: {
        setCursor: [
          (u: uPlot) => {
            live.hoverIdx = u.cursor.idx ?? null;
            this.writeLegend(live);
          },
        ],
      },
    };
    live.plot = new uPlot(opts, [[], ...def.series.map(() => [])] as uPlot.AlignedData, box);
    return live;
  }

  /** Record one stats sample; the charts redraw on the next `render()`. */
  push(s: Stats, fallbackMs: number): void {
    const x = (typeof s.ts_ms === "number" ? s.ts_ms : fallbackMs) / 1000;
    const last = this.xs.length ? this.xs[this.xs.length - 1] : null;
    if (last !== null && x <= last) return; // duplicate or out of order: keep x monotonic
    if (last !== null && x - last > GAP_S) {
      // A stretch without stats (disconnect): a null row breaks the lines there.
      this.xs.push(last + 1);
      for (const col of this.cols) col.push(null);
    }
    this.xs.push(x);
    for (let i = 0; i < this.cols.length; i++) {
      const v = this.picks[i](s);
      this.cols[i].push(typeof v === "number" && Number.isFinite(v) ? v : null);
    }
    let drop = 0;
    while (drop < this.xs.length && this.xs[drop] < x - WINDOW_S) drop++;
    if (drop) {
      this.xs.splice(0, drop);
      for (const col of this.cols) col.splice(0, drop);
    }
    this.dirty = true;
  }

  /** Forget everything (the relay node changed). */
  clear(): void {
    this.xs.length = 0;
    for (const col of this.cols) col.length = 0;
    this.dirty = true;
  }

  get samples(): number {
    return this.xs.length;
  }

  /** Apply pending resizes and new data. Call from requestAnimationFrame only. */
  render(): void {
    for (const [c, width] of this.pendingSize) {
      if (width > 0) c.plot.setSize({ width, height: CHART_H });
    }
    this.pendingSize.clear();
    if (!this.dirty) return;
    this.dirty = false;
    for (const c of this.charts) {
      c.plot.setData([this.xs, ...c.cols.map((i) => this.cols[i])] as uPlot.AlignedData);
      this.writeLegend(c);
    }
  }

  private writeLegend(c: LiveChart): void {
    const n = this.xs.length;
    const idx = c.hoverIdx ?? (n ? n - 1 : null);
    c.def.series.forEach((s, i) => {
      const v = idx === null ? null : (this.cols[c.cols[i]][idx] ?? null);
      setText(c.values[i], (s.right ? (c.def.fmtRight ?? c.def.fmt) : c.def.fmt)(v));
    });
  }
}
