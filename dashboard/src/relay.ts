/**
 * The dashboard's connection to the relay, on the official client (`ferry-client`): it
 * keeps the socket up (full-jitter backoff, keep-alive pings, silence detection, the
 * browser's `online` event, the close-code policy), resubscribes `$sys.*` after a
 * reconnect and resends unacknowledged publishes with their `mid`. This file only maps
 * the client's states onto what the page shows and adds the one thing a browser needs on
 * top: telling "relay down" from "upgrade refused" (HTTP 401), which a browser hides.
 *
 * The client's states (see its README for the table) shown as the page's:
 *
 *   idle ──configure──▶ connecting ──open──▶ open ──welcome──▶ ready
 *                           ▲                  │                 │
 *                           └──── timer ── waiting ◀── close ────┘
 *   a terminal close (4401 without a token, 4403, 1009…) or no relay URL ──▶ idle
 */

import { Ferry, FerryError, type Message, type State, type StateInfo, type Subscription } from "ferry-client";
import { FLOW_CHANNEL, STATS_CHANNEL, TAIL_CHANNEL, type ServerFrame } from "./protocol";

export type ConnState = "idle" | "connecting" | "open" | "ready" | "waiting";

/** Backoff windows: from 0.5 s doubling per failed attempt, capped at 10 s (full jitter). */
export const BACKOFF = { baseMs: 500, capMs: 10_000, goingAwayMs: 5_000 };
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
   * The relay refused this token: the last attempt never opened although the relay
   * answers HTTP (an HTTP 401 at the upgrade), or it closed 4401 before any welcome.
   */
  refused: boolean;
  /** Why there's no connection to make, when `idle` (e.g. no relay URL). */
  idleReason: string;
}

export interface RelayTarget {
  url: string;
  displayUrl: string;
  healthUrl: string;
  /** The admin token ("" for none), sent as a `ferry.token.*` subprotocol. */
  token: string;
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
  1013: "try again later",
  4000: "no traffic",
  4401: "token expired or missing",
  4403: "token refused",
  4408: "slow consumer",
  4429: "rate limited",
};

export class RelayClient {
  private ferry: Ferry | null = null;
  private target: RelayTarget | null = null;
  private welcomed = false;
  /** `$sys.flow` is asked for only while the flow view is shown (it costs the relay). */
  private flowWanted = false;
  private flowSub: Subscription | null = null;
  private status: ConnStatus = {
    state: "idle",
    url: "",
    retryAt: 0,
    attempt: 0,
    lastClose: "",
    refused: false,
    idleReason: "",
  };

  constructor(private readonly on: RelayEvents) {}

  get state(): ConnState {
    return this.status.state;
  }

  /** (Re)connect to `target` now, or go idle with `idleReason` when target is null. */
  configure(target: RelayTarget | null, idleReason = ""): void {
    this.target = target;
    void this.ferry?.close();
    this.ferry = null;
    this.update({ attempt: 0, refused: false, lastClose: "" });
    if (!target) {
      this.update({ state: "idle", idleReason, url: "" });
      return;
    }
    let ferry: Ferry;
    try {
      new URL(target.url); // only a malformed URL fails here, and retrying won't fix it
      ferry = new Ferry(target.url, {
        token: target.token || undefined,
        auth: "protocol",
        backoff: BACKOFF,
        pingIntervalMs: PING_EVERY_MS,
        silenceMs: SILENCE_LIMIT_MS,
        stableMs: STABLE_AFTER_MS,
        publishTimeoutMs: 10_000,
        onState: (s, info) => {
          if (this.ferry === ferry) this.onState(ferry, s, info);
        },
        onError: (e) => console.warn("ferry:", e),
      });
    } catch (e) {
      this.update({ state: "idle", idleReason: `bad relay URL: ${e instanceof Error ? e.message : e}` });
      return;
    }
    this.ferry = ferry;
    this.flowSub = null;
    this.update({ url: target.displayUrl, idleReason: "" });
    if (target.subscribe) {
      for (const ch of [STATS_CHANNEL, TAIL_CHANNEL]) this.watch(ferry, ch);
      this.setFlow(this.flowWanted);
    }
    void ferry.connect().catch(() => undefined); // a terminal close is shown through onState
  }

  /** Subscribe to `$sys.flow` (the flow view is open) or stop (it is hidden). */
  setFlow(on: boolean): void {
    this.flowWanted = on;
    const ferry = this.ferry;
    if (!ferry || !this.target?.subscribe) return;
    if (on && !this.flowSub) {
      this.flowSub = this.watch(ferry, FLOW_CHANNEL);
    } else if (!on && this.flowSub) {
      this.flowSub.unsubscribe();
      this.flowSub = null;
    }
  }

  retryNow(): void {
    this.ferry?.retryNow();
  }

  /** The relay's durable ack of a publish of JSON text (spliced verbatim). */
  publish(ch: string, jsonText: string): Promise<{ seq: number; dup: boolean }> {
    if (!this.ferry) return Promise.reject(new FerryError("closed", "no relay to publish to"));
    return this.ferry.publish(ch, jsonText, { json: true });
  }

  // ---- internals ----------------------------------------------------------------------

  private watch(ferry: Ferry, ch: string): Subscription {
    const sub: Subscription = ferry.subscribe(ch, {
      onMessage: (m: Message) => this.on.frame({ op: "msg", ...m }),
      // a restarted relay's $sys.* is a new stream: nothing to recover, carry on live
      onGap: () => undefined,
    });
    sub.ready().then(
      (s) => this.on.frame({ op: "subscribed", ch, seq: s.seq, recovered: s.recovered }),
      (e: unknown) => {
        if (e instanceof FerryError && e.code !== "closed") this.on.frame({ op: "error", code: e.code, reason: e.message });
      },
    );
    return sub;
  }

  private onState(ferry: Ferry, s: State, info: StateInfo): void {
    const why = info.code === undefined ? "" : `${info.code} ${CLOSE_NAMES[info.code] ?? "closed"}${info.reason ? `: ${info.reason}` : ""}`;
    // 4401 before any welcome: refused for its token, like an HTTP 401 at the upgrade
    const refusedNow = info.code === 4401 && !this.welcomed;
    switch (s) {
      case "connecting":
        this.welcomed = false;
        this.update({ state: "connecting", idleReason: "" });
        break;
      case "open":
        this.update({ state: "open", refused: false });
        break;
      case "ready":
        this.welcomed = true;
        this.update({ state: "ready", attempt: 0 });
        if (ferry.welcome) this.on.frame(ferry.welcome);
        break;
      case "waiting":
        this.update({
          state: "waiting",
          retryAt: Date.now() + (info.delayMs ?? 0),
          attempt: info.attempt,
          lastClose: why,
          refused: refusedNow || (info.opened ? false : this.status.refused),
        });
        if (!info.opened) void this.probe(ferry);
        break;
      case "closed":
        this.update({
          state: "idle",
          lastClose: why,
          refused: refusedNow,
          idleReason: refusedNow ? "the relay wants a token" : `stopped: ${why || "closed"}`,
        });
        break;
      case "idle":
        break;
    }
  }

  private update(patch: Partial<ConnStatus>): void {
    this.status = { ...this.status, ...patch };
    this.on.status({ ...this.status });
  }

  /**
   * The socket never opened. Browsers hide why, so ask the relay's /healthz: if HTTP
   * answers, the relay is up and refused the upgrade itself (HTTP 401: bad token).
   */
  private async probe(ferry: Ferry): Promise<void> {
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
    if (this.ferry === ferry && this.status.state === "waiting" && this.status.refused !== reachable) {
      this.update({ refused: reachable });
    }
  }
}
