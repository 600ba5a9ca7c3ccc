/**
 * ferry-client: the official client of the ferry relay (wire protocol v1, docs/protocol.md).
 *
 * One `Ferry` keeps one WebSocket up for as long as it is not closed: it reconnects with
 * full-jitter backoff, resubscribes every channel from the last seq it delivered (with the
 * stream's epoch), resends unacknowledged publishes with their original `mid` (the relay
 * answers a retry of a durable one `dup:true` with the original seq), paces publishes by the
 * relay's token bucket, pings when idle and treats silence as a dead link.
 *
 * The state machine and the close-code policy are the two tables below; everything the
 * class does on a socket event goes through them.
 */

// ---- tables -------------------------------------------------------------------------------

export type State = "idle" | "connecting" | "open" | "ready" | "waiting" | "closed";
export type Transition = "connect" | "open" | "welcome" | "lost" | "retry" | "fatal" | "close";

/** state → event → next state. An event missing from a row is ignored in that state. */
export const TRANSITIONS: Readonly<Record<State, Readonly<Partial<Record<Transition, State>>>>> = {
  idle: { connect: "connecting", close: "closed" },
  connecting: { open: "open", lost: "waiting", fatal: "closed", close: "closed" },
  open: { welcome: "ready", lost: "waiting", fatal: "closed", close: "closed" },
  ready: { lost: "waiting", fatal: "closed", close: "closed" },
  waiting: { retry: "connecting", fatal: "closed", close: "closed" },
  closed: {},
};

/** What a close code means for the client: reconnect, fetch a new token first, or stop. */
export type ClosePolicy = "retry" | "reauth" | "fatal";

export const CLOSE_POLICY: Readonly<Record<number, ClosePolicy>> = {
  1000: "retry", // normal closure
  1001: "retry", // server going away: the first attempt is spread over a wider window
  1006: "retry", // connection lost (also what a browser sees of a refused upgrade)
  1011: "retry", // keepalive timeout or a server fault
  1013: "retry", // try again later (per-user connection limit at first-frame auth)
  4408: "retry", // slow consumer
  4429: "retry", // rate abuse
  4401: "reauth", // token expired or refused: getToken(), then reconnect
  4403: "fatal", // this user may not connect
  1009: "fatal", // frame too large: resending it would fail again
  1002: "fatal", // protocol error
  1007: "fatal", // invalid UTF-8
};

/** The policy for `code`; codes not in the table (1005, 1015, 4000 silence…) reconnect. */
export const closePolicy = (code: number): ClosePolicy => CLOSE_POLICY[code] ?? "retry";

export interface BackoffOptions {
  /** First window, doubled per failed attempt (default 250 ms). */
  baseMs?: number;
  /** Largest window (default 10 s). */
  capMs?: number;
  /** The first window after a 1001 (server going away: everyone reconnects), default 5 s. */
  goingAwayMs?: number;
}

/** Full jitter: a uniform delay in [0, min(cap, base·2^attempt)). */
export function backoffDelay(
  attempt: number,
  o: BackoffOptions = {},
  goingAway = false,
  rand: () => number = Math.random,
): number {
  const base = o.baseMs ?? 250;
  let window = Math.min(o.capMs ?? 10_000, base * 2 ** Math.min(attempt, 30));
  if (goingAway && attempt === 0) window = Math.max(window, o.goingAwayMs ?? 5_000);
  return Math.floor(rand() * window);
}

// ---- types --------------------------------------------------------------------------------

export interface Limits {
  max_frame_bytes?: number;
  max_data_bytes?: number;
  publish_rate?: number;
  publish_burst?: number;
  max_subscriptions?: number;
  history_size?: number;
  dedupe_window_s?: number;
  idle_timeout_s?: number;
}

export interface Welcome {
  op: "welcome";
  client: string;
  user: string;
  node: string;
  version: number;
  epoch?: string;
  limits?: Limits;
  inbox?: { ch: string; seq: number };
}

export interface Message<T = unknown> {
  ch: string;
  seq: number;
  ts: number;
  from: string;
  data: T;
  error?: string;
}

/**
 * Messages the client will never deliver. `reason` "history": seqs `from`..`to` fell out of
 * the channel's history. "epoch": the stream the client read from is gone (a new WAL, a
 * restarted `$sys.*` channel, or a seq that went backwards); `from`..`to` are the seqs of
 * the new stream that were not delivered (`to < from` when it has none yet).
 */
export interface Gap {
  ch: string;
  from: number;
  to: number;
  reason: "history" | "epoch";
  epoch?: string;
}

export interface Subscribed {
  op: "subscribed";
  ch: string;
  seq: number;
  epoch?: string;
  recovered?: boolean;
}

export interface SubscribeOptions<T = unknown> {
  onMessage: (m: Message<T>) => void;
  onGap?: (g: Gap) => void;
  /** Deliver from seq `since + 1` on (history permitting); default: from the head. */
  since?: number;
  /** The epoch `since` belongs to (default: the one this client last saw). */
  epoch?: string;
}

export interface PublishOptions {
  /** Reject with code "timeout" if no ack came by then (default: `publishTimeoutMs`). */
  timeoutMs?: number;
  /** `data` is JSON text, spliced into the frame as is (JSON encoding only). */
  json?: boolean;
}

export interface PublishResult {
  seq: number;
  dup: boolean;
}

/** Frames in and out: JSON text (default) or `ferry-client/msgpack`. */
export interface Codec {
  protocol: string;
  encode(frame: object): string | Uint8Array;
  decode(data: string | ArrayBuffer | Uint8Array): any;
}

/** The subset of the WebSocket API the client uses (browsers, Node 22+, the `ws` package). */
export interface SocketLike {
  readonly readyState: number;
  binaryType: any;
  onopen: any;
  onmessage: any;
  onclose: any;
  onerror: any;
  send(data: any): void;
  close(code?: number, reason?: string): void;
}

export type SocketFactory = new (url: string, protocols?: string | string[]) => SocketLike;

export interface StateInfo {
  /** Failed attempts in a row. */
  attempt: number;
  /** When `waiting`: ms until the next attempt. */
  delayMs?: number;
  /** The close code and reason that ended the last socket, if one did. */
  code?: number;
  reason?: string;
  /** Whether the last socket had opened (false: the upgrade itself failed). */
  opened?: boolean;
}

export interface FerryOptions {
  token?: string;
  /** Called for a first token, on 4401 and before expiry; one call at a time. */
  getToken?: () => Promise<string>;
  /**
   * How the token travels: "frame" (default): `{"op":"auth"}` as the first frame, so a
   * refusal is a readable close code; "query": `?token=`; "protocol": a
   * `ferry.token.<base64url>` subprotocol.
   */
  auth?: "frame" | "query" | "protocol";
  /** The WebSocket class (Node 20: `import WebSocket from "ws"`); default the global one. */
  WebSocket?: SocketFactory;
  codec?: Codec;
  backoff?: BackoffOptions;
  /** Send `{"op":"ping"}` after this long without sending (default 10 s). */
  pingIntervalMs?: number;
  /** Reconnect after this long without receiving anything (default 25 s). */
  silenceMs?: number;
  /** Reset the backoff once a connection stayed up this long (default 5 s). */
  stableMs?: number;
  /** Default publish deadline (default 30 s). */
  publishTimeoutMs?: number;
  /** Most publishes waiting for an ack or a connection (default 10,000). */
  maxQueue?: number;
  /** Refresh the token this long before it expires (default: a third of what is left, ≤ 60 s). */
  refreshLeadMs?: number;
  /** Direct messages to this user (`@user`), tracked across reconnects. */
  inbox?: Omit<SubscribeOptions, "since" | "epoch">;
  onState?: (state: State, info: StateInfo) => void;
  /** Errors no call is waiting for: handler exceptions, unclaimed error frames, lost subs. */
  onError?: (e: unknown) => void;
}

export class FerryError extends Error {
  constructor(
    readonly code: string,
    message: string = code,
    readonly closeCode?: number,
  ) {
    super(message);
    this.name = "FerryError";
  }
}

export const json: Codec = {
  protocol: "ferry.v1.json",
  encode: (f) => JSON.stringify(f),
  decode: (d) => JSON.parse(d as string),
};

// ---- internals ----------------------------------------------------------------------------

interface Pending {
  id: string;
  mid: string;
  frame: string | Uint8Array;
  ok: (r: PublishResult) => void;
  no: (e: unknown) => void;
  timer: ReturnType<typeof setTimeout>;
  sent: boolean;
}

const noop = () => {};

/** A v4 UUID; `crypto.randomUUID` needs a secure context, getRandomValues does not. */
function uuid(): string {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 15) | 64;
  b[8] = (b[8] & 63) | 128;
  const h = Array.from(b, (x) => (x + 256).toString(16).slice(1)).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The `exp` claim of a JWT (Unix seconds), or undefined. */
export function tokenExpiry(token: string): number | undefined {
  try {
    const p = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(p)).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

const b64url = (s: string) =>
  btoa(String.fromCharCode(...new TextEncoder().encode(s)))
    .replace(/\+/g, "-")
    .replace(/\//g, "_")
    .replace(/=+$/, "");

/** One subscription: its position (last delivered seq, epoch) survives reconnects. */
export class Subscription<T = unknown> {
  /** Last seq delivered (or the head it started from); undefined until known. */
  seq?: number;
  epoch?: string;
  /** @internal the since sent with the sub in flight, null for a plain sub */
  asked?: number | null;
  /** @internal a sub frame is in flight */
  pending = false;
  /** @internal */
  id = "";
  private p: Promise<Subscribed>;
  /** @internal */
  done!: [(s: Subscribed) => void, (e: unknown) => void];

  constructor(
    readonly ch: string,
    /** @internal */ readonly o: SubscribeOptions<T>,
    private readonly owner: Ferry,
  ) {
    this.seq = o.since;
    this.epoch = o.epoch;
    this.p = new Promise((a, b) => (this.done = [a, b]));
    this.p.catch(noop);
  }

  /** Resolves on the first `subscribed`; rejects on an error (forbidden…) or a close. */
  ready(): Promise<Subscribed> {
    return this.p;
  }

  unsubscribe(): void {
    this.owner.unsubscribe(this);
  }
}

export class Ferry {
  state: State = "idle";
  welcome?: Welcome;
  /** The user's own inbox subscription, once a welcome named it and `inbox` was given. */
  inbox?: Subscription;
  private readonly o: FerryOptions;
  private readonly codec: Codec;
  private token?: string;
  private tokenP?: Promise<string>;
  private ws?: SocketLike;
  private attempt = 0;
  private readyAt = 0;
  private lastRx = 0;
  private lastTx = 0;
  private n = 0;
  private readonly subs = new Map<string, Subscription<any>>();
  private readonly pubs = new Map<string, Pending>();
  private queue: Pending[] = [];
  private tokens = 0;
  private tokensAt = 0;
  private timers: Record<string, ReturnType<typeof setTimeout> | undefined> = {};
  private connected?: Promise<Welcome>;
  private settle?: [(w: Welcome) => void, (e: unknown) => void];
  private closedP?: Promise<void>;

  constructor(
    readonly url: string,
    options: FerryOptions = {},
  ) {
    this.o = options;
    this.codec = options.codec ?? json;
    this.token = options.token;
    this.onOnline = this.onOnline.bind(this);
  }

  /** Start connecting; resolves on the first welcome, rejects if the client stops first. */
  connect(): Promise<Welcome> {
    if (!this.connected) {
      this.connected = new Promise((a, b) => (this.settle = [a, b]));
      this.connected.catch(noop);
      if (this.state === "closed") this.settle![1](new FerryError("closed"));
      else {
        globalThis.addEventListener?.("online", this.onOnline);
        this.dial();
      }
    }
    return this.connected;
  }

  subscribe<T = unknown>(ch: string, options: SubscribeOptions<T>): Subscription<T> {
    const sub = new Subscription<T>(ch, options, this);
    if (this.state === "closed") sub.done[1](new FerryError("closed"));
    else {
      this.subs.set(ch, sub);
      if (this.state === "ready") this.sendSub(sub);
    }
    return sub;
  }

  /** @internal use Subscription.unsubscribe */
  unsubscribe(sub: Subscription<any>): void {
    if (this.subs.get(sub.ch) !== sub) return;
    this.subs.delete(sub.ch);
    if (this.inbox === sub) this.inbox = undefined;
    this.send({ op: "unsub", ch: sub.ch });
  }

  /**
   * Publish `data` to `ch`; resolves on the relay's durable ack. While disconnected it waits
   * in an ordered queue; after a reconnect it is resent with the same `mid`, so it is logged
   * once (`dup: true` when the relay already had it).
   */
  publish(ch: string, data: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    return new Promise((ok, no) => {
      if (this.state === "closed") return no(new FerryError("closed"));
      if (this.pubs.size >= (this.o.maxQueue ?? 10_000)) {
        return no(new FerryError("queue_full", "too many publishes waiting"));
      }
      const id = `p${++this.n}`;
      const mid = uuid();
      let frame: string | Uint8Array;
      if (this.codec === json) {
        const text = options.json ? String(data).trim() : JSON.stringify(data ?? null);
        frame = `{"op":"pub","ch":${JSON.stringify(ch)},"id":"${id}","mid":"${mid}","data":${text}}`;
      } else {
        frame = this.codec.encode({ op: "pub", ch, id, mid, data: options.json ? JSON.parse(String(data)) : data });
      }
      const p: Pending = {
        id,
        mid,
        frame,
        ok,
        no,
        sent: false,
        timer: setTimeout(
          () => this.fail(p, new FerryError("timeout", "no ack before the deadline")),
          options.timeoutMs ?? this.o.publishTimeoutMs ?? 30_000,
        ),
      };
      this.pubs.set(id, p);
      this.queue.push(p);
      this.flush();
    });
  }

  /** Skip the backoff wait (also done on the browser's `online` event). */
  retryNow(): void {
    if (this.state === "waiting") {
      this.clear("retry");
      this.go("retry");
      this.dial();
    }
  }

  /** Stop for good: no reconnect; pending publishes reject; resolves once the socket closed. */
  close(): Promise<void> {
    return (this.closedP ??= new Promise((done) => {
      const ws = this.ws;
      this.stop("close", new FerryError("closed"), {}, 1000);
      if (!ws || ws.readyState > 1) return done();
      const t = setTimeout(() => {
        (ws as any).terminate?.();
        done();
      }, 1_000);
      ws.onclose = () => {
        clearTimeout(t);
        done();
      };
    }));
  }

  // ---- the connection -------------------------------------------------------------------

  private go(ev: Transition, info: Partial<StateInfo> = {}, quiet = false): boolean {
    const next = TRANSITIONS[this.state][ev];
    if (!next) return false;
    this.state = next;
    if (!quiet) this.o.onState?.(next, { attempt: this.attempt, ...info });
    return true;
  }

  private async dial(): Promise<void> {
    if (!this.go("connect") && this.state !== "connecting") return;
    const o = this.o;
    let ws: SocketLike;
    try {
      if (!this.token && o.getToken) await this.fetchToken();
      if (this.state !== "connecting") return;
      const token = this.token;
      const mode = o.auth ?? "frame";
      let url = this.url;
      const protocols = [this.codec.protocol];
      if (token && mode === "query") url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
      if (token && mode === "protocol") protocols.push("ferry.token." + b64url(token));
      ws = new (o.WebSocket ?? (globalThis as any).WebSocket)(url, protocols);
    } catch (e) {
      // getToken failed or the URL is malformed: report it and keep trying
      this.o.onError?.(e);
      this.lost(1006, String(e), false);
      return;
    }
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    let opened = false;
    this.lastRx = this.lastTx = Date.now();
    this.keepalive();
    ws.onopen = () => {
      opened = true;
      this.go("open");
      // The first frame: the token (first-frame auth), or without one a ping, so that a relay
      // that wants a token says so at once (close 4401) rather than after its auth timeout.
      if (!this.token) this.send({ op: "ping" });
      else if ((o.auth ?? "frame") === "frame") this.send({ op: "auth", token: this.token, id: "auth" });
    };
    ws.onmessage = (ev: { data: string | ArrayBuffer }) => {
      if (this.ws !== ws) return;
      this.lastRx = Date.now();
      let f: any;
      try {
        f = this.codec.decode(ev.data);
      } catch {
        return;
      }
      if (f && typeof f === "object") this.frame(f);
    };
    ws.onclose = (ev: { code: number; reason: string }) => {
      if (this.ws === ws) this.lost(ev.code, ev.reason, opened);
    };
    ws.onerror = noop;
  }

  private fetchToken(): Promise<string> {
    return (this.tokenP ??= this.o.getToken!()
      .then((t) => (this.token = t))
      .finally(() => (this.tokenP = undefined)));
  }

  /** The socket is gone: requeue what it carried, then retry, re-authenticate or stop. */
  private lost(code: number, reason: string, opened: boolean): void {
    this.detach();
    const policy = closePolicy(code);
    const err = new FerryError("closed", `closed ${code}${reason ? ": " + reason : ""}`, code);
    if (policy === "fatal" || (policy === "reauth" && !this.o.getToken)) return this.stop("fatal", err, { code, reason, opened });
    if (policy === "reauth") this.token = undefined;
    if (this.readyAt && Date.now() - this.readyAt >= (this.o.stableMs ?? 5_000)) this.attempt = 0;
    this.readyAt = 0;
    const delayMs = backoffDelay(this.attempt, this.o.backoff, code === 1001);
    this.attempt++;
    if (this.go("lost", { delayMs, code, reason, opened })) {
      this.timers.retry = setTimeout(() => this.go("retry") && this.dial(), delayMs);
    }
  }

  private detach(code = 4000): void {
    const ws = this.ws;
    this.ws = undefined;
    this.clear("ping");
    this.clear("refresh");
    this.clear("flush");
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        if (ws.readyState < 2) ws.close(code);
      } catch {
        /* already gone */
      }
    }
    for (const p of this.pubs.values()) p.sent = false;
    this.queue = [...this.pubs.values()];
    for (const s of this.subs.values()) s.pending = false;
  }

  private stop(ev: Transition, err: FerryError, info?: Partial<StateInfo>, code?: number): void {
    globalThis.removeEventListener?.("online", this.onOnline);
    this.detach(code);
    for (const k in this.timers) this.clear(k);
    for (const p of this.pubs.values()) this.fail(p, err);
    for (const s of this.subs.values()) s.done[1](err);
    this.settle?.[1](err);
    this.go(ev, info);
  }

  private clear(k: string): void {
    clearTimeout(this.timers[k]);
    this.timers[k] = undefined;
  }

  private onOnline(): void {
    this.retryNow();
  }

  /** Ping when we have been quiet, reconnect when the relay has been. */
  private keepalive(): void {
    const ping = this.o.pingIntervalMs ?? 10_000;
    const silence = this.o.silenceMs ?? 25_000;
    const tick = () => {
      const now = Date.now();
      if (now - this.lastRx >= silence) {
        // A dead link cannot finish a close handshake: `ws` would hold its socket (and the
        // Node process) for its 30 s close timeout. Browsers have no terminate().
        const ws = this.ws as any;
        this.lost(4000, "silence", this.state !== "connecting");
        return ws?.terminate?.();
      }
      if (this.state === "ready" && now - this.lastTx >= ping) this.send({ op: "ping" });
      this.timers.ping = setTimeout(tick, Math.min(ping, silence) / 4);
    };
    this.timers.ping = setTimeout(tick, Math.min(ping, silence) / 4);
  }

  private send(frame: object | string | Uint8Array): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(typeof frame === "string" || frame instanceof Uint8Array ? frame : this.codec.encode(frame));
    this.lastTx = Date.now();
    return true;
  }

  // ---- frames -----------------------------------------------------------------------------

  private frame(f: any): void {
    switch (f.op) {
      case "welcome":
        return this.onWelcome(f);
      case "msg":
        return this.onMsg(f);
      case "subscribed":
        return this.onSubscribed(f);
      case "ack": {
        const p = this.pubs.get(f.id);
        if (p) {
          this.pubs.delete(p.id);
          clearTimeout(p.timer);
          p.ok({ seq: f.seq, dup: f.dup === true });
        }
        return;
      }
      case "refreshed":
        return this.scheduleRefresh(f.exp);
      case "unsubscribed": {
        const s = this.subs.get(f.ch);
        if (s && f.reason) {
          this.subs.delete(f.ch);
          this.o.onError?.(new FerryError("unsubscribed", `${f.ch}: ${f.reason}`));
        }
        return;
      }
      case "error":
        return this.onErrorFrame(f);
    }
  }

  private onWelcome(w: Welcome): void {
    // ready before the subs and the queue go out, but announced after them (onState sees
    // `welcome` set and a publish it makes queues behind the resent ones)
    if (!this.go("welcome", {}, true)) return;
    this.welcome = w;
    this.readyAt = Date.now();
    const l = w.limits ?? {};
    this.tokens = l.publish_burst ?? 0;
    this.tokensAt = Date.now();
    const box = w.inbox;
    if (box && this.o.inbox) {
      const s = this.subs.get(box.ch);
      if (!s) {
        // a new user's inbox: already subscribed from its head by the relay
        const sub = (this.inbox = new Subscription(box.ch, this.o.inbox, this));
        sub.seq = box.seq;
        sub.epoch = w.epoch;
        this.subs.set(box.ch, sub);
        sub.done[0]({ op: "subscribed", ch: box.ch, seq: box.seq, epoch: w.epoch });
      }
    }
    for (const s of this.subs.values()) this.sendSub(s);
    this.flush();
    this.scheduleRefresh(this.token ? tokenExpiry(this.token) : undefined);
    this.o.onState?.("ready", { attempt: this.attempt });
    this.settle?.[0](w);
  }

  private sendSub(s: Subscription<any>): void {
    const f: Record<string, unknown> = { op: "sub", ch: s.ch, id: (s.id = `s${++this.n}`) };
    s.asked = s.seq ?? null;
    if (s.seq !== undefined) {
      f.since = s.seq;
      if (s.epoch) f.epoch = s.epoch;
    }
    s.pending = this.send(f);
  }

  private onSubscribed(f: Subscribed & { id?: string }): void {
    const s = this.subs.get(f.ch);
    if (!s || (f.id && f.id !== s.id)) return;
    s.pending = false;
    const asked = s.asked;
    if (asked == null) s.seq = f.seq;
    else {
      const epochGone = asked > f.seq || (!!s.epoch && !!f.epoch && s.epoch !== f.epoch);
      if (f.recovered === false || epochGone) {
        const from = epochGone ? 1 : s.seq! + 1;
        s.seq = f.seq;
        if (epochGone || from <= f.seq) {
          const g: Gap = { ch: s.ch, from, to: f.seq, reason: epochGone ? "epoch" : "history", epoch: f.epoch };
          this.call(s.o.onGap ?? this.o.onError, g);
        }
      }
    }
    if (f.epoch) s.epoch = f.epoch;
    s.done[0](f);
  }

  private onMsg(m: Message & { op?: string }): void {
    const s = this.subs.get(m.ch);
    if (!s || s.seq === undefined || m.seq <= s.seq) return; // unknown, or a duplicate
    if (m.seq !== s.seq + 1) {
      // a live gap: ask again from where we are; what doesn't fit meanwhile is dropped
      if (!s.pending) this.sendSub(s);
      return;
    }
    s.seq = m.seq; // the position moves before the handler runs (and even if it throws)
    delete m.op;
    this.call(s.o.onMessage, m);
  }

  private call(fn: ((x: any) => unknown) | undefined, x: unknown): void {
    try {
      const r: any = fn?.(x);
      if (r && typeof r.then === "function") r.then(noop, (e: unknown) => this.o.onError?.(e));
    } catch (e) {
      try {
        this.o.onError?.(e);
      } catch {
        /* never let a handler break delivery */
      }
    }
  }

  private onErrorFrame(f: { id?: string; code: string; reason: string }): void {
    const err = new FerryError(f.code, f.reason);
    const p = f.id !== undefined ? this.pubs.get(f.id) : undefined;
    if (p) {
      if (f.code === "rate_limited") {
        // pacing should prevent this; try again after a token's worth of time. Back into
        // the queue in publish order (`pubs` keeps it): refusals of several in flight must
        // not come out reversed.
        p.sent = false;
        this.queue = [...this.pubs.values()].filter((x) => !x.sent);
        this.tokens = 0;
        this.tokensAt = Date.now();
        return this.flush();
      }
      return this.fail(p, err);
    }
    for (const s of this.subs.values()) {
      if (s.id === f.id) {
        this.subs.delete(s.ch);
        s.done[1](err);
        if (s.seq !== undefined) this.o.onError?.(err); // it was live until now
        return;
      }
    }
    this.o.onError?.(err);
  }

  private fail(p: Pending, e: unknown): void {
    if (this.pubs.delete(p.id)) {
      clearTimeout(p.timer);
      p.no(e);
    }
  }

  // ---- publishing ---------------------------------------------------------------------------

  /** Send queued publishes in order, as fast as the relay's token bucket allows. */
  private flush(): void {
    if (this.state !== "ready" || this.timers.flush) return;
    const l = this.welcome?.limits ?? {};
    const rate = (l.publish_rate ?? 0) * 0.9;
    const burst = Math.max(1, (l.publish_burst ?? 1) - 1);
    const max = l.max_frame_bytes ?? Infinity;
    const enc = new TextEncoder();
    while (this.queue.length) {
      const p = this.queue[0];
      if (!this.pubs.has(p.id) || p.sent) {
        this.queue.shift();
        continue;
      }
      const size = typeof p.frame === "string" ? (p.frame.length * 3 > max ? enc.encode(p.frame).length : 0) : p.frame.length;
      if (size > max) {
        this.queue.shift();
        this.fail(p, new FerryError("too_large", `a ${size}-byte frame; the relay takes ${max}`));
        continue;
      }
      if (rate > 0) {
        const now = Date.now();
        this.tokens = Math.min(burst, this.tokens + ((now - this.tokensAt) / 1000) * rate);
        this.tokensAt = now;
        if (this.tokens < 1) {
          this.timers.flush = setTimeout(() => {
            this.timers.flush = undefined;
            this.flush();
          }, Math.ceil(((1 - this.tokens) / rate) * 1000));
          return;
        }
        this.tokens--;
      }
      if (!this.send(p.frame)) return;
      p.sent = true;
      this.queue.shift();
    }
  }

  // ---- tokens -------------------------------------------------------------------------------

  private scheduleRefresh(exp?: number): void {
    this.clear("refresh");
    if (!exp || !this.o.getToken) return;
    const left = exp * 1000 - Date.now();
    const lead = this.o.refreshLeadMs ?? Math.min(60_000, left / 3);
    this.timers.refresh = setTimeout(async () => {
      try {
        this.token = undefined;
        const t = await this.fetchToken();
        this.send({ op: "auth", token: t, id: "refresh" });
      } catch (e) {
        this.o.onError?.(e);
      }
    }, Math.max(0, left - lead));
  }
}
