/** Number and time formatting for the panels. Every formatter renders null as "—". */

export const DASH = "—";

const isNum = (n: unknown): n is number => typeof n === "number" && Number.isFinite(n);

const grouped = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const oneDecimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
const compact = new Intl.NumberFormat("en-US", {
  notation: "compact",
  maximumFractionDigits: 1,
});

/** 1,234 — integer counts. */
export function fmtInt(n: number | null | undefined): string {
  return isNum(n) ? grouped.format(n) : DASH;
}

/** Rates and other magnitudes: 0.4, 12.5, 9,876, 12.3K, 1.2M. */
export function fmtNum(n: number | null | undefined): string {
  if (!isNum(n)) return DASH;
  const a = Math.abs(n);
  if (a >= 100_000) return compact.format(n);
  if (a >= 100) return grouped.format(n);
  return oneDecimal.format(n);
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** 512 B, 1.5 KiB, 20.3 MiB. */
export function fmtBytes(n: number | null | undefined): string {
  if (!isNum(n)) return DASH;
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? Math.round(v) : v.toFixed(v >= 100 ? 0 : 1)} ${UNITS[i]}`;
}

/** Milliseconds with precision that fits the size: 0.31 ms, 4.2 ms, 120 ms. */
export function fmtMs(n: number | null | undefined): string {
  if (!isNum(n)) return DASH;
  const a = Math.abs(n);
  const s = a < 10 ? n.toFixed(2) : a < 100 ? n.toFixed(1) : grouped.format(n);
  return `${s} ms`;
}

/** Seconds as a short duration: 0.4 s, 42 s, 3m 05s, 4h 12m, 2d 3h. */
export function fmtDuration(sec: number | null | undefined): string {
  if (!isNum(sec)) return DASH;
  if (sec < 10) return `${sec.toFixed(1)} s`;
  const s = Math.floor(sec);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** Wall-clock time of an epoch-ms timestamp, with milliseconds: 14:03:07.123. */
export function fmtClock(ms: number | null | undefined): string {
  if (!isNum(ms)) return DASH;
  const d = new Date(ms);
  const p = (x: number, w = 2) => String(x).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}
