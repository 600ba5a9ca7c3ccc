import assert from "node:assert/strict";
import { test } from "node:test";
import { FerryError } from "../dist/index.js";
import { WELCOME, settle, setup, tick, welcome } from "./harness.mjs";

const FAST = { backoff: { baseMs: 100, capMs: 800, goingAwayMs: 5000 }, stableMs: 1000 };

test("connect resolves on welcome; states follow the table", async (t) => {
  const { ferry, states, last } = setup(t, FAST);
  const p = ferry.connect();
  assert.equal(ferry.state, "connecting");
  assert.deepEqual(last().protocols, ["ferry.v1.json"]);
  last().open();
  assert.equal(ferry.state, "open");
  let seen;
  ferry.o.onState = (s) => (seen = [s, ferry.welcome?.client, last().ops("sub").length]);
  ferry.subscribe("room.1", { onMessage() {} });
  last().recv(WELCOME);
  assert.deepEqual(seen, ["ready", "n-1", 1], "ready is announced with welcome set, after the subs");
  assert.equal((await p).client, "n-1");
  assert.deepEqual(states.map(([s]) => s), ["connecting", "open"]);
});

test("reconnects forever with full-jitter backoff after retryable closes", async (t) => {
  t.mock.method(Math, "random", () => 0.999);
  const { ferry, sockets, states, last } = setup(t, FAST);
  ferry.connect();
  welcome(last());
  const codes = [1000, 1006, 1011, 1013, 4408, 4429, 1005];
  const windows = [100, 200, 400, 800, 800, 800, 800];
  for (const [i, code] of codes.entries()) {
    last().serverClose(code);
    assert.equal(ferry.state, "waiting", `after ${code}`);
    const [, info] = states.at(-1);
    assert.equal(info.code, code);
    assert.equal(info.delayMs, windows[i] - 1, `attempt ${i}`);
    const before = sockets.length;
    tick(info.delayMs - 1);
    assert.equal(sockets.length, before, "not before the delay");
    tick(1);
    assert.equal(sockets.length, before + 1, "a new socket after the delay");
  }
  // a connection that stays up past stableMs starts the count over
  welcome(last());
  tick(1000);
  last().serverClose(1006);
  assert.equal(states.at(-1)[1].delayMs, 99);
});

test("1001: the first attempt is spread over the wider going-away window", async (t) => {
  t.mock.method(Math, "random", () => 0.5);
  const { ferry, states, last } = setup(t, FAST);
  ferry.connect();
  welcome(last());
  tick(2000);
  last().serverClose(1001, "shutting down");
  assert.equal(states.at(-1)[1].delayMs, 2500);
});

for (const code of [4403, 1009, 1002, 1007]) {
  test(`close ${code} is terminal: never retried, everything waiting rejects`, async (t) => {
    const { ferry, sockets, last } = setup(t, FAST);
    const connected = ferry.connect();
    welcome(last());
    await connected;
    const sent = ferry.publish("room.1", 1);
    const queued = ferry.publish("room.1", 2);
    assert.equal(last().ops("pub").length, 2);
    last().serverClose(code, "no");
    assert.equal(ferry.state, "closed");
    for (const p of [sent, queued]) {
      await assert.rejects(p, (e) => e instanceof FerryError && e.closeCode === code);
    }
    tick(60_000);
    assert.equal(sockets.length, 1, "no reconnect");
    await assert.rejects(ferry.publish("room.1", 3), { code: "closed" });
  });
}

test("a terminal close before the first welcome rejects connect()", async (t) => {
  const { ferry, last } = setup(t, FAST);
  const p = ferry.connect();
  last().open();
  last().serverClose(4403);
  await assert.rejects(p, { code: "closed", closeCode: 4403 });
});

test("idle: pings; silent: reconnects", async (t) => {
  t.mock.method(Math, "random", () => 0);
  const { ferry, sockets, states, last } = setup(t, { ...FAST, pingIntervalMs: 1000, silenceMs: 3000 });
  ferry.connect();
  welcome(last());
  const first = last();
  const pings = () => first.ops("ping").length - 1; // less the first frame's
  tick(999);
  assert.equal(pings(), 0);
  tick(250);
  assert.equal(pings(), 1, "a ping after 1 s without sending");
  first.recv({ op: "pong" });
  tick(1000);
  assert.equal(pings(), 2);
  tick(2001); // no pong: 3 s without a frame (checked every 250 ms)
  assert.equal(ferry.state, "connecting", "silence counts as a lost link");
  assert.equal(states.find(([s]) => s === "waiting")[1].reason, "silence");
  assert.equal(states.find(([s]) => s === "waiting")[1].opened, true);
  assert.equal(first.closedWith, 4000);
  assert.equal(first.terminated, true, "the dead socket is dropped, not left closing for 30 s");
  assert.equal(sockets.length, 2);
  assert.equal(sockets[1].terminated, undefined);
});

test("a socket that never opens is given up after silenceMs", async (t) => {
  t.mock.method(Math, "random", () => 0);
  const { ferry, sockets, states } = setup(t, { ...FAST, silenceMs: 2000 });
  ferry.connect();
  tick(2000);
  assert.equal(sockets.length, 2);
  assert.equal(sockets[0].closedWith, 4000);
  assert.equal(sockets[0].terminated, true);
  const [, info] = states.find(([s]) => s === "waiting");
  assert.deepEqual([info.reason, info.opened], ["silence", false], "it never opened");
});

test("close(): no reconnect, pending publishes reject, resolves on the socket's close", async (t) => {
  const { ferry, sockets, last } = setup(t, FAST);
  ferry.connect();
  welcome(last());
  const p = ferry.publish("room.1", "x");
  const closing = ferry.close();
  assert.equal(ferry.state, "closed");
  await assert.rejects(p, { code: "closed" });
  await settle();
  await closing;
  assert.equal(sockets[0].closedWith, 1000);
  tick(60_000);
  assert.equal(sockets.length, 1);
});

test("retryNow skips the wait", async (t) => {
  t.mock.method(Math, "random", () => 0.999);
  const { ferry, sockets, last } = setup(t, FAST);
  ferry.connect();
  last().serverClose(1006);
  assert.equal(ferry.state, "waiting");
  ferry.retryNow();
  assert.equal(sockets.length, 2);
  assert.equal(ferry.state, "connecting");
  tick(1000);
  assert.equal(sockets.length, 2, "the old timer is gone");
});
