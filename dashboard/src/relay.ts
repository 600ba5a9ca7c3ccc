/**
 * The dashboard's one WebSocket to the relay: connect, subscribe to `$sys.*`, keep alive,
 * reconnect with capped exponential backoff + jitter.
 *
 * Connection states and their allowed transitions live in TRANSITIONS below (one table,
 * one place); `go()` refuses anything else, so a stray socket event can't corrupt state.
 *
 *   idle ──start──▶ connecting ──open──▶ open ──welcome──▶ ready
 *     ▲                 │                 │                  │
 *     └──── stop ───────┴──── close ──────┴──────────────────┴──▶ waiting ──timer──▶ connecting
 */

import {
  PING_FRAME,
  STATS_CHANNEL,
  SUBPROTOCOL,
  TAIL_CHANNEL,
  parseServerFrame,
  subFrame,
  type ServerFrame,
} from "./protocol";

export type ConnState = "idle" | "connecting" | "open" | "ready" | "waiting";

const TRANSITIONS: Record<ConnState, readonly ConnState[]> = {
  idle: ["connecting"],
  connecting: ["open", "waiting", "idle", "connecting"],
  open: ["ready", "waiting", "idle", "connecting"],
  ready: ["waiting", "idle", "connecting"],
  waiting: ["connecting", "idle"],
};

/** Backoff: 0.5 s doubling per failed attempt, capped at 10 s, with 50–100 % jitter. */
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 10_000;

export function backoffDelay(attempt: number, rand: number = Math.random()): number {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling * (0.5 + 0.5 * rand));
}

/** Stats come every second: this long without any frame means the link is dead. */
const SILENCE_LIMIT_MS = 20_000;
/** Keep-alive ping, so idle proxies don't cut the socket. */
const PING_EVERY_MS = 10_000;
/** A connection must stay up this long before the backoff starts over. */
const STABLE_AFTER_MS = 10_000;
const PROBE_TIMEOUT_MS = 3_000;

export interface ConnStatus {
  state: ConnState;
  /** URL being used, token hidden. */
  url: string;
  /** When `waiting`: epoch ms of the next attempt. */
  retryAt: number;
  /** Consecutive failed attempts. */
  attempt: number;
  /** Why the last socket closed ("" if it hasn't). */
  lastClose: string;
  /**
   * The last attempt never opened although the relay answered HTTP: it refused the
   * upgrade, which for ferry means HTTP 401 (bad or expired token).
   */
  refused: boolean;
  /** Why there's no connection to make, when `idle` (e.g. no relay URL). */
  idleReason: string;
}

export interface RelayTarget {
  url: string;
  displayUrl: string;
  healthUrl: string;
  /** Offered next to ferry.v1.json: the `ferry.token.*` entry when a token is set. */
  protocols: string[];
  /** Subscribe to $sys.* once welcomed (only an admin token may: don't ask without one). */
  subscribe: boolean;
}

export interface RelayEvents {
  status(s: ConnStatus): void;
  frame(f: ServerFrame): void;
}

const CLOSE_NAMES: Record<number, string> = {
  1000: "normal closure",
  1001: "server going away",
  1006: "connection lost",
  1009: "frame too large",
  1011: "server error",
  4401: "token expired",
  4403: "token refused",
  4408: "slow consumer",
  4429: "rate limited",
};

export class RelayClient {
  private ws: WebSocket | null = null;
  private target: RelayTarget | null = null;
  private retryTimer = 0;
  private keepAliveTimer = 0;
  private lastRx = 0;
  private lastTx = 0;
  private readySince = 0;
  private status: ConnStatus = {
    state: "idle",
    url: "",
    retryAt: 0,
    attempt: 0,
    lastClose: "",
    refused: false,
    idleReason: "",
  };

  constructor(private readonly on: RelayEvents) {
    // The network coming back is a better signal than any timer.
    window.addEventListener("online", () => {
      if (this.status.state === "waiting") this.retryNow();
    });
  }

  get state(): ConnState {
    return this.status.state;
  }

  /** (Re)connect to `target` now, or go idle with `idleReason` when target is null. */
  configure(target: RelayTarget | null, idleReason = ""): void {
    this.target = target;
    this.teardown();
    this.status.attempt = 0;
    this.status.refused = false;
    this.status.lastClose = "";
    if (!target) {
      this.go("idle", { idleReason, url: "" });
      return;
    }
    this.connect();
  }

  retryNow(): void {
    if (this.target && (this.status.state === "waiting" || this.status.state === "idle")) {
      this.connect();
    }
  }

  /** Send one text frame; false when the socket isn't open. */
  send(text: string): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(text);
    this.lastTx = Date.now();
    return true;
  }

  // ---- internals ----------------------------------------------------------------------

  private go(state: ConnState, patch: Partial<ConnStatus> = {}): void {
    const from = this.status.state;
    if (from !== state && !TRANSITIONS[from].includes(state)) {
      console.warn(`ferry dashboard: ignoring transition ${from} → ${state}`);
      return;
    }
    this.status = { ...this.status, ...patch, state };
    this.on.status({ ...this.status });
  }

  private connect(): void {
    const target = this.target;
    if (!target) return;
    this.teardown();
    let ws: WebSocket;
    try {
      ws = new WebSocket(target.url, [SUBPROTOCOL, ...target.protocols]);
    } catch (e) {
      // Only a malformed URL throws here; retrying won't fix it.
      this.go("idle", { idleReason: `bad relay URL: ${e instanceof Error ? e.message : e}` });
      return;
    }
    this.ws = ws;
    let opened = false;
    let welcomed = false;
    this.go("connecting", { url: target.displayUrl, idleReason: "" });

    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.lastRx = this.lastTx = Date.now();
      this.go("open", { refused: false });
      // Without a token a relay that requires one waits for a first-frame `auth`; any other
      // first frame gets close 4401 at once (with auth off: a pong after the welcome).
      if (target.protocols.length === 0) this.send(PING_FRAME);
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (this.ws !== ws) return;
      this.lastRx = Date.now();
      if (typeof ev.data !== "string") return; // binary = msgpack; we asked for JSON
      const frame = parseServerFrame(ev.data);
      if (!frame) return;
      if (frame.op === "welcome") {
        welcomed = true;
        this.onWelcome();
      }
      this.on.frame(frame);
    };
    ws.onclose = (ev: CloseEvent) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopKeepAlive();
      const name = CLOSE_NAMES[ev.code] ?? "closed";
      const why = `${ev.code} ${name}${ev.reason ? `: ${ev.reason}` : ""}`;
      // 4401 before any welcome: refused for its token, like an HTTP 401 at the upgrade
      this.scheduleRetry(why, opened && (welcomed || ev.code !== 4401));
    };
    // onerror carries no detail in browsers; onclose always follows it.
    ws.onerror = () => undefined;
  }

  private onWelcome(): void {
    this.readySince = Date.now();
    this.go("ready");
    if (this.target?.subscribe) {
      this.send(subFrame(STATS_CHANNEL));
      this.send(subFrame(TAIL_CHANNEL));
    }
    this.startKeepAlive();
  }

  private scheduleRetry(why: string, opened: boolean): void {
    const wasStable = this.readySince > 0 && Date.now() - this.readySince >= STABLE_AFTER_MS;
    this.readySince = 0;
    const attempt = wasStable ? 0 : this.status.attempt;
    const delay = backoffDelay(attempt);
    this.retryTimer = window.setTimeout(() => this.connect(), delay);
    this.go("waiting", {
      retryAt: Date.now() + delay,
      attempt: attempt + 1,
      lastClose: why,
      refused: opened ? false : this.status.refused,
    });
    if (!opened) void this.probe();
  }

  /**
   * The socket never opened. Browsers hide why, so ask the relay's /healthz: if HTTP
   * answers, the relay is up and refused the upgrade itself (HTTP 401: bad token).
   */
  private async probe(): Promise<void> {
    const target = this.target;
    if (!target) return;
    const ctl = new AbortController();
    const timer = window.setTimeout(() => ctl.abort(), PROBE_TIMEOUT_MS);
    let reachable = false;
    try {
      // no-cors: an opaque answer still proves the server is there, on any origin.
      await fetch(target.healthUrl, { mode: "no-cors", cache: "no-store", signal: ctl.signal });
      reachable = true;
    } catch {
      reachable = false;
    } finally {
      window.clearTimeout(timer);
    }
    if (this.target === target && this.status.state === "waiting" && this.status.refused !== reachable) {
      this.go("waiting", { refused: reachable });
    }
  }

  private startKeepAlive(): void {
    this.stopKeepAlive();
    this.keepAliveTimer = window.setInterval(() => {
      const now = Date.now();
      if (now - this.lastRx > SILENCE_LIMIT_MS) {
        // Half-open TCP: close() would wait for a handshake that never comes.
        const ws = this.ws;
        this.ws = null;
        ws?.close(4000, "no traffic");
        this.stopKeepAlive();
        this.scheduleRetry(`no frame for ${Math.round(SILENCE_LIMIT_MS / 1000)} s`, true);
      } else if (now - this.lastTx >= PING_EVERY_MS) {
        this.send(PING_FRAME);
      }
    }, 2_000);
  }

  private stopKeepAlive(): void {
    window.clearInterval(this.keepAliveTimer);
    this.keepAliveTimer = 0;
  }

  /** Drop the current socket and timers without reporting a close. */
  private teardown(): void {
    window.clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.stopKeepAlive();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
        ws.close(1000, "reconfigured");
      }
    }
  }
}
