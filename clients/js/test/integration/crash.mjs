// Crash mid-stream: one publisher sends N messages (at most WINDOW awaiting their ack)
// while one subscriber reads the channel; pytest SIGKILLs the relay and restarts it on the
// same WAL and port, several times. The report lists every publish's outcome and every
// delivery, for the test to check: each publish resolved once, seqs 1..N, each message
// delivered once in order with its payload, no gap.
import { client, emit, env, run, until } from "./lib.mjs";

const N = env("n", 3000);
const WINDOW = env("window", 100);
const CH = env("channel", "crash.1");

run(async () => {
  const sub = client("sub");
  const pub = client("pub", { publishTimeoutMs: 120_000 });
  const received = [];
  const gaps = [];
  const s = sub.ferry.subscribe(CH, {
    onMessage: (m) => received.push([m.seq, m.data.i, m.data.pad.length]),
    onGap: (g) => gaps.push(g),
  });
  await sub.ferry.connect();
  await s.ready();
  await pub.ferry.connect();
  emit("ready");

  const results = new Array(N).fill(null);
  let resolvedTwice = 0;
  let acked = 0;
  let inflight = 0;
  let maxInflight = 0;
  const all = [];
  for (let i = 0; i < N; i++) {
    while (inflight >= WINDOW) await new Promise((r) => setTimeout(r, 1));
    inflight++;
    maxInflight = Math.max(maxInflight, inflight);
    const data = { i, pad: "x".repeat(i % 50) };
    all.push(
      pub.ferry.publish(CH, data).then(
        (r) => {
          if (results[i] !== null) resolvedTwice++;
          results[i] = [r.seq, r.dup];
          inflight--;
          if (++acked % 100 === 0) emit("acked", { count: acked });
        },
        (e) => {
          if (results[i] !== null) resolvedTwice++;
          results[i] = ["error", e.code];
          inflight--;
        },
      ),
    );
  }
  await Promise.all(all);
  await until(() => received.length >= N, `${N} deliveries (have ${received.length})`, 60_000);
  // anything beyond N would be a duplicate: give it the chance to show up
  await pub.ferry.publish(CH, { i: -1, pad: "" });
  await until(() => received.some(([, i]) => i === -1), "the closing marker");
  await Promise.all([sub.ferry.close(), pub.ferry.close()]);
  return {
    results,
    received,
    gaps,
    resolvedTwice,
    maxInflight,
    reconnects: { sub: sub.log.states.filter((x) => x === "ready").length - 1, pub: pub.log.states.filter((x) => x === "ready").length - 1 },
    closes: { sub: sub.log.closes, pub: pub.log.closes },
    errors: [...sub.log.errors, ...pub.log.errors],
  };
});
