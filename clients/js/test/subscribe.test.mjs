import assert from "node:assert/strict";
import { test } from "node:test";
import { setup, tick, welcome } from "./harness.mjs";

const FAST = { backoff: { baseMs: 10, capMs: 10 } };
const msg = (ch, seq, data = seq) => ({ op: "msg", ch, seq, ts: 1, from: "bob", data });

function subscribed(t, extra = {}) {
  const h = setup(t, FAST);
  const got = [];
  const gaps = [];
  h.ferry.connect();
  welcome(h.last());
  const sub = h.ferry.subscribe("room.1", {
    onMessage: (m) => got.push(m.seq),
    onGap: (g) => gaps.push(g),
    ...extra,
  });
  return { ...h, got, gaps, sub };
}

function reconnect(h, extra = {}) {
  h.last().serverClose(1006);
  tick(10);
  welcome(h.last(), extra);
  return h.last();
}

test("subscribe resolves on subscribed; delivers from the head", async (t) => {
  const h = subscribed(t);
  const [frame] = h.last().ops("sub");
  assert.deepEqual(Object.keys(frame).sort(), ["ch", "id", "op"], "a plain sub from the head");
  h.last().recv({ op: "subscribed", ch: "room.1", seq: 5, epoch: "e1", id: frame.id });
  const s = await h.sub.ready();
  assert.equal(s.seq, 5);
  h.last().recv(msg("room.1", 6));
  h.last().recv(msg("room.2", 7));
  assert.deepEqual(h.got, [6]);
  assert.equal(h.sub.seq, 6);
});

test("on reconnect: resubscribe with since = last seq and the epoch; drop seq <= last", async (t) => {
  const h = subscribed(t);
  h.last().recv({ op: "subscribed", ch: "room.1", seq: 0, epoch: "e1", id: h.last().ops("sub")[0].id });
  for (const seq of [1, 2, 3]) h.last().recv(msg("room.1", seq));
  const ws = reconnect(h);
  const [frame] = ws.ops("sub");
  assert.equal(frame.since, 3);
  assert.equal(frame.epoch, "e1");
  ws.recv({ op: "subscribed", ch: "room.1", seq: 5, epoch: "e1", recovered: true, id: frame.id });
  for (const seq of [2, 3, 4, 3, 5, 5, 6]) ws.recv(msg("room.1", seq));
  assert.deepEqual(h.got, [1, 2, 3, 4, 5, 6], "each once, in order");
  assert.deepEqual(h.gaps, []);
});

test("a live gap heals by resubscribing; nothing is skipped or repeated", async (t) => {
  const h = subscribed(t);
  const ws = h.last();
  ws.recv({ op: "subscribed", ch: "room.1", seq: 10, epoch: "e1", id: ws.ops("sub")[0].id });
  ws.recv(msg("room.1", 11));
  ws.recv(msg("room.1", 13)); // 12 is missing
  ws.recv(msg("room.1", 14));
  const heals = ws.ops("sub").slice(1);
  assert.equal(heals.length, 1, "one resubscribe for the gap, not one per message");
  assert.equal(heals[0].since, 11);
  assert.equal(heals[0].epoch, "e1");
  ws.recv({ op: "subscribed", ch: "room.1", seq: 14, epoch: "e1", recovered: true, id: heals[0].id });
  for (const seq of [12, 13, 14, 15]) ws.recv(msg("room.1", seq));
  assert.deepEqual(h.got, [11, 12, 13, 14, 15]);
  assert.deepEqual(h.gaps, []);
});

test("history exceeded: exactly one onGap with the exact range, then live", async (t) => {
  const h = subscribed(t);
  h.last().recv({ op: "subscribed", ch: "room.1", seq: 4, epoch: "e1", id: h.last().ops("sub")[0].id });
  h.last().recv(msg("room.1", 5));
  const ws = reconnect(h);
  const [frame] = ws.ops("sub");
  ws.recv({ op: "subscribed", ch: "room.1", seq: 40, epoch: "e1", recovered: false, id: frame.id });
  ws.recv(msg("room.1", 41));
  assert.deepEqual(h.gaps, [{ ch: "room.1", from: 6, to: 40, reason: "history", epoch: "e1" }]);
  assert.deepEqual(h.got, [5, 41]);
});

test("an epoch change is a gap of the new stream, reported once", async (t) => {
  const h = subscribed(t);
  h.last().recv({ op: "subscribed", ch: "room.1", seq: 8, epoch: "e1", id: h.last().ops("sub")[0].id });
  const ws = reconnect(h, { epoch: "e2" });
  const [frame] = ws.ops("sub");
  assert.equal(frame.epoch, "e1", "the epoch since belongs to");
  ws.recv({ op: "subscribed", ch: "room.1", seq: 3, epoch: "e2", recovered: false, id: frame.id });
  ws.recv(msg("room.1", 4));
  assert.deepEqual(h.gaps, [{ ch: "room.1", from: 1, to: 3, reason: "epoch", epoch: "e2" }]);
  assert.deepEqual(h.got, [4]);
  assert.equal(h.sub.epoch, "e2");
});

test("a gap with no onGap is reported through onError, never silently", async (t) => {
  const h = setup(t, FAST);
  h.ferry.connect();
  welcome(h.last());
  h.ferry.subscribe("room.1", { onMessage() {}, since: 2 });
  const [frame] = h.last().ops("sub");
  assert.equal(frame.since, 2);
  h.last().recv({ op: "subscribed", ch: "room.1", seq: 9, epoch: "e1", recovered: false, id: frame.id });
  assert.deepEqual(h.errors, [{ ch: "room.1", from: 3, to: 9, reason: "history", epoch: "e1" }]);
});

test("the position moves before the handler; a throwing handler never stops delivery", async (t) => {
  const h = setup(t, FAST);
  h.ferry.connect();
  welcome(h.last());
  const seen = [];
  const sub = h.ferry.subscribe("room.1", {
    onMessage(m) {
      seen.push([m.seq, sub.seq]);
      if (m.seq === 2) throw new Error("handler bug");
    },
  });
  h.last().recv({ op: "subscribed", ch: "room.1", seq: 0, id: h.last().ops("sub")[0].id });
  for (const seq of [1, 2, 3]) h.last().recv(msg("room.1", seq));
  assert.deepEqual(seen, [[1, 1], [2, 2], [3, 3]]);
  assert.equal(h.errors.length, 1);
  assert.equal(h.errors[0].message, "handler bug");
});

test("a refused subscription rejects ready() and is not resubscribed", async (t) => {
  const h = setup(t, FAST);
  h.ferry.connect();
  welcome(h.last());
  const sub = h.ferry.subscribe("$sys.stats", { onMessage() {} });
  const [frame] = h.last().ops("sub");
  h.last().recv({ op: "error", code: "forbidden", reason: "admin only", id: frame.id });
  await assert.rejects(sub.ready(), { code: "forbidden" });
  const ws = reconnect(h);
  assert.deepEqual(ws.ops("sub"), []);
});

test("subscriptions made before the welcome go out after it", async (t) => {
  const h = setup(t, FAST);
  h.ferry.connect();
  h.ferry.subscribe("room.1", { onMessage() {} });
  h.last().open();
  assert.deepEqual(h.last().sent, [{ op: "ping" }], "no token: a ping first, nothing else");
  h.last().recv({ op: "welcome", client: "c", user: "u", node: "n", version: 1 });
  assert.equal(h.last().ops("sub").length, 1);
});

test("unsubscribe sends unsub and stops delivery", async (t) => {
  const h = subscribed(t);
  h.last().recv({ op: "subscribed", ch: "room.1", seq: 0, id: h.last().ops("sub")[0].id });
  h.sub.unsubscribe();
  assert.deepEqual(h.last().ops("unsub"), [{ op: "unsub", ch: "room.1" }]);
  h.last().recv(msg("room.1", 1));
  assert.deepEqual(h.got, []);
});

test("the inbox: tracked from welcome.inbox, resubscribed with since on reconnect", async (t) => {
  const got = [];
  const h = setup(t, { ...FAST, inbox: { onMessage: (m) => got.push(m.data) } });
  h.ferry.connect();
  welcome(h.last(), { inbox: { ch: "@alice", seq: 3 } });
  assert.equal(h.ferry.inbox.seq, 3);
  h.last().recv(msg("@alice", 4, "hi"));
  const ws = reconnect(h, { inbox: { ch: "@alice", seq: 6 } });
  const frame = ws.ops("sub").find((f) => f.ch === "@alice");
  assert.equal(frame.since, 4);
  assert.equal(frame.epoch, "e1");
  ws.recv(msg("@alice", 7, "live before the replay")); // the relay's own inbox sub, from 6
  ws.recv({ op: "subscribed", ch: "@alice", seq: 7, epoch: "e1", recovered: true, id: frame.id });
  for (const seq of [5, 6, 7, 8]) ws.recv(msg("@alice", seq, `m${seq}`));
  assert.deepEqual(got, ["hi", "m5", "m6", "m7", "m8"]);
});
