// A scripted relay for the unit tests: FakeSocket stands in for the WebSocket class
// (the client takes it as the `WebSocket` option) and records every frame the client
// sends; the test plays the server's part. Time is node:test's mock clock, so backoff,
// pings, deadlines and pacing are stepped through, never waited for.
import { mock } from "node:test";
import { Ferry } from "../dist/index.js";

export class FakeSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.sentAt = [];
    this.raw = [];
    this.closedWith = undefined;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.all.push(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(typeof data === "string" ? JSON.parse(data) : data);
    this.sentAt.push(Date.now());
    this.raw.push(data);
  }
  close(code) {
    this.closedWith = code ?? 1005;
    if (this.readyState === 3) return;
    this.readyState = 2;
    // the relay answers the close handshake
    setImmediate(() => this.serverClose(code ?? 1005, ""));
  }
  /** `ws`'s: drop the connection without a close handshake (no close event from the relay). */
  terminate() {
    this.terminated = true;
    this.readyState = 3;
  }
  // ---- the server's side ----
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  recv(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  serverClose(code, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** Frames of one op the client sent on this socket. */
  ops(op) {
    return this.sent.filter((f) => f.op === op);
  }
}

/** The mock clock starts here. */
export const NOW_MS = 1_800_000_000_000;

export const WELCOME = {
  op: "welcome",
  client: "n-1",
  user: "alice",
  node: "n",
  version: 1,
  epoch: "e1",
  limits: { max_frame_bytes: 65536, publish_rate: 0, publish_burst: 0 },
};

/** Mock the clock, make a client on FakeSocket. `t.after` restores everything. */
export function setup(t, options = {}, url = "ws://relay/ws") {
  FakeSocket.all = [];
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: NOW_MS });
  const errors = [];
  const states = [];
  const ferry = new Ferry(url, {
    WebSocket: FakeSocket,
    onError: (e) => errors.push(e),
    onState: (s, info) => states.push([s, info]),
    ...options,
  });
  t.after(() => {
    ferry.close();
    mock.timers.reset();
  });
  return { ferry, errors, states, sockets: FakeSocket.all, last: () => FakeSocket.all.at(-1) };
}

/** Let promise callbacks (and the fake close handshakes) run. */
export const settle = () => new Promise((r) => setImmediate(r));

/** Open the newest socket and welcome it. */
export function welcome(socket, extra = {}) {
  socket.open();
  socket.recv({ ...WELCOME, ...extra });
}

/** Advance the mock clock in 1 ms steps, so timers set by timers run on time too. */
export function tick(ms) {
  for (let i = 0; i < ms; i++) mock.timers.tick(1);
}
