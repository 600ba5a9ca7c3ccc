import assert from "node:assert/strict";
import { test } from "node:test";
import { settle, setup, tick, welcome } from "./harness.mjs";

const FAST = { backoff: { baseMs: 10, capMs: 10 } };
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ack = (f, seq, extra = {}) => ({ op: "ack", ch: f.ch, seq, id: f.id, ...extra });

function ready(t, options = {}, welcomeExtra = {}) {
  const h = setup(t, { ...FAST, ...options });
  h.ferry.connect();
  welcome(h.last(), welcomeExtra);
  return h;
}

test("every publish carries a UUID mid and its own id; resolves on the ack", async (t) => {
  const h = ready(t);
  const a = h.ferry.publish("room.1", { text: "hi" });
  const b = h.ferry.publish("room.1", [1, 2]);
  const [fa, fb] = h.last().ops("pub");
  assert.match(fa.mid, UUID);
  assert.match(fb.mid, UUID);
  assert.notEqual(fa.mid, fb.mid);
  assert.notEqual(fa.id, fb.id);
  assert.deepEqual(fa.data, { text: "hi" });
  h.last().recv(ack(fb, 8));
  h.last().recv(ack(fa, 7));
  assert.deepEqual(await a, { seq: 7, dup: false });
  assert.deepEqual(await b, { seq: 8, dup: false });
});

test("a dup:true ack resolves {seq, dup: true}", async (t) => {
  const h = ready(t);
  const p = h.ferry.publish("room.1", 1);
  h.last().recv(ack(h.last().ops("pub")[0], 3, { dup: true }));
  assert.deepEqual(await p, { seq: 3, dup: true });
});

test("JSON text is spliced verbatim", async (t) => {
  const h = ready(t);
  h.ferry.publish("room.1", '{"a":  1}', { json: true }).catch(() => {});
  assert.equal(h.last().ops("pub").length, 1);
  const raw = h.last().raw.find((r) => r.includes('"op":"pub"'));
  assert.ok(raw.endsWith(',"data":{"a":  1}}'), raw);
});

test("an error answer rejects with its code; others are unaffected", async (t) => {
  const h = ready(t);
  const bad = h.ferry.publish("$sys.x", 1);
  const good = h.ferry.publish("room.1", 2);
  const [fb, fg] = h.last().ops("pub");
  h.last().recv({ op: "error", code: "forbidden", reason: "no", id: fb.id });
  h.last().recv(ack(fg, 1));
  await assert.rejects(bad, { code: "forbidden" });
  assert.deepEqual(await good, { seq: 1, dup: false });
});

test("offline: publishes queue in order and are resent with the same mid after the subs", async (t) => {
  const h = ready(t);
  h.ferry.subscribe("room.1", { onMessage() {} });
  h.last().recv({ op: "subscribed", ch: "room.1", seq: 0, id: h.last().ops("sub")[0].id });
  const inflight = h.ferry.publish("room.1", 0);
  const sentBefore = h.last().ops("pub")[0];
  h.last().serverClose(1006);
  const offline = [1, 2, 3, 4].map((i) => h.ferry.publish("room.1", i));
  tick(10);
  const ws = h.last();
  ws.open();
  assert.deepEqual(ws.sent, [{ op: "ping" }], "nothing but the first ping before the welcome");
  ws.recv({ op: "welcome", client: "c2", user: "u", node: "n", version: 1 });
  assert.deepEqual(ws.sent.map((f) => f.op), ["ping", "sub", "pub", "pub", "pub", "pub", "pub"]);
  const pubs = ws.ops("pub");
  assert.deepEqual(pubs.map((f) => f.data), [0, 1, 2, 3, 4], "in publish order");
  assert.equal(pubs[0].mid, sentBefore.mid, "the same mid");
  assert.equal(pubs[0].id, sentBefore.id);
  ws.recv(ack(pubs[0], 1, { dup: true }));
  for (const [i, f] of pubs.slice(1).entries()) ws.recv(ack(f, i + 2));
  assert.deepEqual(await inflight, { seq: 1, dup: true });
  assert.deepEqual(await Promise.all(offline), [2, 3, 4, 5].map((seq) => ({ seq, dup: false })));
});

test("publish deadlines: a publish that waited too long rejects and is never sent", async (t) => {
  const h = setup(t, { ...FAST, publishTimeoutMs: 1000 });
  h.ferry.connect();
  const early = h.ferry.publish("room.1", "early");
  tick(500);
  const late = h.ferry.publish("room.1", "late", { timeoutMs: 5000 });
  tick(500);
  await assert.rejects(early, { code: "timeout" });
  welcome(h.last());
  assert.deepEqual(h.last().ops("pub").map((f) => f.data), ["late"]);
  h.last().recv(ack(h.last().ops("pub")[0], 1));
  assert.deepEqual(await late, { seq: 1, dup: false });
});

test("the queue is bounded", async (t) => {
  const h = setup(t, { ...FAST, maxQueue: 3 });
  const ok = [1, 2, 3].map((i) => h.ferry.publish("room.1", i));
  await assert.rejects(h.ferry.publish("room.1", 4), { code: "queue_full" });
  h.ferry.connect();
  welcome(h.last());
  assert.equal(h.last().ops("pub").length, 3);
  h.last().ops("pub").forEach((f, i) => h.last().recv(ack(f, i + 1)));
  assert.equal((await Promise.all(ok)).length, 3);
});

test("pacing: never faster than welcome.limits' token bucket", async (t) => {
  const limits = { max_frame_bytes: 65536, publish_rate: 10, publish_burst: 4 };
  const h = ready(t, {}, { limits });
  const all = Array.from({ length: 12 }, (_, i) => h.ferry.publish("room.1", i));
  const ws = h.last();
  const sentAt = () => ws.ops("pub").length;
  assert.equal(sentAt(), 3, "burst less one at once");
  // 9 msg/s (10 less a margin): one per 112 ms
  tick(111);
  assert.equal(sentAt(), 3);
  tick(1);
  assert.equal(sentAt(), 4);
  tick(1000);
  assert.equal(sentAt(), 12);
  assert.deepEqual(ws.ops("pub").map((f) => f.data), [...Array(12).keys()], "in order");
  for (const [i, f] of ws.ops("pub").entries()) ws.recv(ack(f, i + 1));
  await Promise.all(all);
  // the relay's bucket (rate 10/s, burst 4, full at the welcome) would have taken each one
  let tokens = 4;
  let at = ws.sentAt[0];
  for (const when of ws.sentAt) {
    tokens = Math.min(4, tokens + ((when - at) / 1000) * 10);
    at = when;
    assert.ok(tokens >= 1, `no token at ${when}`);
    tokens -= 1;
  }
});

test("a rate_limited answer requeues the publish instead of failing it", async (t) => {
  const limits = { max_frame_bytes: 65536, publish_rate: 10, publish_burst: 2 };
  const h = ready(t, {}, { limits });
  const p = h.ferry.publish("room.1", "x");
  const [f] = h.last().ops("pub");
  h.last().recv({ op: "error", code: "rate_limited", reason: "slow down", id: f.id });
  tick(200);
  const again = h.last().ops("pub");
  assert.equal(again.length, 2);
  assert.equal(again[1].mid, f.mid);
  h.last().recv(ack(again[1], 1));
  assert.deepEqual(await p, { seq: 1, dup: false });
});

test("several rate_limited answers requeue their publishes in publish order", async (t) => {
  const limits = { max_frame_bytes: 65536, publish_rate: 10, publish_burst: 4 };
  const h = ready(t, {}, { limits });
  const all = [0, 1, 2].map((i) => h.ferry.publish("room.1", i));
  const first = h.last().ops("pub");
  assert.equal(first.length, 3);
  // the relay refuses all three, in the order it got them
  for (const f of first) h.last().recv({ op: "error", code: "rate_limited", reason: "slow down", id: f.id });
  tick(1000);
  const again = h.last().ops("pub").slice(3);
  assert.deepEqual(again.map((f) => f.data), [0, 1, 2], "resent in the order published");
  assert.deepEqual(again.map((f) => f.mid), first.map((f) => f.mid), "with the same mids");
  again.forEach((f, i) => h.last().recv(ack(f, i + 1)));
  assert.deepEqual((await Promise.all(all)).map((r) => r.seq), [1, 2, 3]);
});

test("a frame over max_frame_bytes is refused here, not sent (1009 would be terminal)", async (t) => {
  const h = ready(t, {}, { limits: { max_frame_bytes: 200 } });
  await assert.rejects(h.ferry.publish("room.1", "é".repeat(100)), { code: "too_large" });
  assert.equal(h.last().ops("pub").length, 0);
  const small = h.ferry.publish("room.1", "é".repeat(10));
  assert.equal(h.last().ops("pub").length, 1);
  h.last().recv(ack(h.last().ops("pub")[0], 1));
  await small;
  assert.equal(h.ferry.state, "ready");
});

test("close() rejects publishes still queued; later ones reject at once", async (t) => {
  const h = setup(t, FAST);
  const p = h.ferry.publish("room.1", 1);
  const rejected = assert.rejects(p, { code: "closed" });
  await h.ferry.close();
  await settle();
  await rejected;
  await assert.rejects(h.ferry.publish("room.1", 2), { code: "closed" });
});
