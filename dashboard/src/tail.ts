/**
 * The live tail: sampled `$sys.tail` entries, newest first, at most VIEW_ROWS rows.
 *
 * Entries land in a bounded buffer. The DOM is touched at most RENDER_EVERY_MS apart
 * (nobody reads 50 rows a second, and every update repaints the list), inside an
 * animation frame, by prepending the new rows and recycling the oldest `<li>` elements
 * instead of creating new ones.
 */

import { h, setAttr, setText } from "./dom";
import { fmtBytes, fmtClock } from "./format";
import type { TailEntry } from "./protocol";

export const VIEW_ROWS = 200;
/** Kept beyond the view so a new filter or a resume has history to show. */
const BUFFER_ROWS = 1000;
/** Minimum time between two DOM updates of the list. */
const RENDER_EVERY_MS = 250;

/** Case-insensitive substring match; with `*` a glob over the whole channel name. */
export function channelMatcher(filter: string): (ch: string) => boolean {
  const f = filter.trim().toLowerCase();
  if (!f) return () => true;
  if (!f.includes("*")) return (ch) => ch.toLowerCase().includes(f);
  const re = new RegExp(`^${f.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`);
  return (ch) => re.test(ch.toLowerCase());
}

export class TailView {
  private readonly buffer: TailEntry[] = [];
  private pending: TailEntry[] = [];
  private matches = channelMatcher("");
  private rebuild = false;
  private paused = false;
  private missed = 0;
  private nextRenderAt = 0;
  private timer = 0;

  constructor(
    private readonly list: HTMLElement,
    private readonly pauseBtn: HTMLButtonElement,
    private readonly countEl: HTMLElement,
    private readonly requestFrame: () => void,
  ) {}

  push(e: TailEntry): void {
    this.buffer.push(e);
    if (this.buffer.length > BUFFER_ROWS) this.buffer.splice(0, this.buffer.length - BUFFER_ROWS);
    if (!this.matches(e.ch)) return;
    if (this.paused) {
      this.missed++;
    } else {
      this.pending.push(e);
      if (this.pending.length > VIEW_ROWS) this.pending.splice(0, this.pending.length - VIEW_ROWS);
    }
    this.schedule();
  }

  /** Ask for a frame now, or when the throttle allows. */
  private schedule(): void {
    if (this.timer) return;
    const wait = this.nextRenderAt - performance.now();
    if (wait <= 0) {
      this.requestFrame();
    } else {
      this.timer = window.setTimeout(() => {
        this.timer = 0;
        this.requestFrame();
      }, wait);
    }
  }

  setFilter(filter: string): void {
    this.matches = channelMatcher(filter);
    this.rebuild = true;
    this.missed = 0;
    this.requestFrame();
  }

  togglePause(): void {
    this.paused = !this.paused;
    if (!this.paused) this.rebuild = true; // show what arrived meanwhile
    this.missed = 0;
    this.requestFrame();
  }

  /** Write pending changes to the DOM. Call from requestAnimationFrame only. */
  render(): void {
    const now = performance.now();
    if (!this.rebuild && now < this.nextRenderAt) return; // a timer is queued for later
    this.nextRenderAt = now + RENDER_EVERY_MS;
    setText(this.pauseBtn, this.paused ? (this.missed ? `Resume (+${this.missed})` : "Resume") : "Pause");
    setAttr(this.pauseBtn, "aria-pressed", String(this.paused));
    if (this.paused && !this.rebuild) return;
    if (this.rebuild) {
      this.rebuild = false;
      this.pending = [];
      this.rebuildFromBuffer();
    } else if (this.pending.length) {
      this.prepend(this.pending);
      this.pending = [];
    }
    setText(this.countEl, `${this.list.childElementCount} shown`);
  }

  private prepend(entries: TailEntry[]): void {
    const frag = document.createDocumentFragment();
    for (let i = entries.length - 1; i >= 0; i--) {
      const full = this.list.childElementCount + frag.childElementCount >= VIEW_ROWS;
      const li = full && this.list.lastElementChild ? (this.list.lastElementChild as HTMLLIElement) : newRow();
      fill(li, entries[i]);
      frag.append(li);
    }
    this.list.prepend(frag);
  }

  private rebuildFromBuffer(): void {
    const shown: TailEntry[] = [];
    for (let i = this.buffer.length - 1; i >= 0 && shown.length < VIEW_ROWS; i--) {
      if (this.matches(this.buffer[i].ch)) shown.push(this.buffer[i]);
    }
    const rows = Array.from(this.list.children) as HTMLLIElement[];
    shown.forEach((e, i) => {
      let li = rows[i];
      if (!li) {
        li = newRow();
        this.list.append(li);
      }
      fill(li, e);
    });
    for (let i = shown.length; i < rows.length; i++) rows[i].remove();
  }
}

function newRow(): HTMLLIElement {
  const li = h("li", "tail-row");
  li.append(
    h("time", "t-time"),
    h("span", "t-ch"),
    h("span", "t-seq"),
    h("span", "t-from"),
    h("span", "t-size"),
    h("code", "t-preview"),
  );
  return li;
}

function fill(li: HTMLLIElement, e: TailEntry): void {
  const [time, ch, seq, from, size, preview] = li.children;
  setAttr(li, "data-ch", e.ch);
  setText(time, fmtClock(e.ts));
  setText(ch, e.ch);
  setText(seq, `#${e.seq}`);
  setText(from, e.from);
  setText(size, fmtBytes(e.size));
  setText(preview, e.preview);
}
