// A graceful restart under many clients: N readers and one writer on one channel; pytest
// SIGTERMs the relay (every client gets 1001) and starts it again on the same WAL and port.
// The writer publishes one message at a time from before the restart until AFTER more
// once every client is back (those in flight at the restart wait, and are resent with
// their mid), or with DURING=0 one before and AFTER once all are back; then a marker. The report has every ack, every refusal, and what differs,
// reader by reader, from the acked stream: each message exactly once, in seq order, no gap.
import { client, command, emit, env, run, until } from "./lib.mjs";

const N = env("n", 200);
const CH = env("channel", "restart.room");
const AFTER = env("after", 20); // publishes once every client is back
const DURING = env("during", 1) === 1; // 0: none while the relay restarts

const readies = (c) => c.log.states.filter((x) => x === "ready").length;

run(async () => {
  const readers = [];
  for (let k = 0; k < N; k++) {
    const r = client(`r${k}`);
    r.received = [];
    r.gaps = [];
    r.sub = r.ferry.subscribe(CH, {
      onMessage: (m) => r.received.push([m.seq, m.data]),
      onGap: (g) => r.gaps.push(g),
    });
    readers.push(r);
  }
  const writer = client("writer", { publishTimeoutMs: 60_000 });
  await Promise.all(readers.map((r) => r.ferry.connect().then(() => r.sub.ready())));
  await writer.ferry.connect();
  const acks = [{ ...(await writer.ferry.publish(CH, 0)), i: 0 }];
  const rejected = [];
  await until(() => readers.every((r) => r.received.length === 1), "every reader to get the first");
  // (a first connect may have been refused, max_handshakes_per_ip: the restart's closes
  // are those from here on)
  const mark = new Map([...readers, writer].map((c) => [c, c.log.closes.length]));
  let restarted = false;
  const told = command().then((c) => {
    if (c !== "restarted") throw new Error("expected restarted");
    restarted = true;
  });
  emit("before");
  // every client back: a second ready, and each reader's sub answered on the new link
  const back = () => restarted && readies(writer) >= 2 && readers.every((r) => readies(r) >= 2 && !r.sub.pending);
  if (!DURING) await told.then(() => until(back, "every client to reconnect"));
  let after = 0;
  while (after < AFTER) {
    if (back()) after++;
    const i = acks.length + rejected.length;
    await writer.ferry.publish(CH, i).then(
      (a) => acks.push({ ...a, i }),
      (e) => rejected.push([i, e.code]),
    );
  }
  await told;
  acks.push({ ...(await writer.ferry.publish(CH, "end")), i: "end" });
  await until(() => readers.every((r) => r.received.some(([, d]) => d === "end")), "every reader to get 'end'");
  await Promise.all([...readers, writer].map((c) => c.ferry.close()));
  const want = JSON.stringify(acks.map((a) => [a.seq, a.i]).sort((a, b) => a[0] - b[0]));
  const wrong = readers
    .map((r, k) => ({ k, received: r.received, gaps: r.gaps }))
    .filter((x) => JSON.stringify(x.received) !== want || x.gaps.length);
  return {
    n: N,
    acks: acks.map((a) => [a.seq, a.dup]),
    rejected,
    wrong: wrong.slice(0, 3),
    wrongCount: wrong.length,
    restartCloses: [...new Set([...readers, writer].map((c) => c.log.closes[mark.get(c)]))],
    readies: [...new Set(readers.map(readies))],
    errors: [...new Set([...readers, writer].flatMap((c) => c.log.errors))],
  };
});
