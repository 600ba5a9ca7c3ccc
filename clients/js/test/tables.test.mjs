import assert from "node:assert/strict";
import { test } from "node:test";
import { CLOSE_POLICY, TRANSITIONS, backoffDelay, closePolicy } from "../dist/index.js";

test("the state table: every state, and closed is final", () => {
  assert.deepEqual(Object.keys(TRANSITIONS).sort(), ["closed", "connecting", "idle", "open", "ready", "waiting"]);
  assert.deepEqual(TRANSITIONS.closed, {});
  for (const [state, row] of Object.entries(TRANSITIONS)) {
    if (state !== "closed") assert.equal(row.close, "closed", `${state} must be closable`);
    for (const next of Object.values(row)) assert.ok(next in TRANSITIONS, `${state} → ${next}`);
  }
  assert.equal(TRANSITIONS.idle.connect, "connecting");
  assert.equal(TRANSITIONS.connecting.open, "open");
  assert.equal(TRANSITIONS.open.welcome, "ready");
  assert.equal(TRANSITIONS.ready.lost, "waiting");
  assert.equal(TRANSITIONS.waiting.retry, "connecting");
  assert.equal(TRANSITIONS.ready.welcome, undefined, "a second welcome is not a transition");
});

test("the close-code table", () => {
  for (const code of [1000, 1001, 1006, 1011, 1013, 4408, 4429]) assert.equal(closePolicy(code), "retry", code);
  assert.equal(closePolicy(4401), "reauth");
  for (const code of [4403, 1009, 1002, 1007]) assert.equal(closePolicy(code), "fatal", code);
  assert.equal(closePolicy(1005), "retry", "codes not in the table reconnect");
  assert.equal(closePolicy(4000), "retry");
  assert.equal(Object.keys(CLOSE_POLICY).length, 12);
});

test("backoff: full jitter under a doubling window with a cap", () => {
  const o = { baseMs: 100, capMs: 1000 };
  assert.equal(backoffDelay(0, o, false, () => 0), 0);
  assert.equal(backoffDelay(0, o, false, () => 0.999), 99);
  assert.equal(backoffDelay(1, o, false, () => 0.999), 199);
  assert.equal(backoffDelay(3, o, false, () => 0.999), 799);
  assert.equal(backoffDelay(4, o, false, () => 0.999), 999, "capped");
  assert.equal(backoffDelay(10_000, o, false, () => 0.999), 999, "no overflow, forever");
  assert.equal(backoffDelay(2, o, false, () => 0.5), 200);
});

test("backoff: the first attempt after 1001 draws from a wider window", () => {
  const o = { baseMs: 100, capMs: 1000, goingAwayMs: 3000 };
  assert.equal(backoffDelay(0, o, true, () => 0.999), 2997);
  assert.equal(backoffDelay(0, o, false, () => 0.999), 99);
  assert.equal(backoffDelay(1, o, true, () => 0.999), 199, "only the first attempt");
});
