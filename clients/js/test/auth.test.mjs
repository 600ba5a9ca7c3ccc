import assert from "node:assert/strict";
import { test } from "node:test";
import { tokenExpiry } from "../dist/index.js";
import { NOW_MS, WELCOME, settle, setup, tick, welcome } from "./harness.mjs";

const FAST = { backoff: { baseMs: 10, capMs: 10 } };
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const jwt = (claims) => `${b64({ alg: "HS256" })}.${b64(claims)}.sig`;
const nowS = () => Math.floor(Date.now() / 1000);
const START_S = NOW_MS / 1000; // tokens are made before setup() mocks the clock

function deferred() {
  let resolve, reject;
  const promise = new Promise((a, b) => ((resolve = a), (reject = b)));
  return { promise, resolve, reject };
}

test("tokenExpiry reads exp", () => {
  assert.equal(tokenExpiry(jwt({ sub: "a", exp: 123 })), 123);
  assert.equal(tokenExpiry("not-a-jwt"), undefined);
});

test("first-frame auth: the token is the first frame; nothing else before welcome", async (t) => {
  const h = setup(t, { ...FAST, token: "T1" });
  h.ferry.connect();
  h.ferry.subscribe("room.1", { onMessage() {} });
  h.ferry.publish("room.1", 1).catch(() => {});
  const ws = h.last();
  assert.equal(ws.url, "ws://relay/ws", "no token in the URL");
  assert.deepEqual(ws.protocols, ["ferry.v1.json"]);
  ws.open();
  assert.deepEqual(ws.sent, [{ op: "auth", token: "T1", id: "auth" }]);
  tick(100);
  assert.equal(ws.sent.length, 1, "nothing else until welcome");
  ws.recv(WELCOME);
  assert.deepEqual(ws.sent.map((f) => f.op), ["auth", "sub", "pub"]);
});

test("token in the query when asked", async (t) => {
  const q = setup(t, { ...FAST, token: "a b", auth: "query" }, "ws://relay/ws?x=1");
  q.ferry.connect();
  assert.equal(q.last().url, "ws://relay/ws?x=1&token=a%20b");
  q.last().open();
  assert.deepEqual(q.last().sent, [], "the token is in the URL: nothing to send first");
});

test("token in a ferry.token.* subprotocol when asked", async (t) => {
  const p = setup(t, { ...FAST, token: "tok", auth: "protocol" });
  p.ferry.connect();
  assert.deepEqual(p.last().protocols, ["ferry.v1.json", "ferry.token.dG9r"]);
});

test("getToken gives the first token", async (t) => {
  let calls = 0;
  const h = setup(t, { ...FAST, getToken: async () => `T${++calls}` });
  h.ferry.connect();
  assert.equal(h.sockets.length, 0, "no socket before the token");
  await settle();
  h.last().open();
  assert.deepEqual(h.last().sent[0], { op: "auth", token: "T1", id: "auth" });
});

test("4401: a new token from getToken, one call in flight, then reconnect", async (t) => {
  const pending = [];
  const getToken = () => {
    const d = deferred();
    pending.push(d);
    return d.promise;
  };
  const exp = START_S + 30;
  const h = setup(t, { ...FAST, token: jwt({ exp }), getToken, refreshLeadMs: 10_000 });
  h.ferry.connect();
  welcome(h.last());
  tick(20_000); // the refresh is due: one call starts…
  assert.equal(pending.length, 1);
  h.last().serverClose(4401, "token expired"); // …and the close needs a token as well
  assert.equal(h.ferry.state, "waiting");
  tick(10);
  await settle();
  assert.equal(pending.length, 1, "still one call");
  assert.equal(h.sockets.length, 1, "no socket until the token comes");
  pending[0].resolve("T-new");
  await settle();
  assert.equal(h.sockets.length, 2);
  h.last().open();
  assert.deepEqual(h.last().sent[0], { op: "auth", token: "T-new", id: "auth" });
  welcome(h.last());
  assert.equal(h.ferry.state, "ready");
});

test("4401 without getToken is terminal", async (t) => {
  const h = setup(t, { ...FAST, token: "T" });
  const p = h.ferry.connect();
  h.last().open();
  h.last().serverClose(4401);
  await assert.rejects(p, { closeCode: 4401 });
  tick(1000);
  assert.equal(h.sockets.length, 1);
});

test("a failing getToken is retried with backoff, never a tight loop", async (t) => {
  t.mock.method(Math, "random", () => 0.999);
  let calls = 0;
  const h = setup(t, { ...FAST, getToken: async () => { calls++; throw new Error("token service down"); } });
  h.ferry.connect();
  await settle();
  assert.equal(calls, 1);
  assert.equal(h.ferry.state, "waiting");
  assert.equal(h.errors[0].message, "token service down");
  tick(10);
  await settle();
  assert.equal(calls, 2);
});

test("refresh before expiry on the open connection; refreshed reschedules", async (t) => {
  let n = 0;
  const quiet = { pingIntervalMs: 1e9, silenceMs: 1e9 }; // the fake relay answers no pings
  const h = setup(t, { ...FAST, ...quiet, token: jwt({ exp: START_S + 30 }), getToken: async () => `R${++n}` });
  h.ferry.connect();
  welcome(h.last());
  const ws = h.last();
  tick(19_000); // a third of the 30 s left is the lead: due at 20 s
  await settle();
  assert.equal(ws.ops("auth").length, 1);
  tick(1_000);
  await settle();
  assert.deepEqual(ws.ops("auth")[1], { op: "auth", token: "R1", id: "refresh" });
  ws.recv({ op: "refreshed", user: "alice", exp: nowS() + 60 });
  tick(39_000);
  await settle();
  assert.equal(ws.ops("auth").length, 2);
  tick(1_000);
  await settle();
  assert.equal(ws.ops("auth")[2].token, "R2");
  assert.equal(h.sockets.length, 1, "refreshing never reconnects");
});
