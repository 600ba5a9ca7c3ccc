// A graceful restart under many clients: N readers and one writer on one channel; pytest
// SIGTERMs the relay (every client gets 1001) and starts it again on the same WAL and port.
// The writer publishes one message before and one after, then a closing marker; the report
// lists what every reader was delivered, for the test to check each got 1, 2, 3 exactly
// once, in order, without a gap.
import { client, command, emit, env, run, until } from "./lib.mjs";

const N = env("n", 200);
const CH = env("channel", "restart.room");

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
  const writer = client("writer");
  await Promise.all(readers.map((r) => r.ferry.connect().then(() => r.sub.ready())));
  await writer.ferry.connect();
  const acks = [await writer.ferry.publish(CH, "before")];
  await until(() => readers.every((r) => r.received.length === 1), "every reader to get 'before'");
  // (a first connect may have been refused, max_handshakes_per_ip: the restart's closes
  // are those from here on)
  const mark = new Map([...readers, writer].map((c) => [c, c.log.closes.length]));
  emit("before");
  if ((await command()) !== "restarted") throw new Error("expected restarted");
  // every client back: a second ready, and each reader's sub answered on the new link
  await until(
    () => readies(writer) >= 2 && readers.every((r) => readies(r) >= 2 && !r.sub.pending),
    "every client to reconnect",
  );
  acks.push(await writer.ferry.publish(CH, "after"));
  acks.push(await writer.ferry.publish(CH, "end"));
  await until(() => readers.every((r) => r.received.some(([, d]) => d === "end")), "every reader to get 'end'");
  await Promise.all([...readers, writer].map((c) => c.ferry.close()));
  // what differs from the expected, reader by reader (the report stays small)
  const want = JSON.stringify([[1, "before"], [2, "after"], [3, "end"]]);
  const wrong = readers
    .map((r, k) => ({ k, received: r.received, gaps: r.gaps }))
    .filter((x) => JSON.stringify(x.received) !== want || x.gaps.length);
  return {
    n: N,
    acks,
    wrong,
    restartCloses: [...new Set([...readers, writer].map((c) => c.log.closes[mark.get(c)]))],
    readies: [...new Set(readers.map(readies))],
    errors: [...new Set([...readers, writer].flatMap((c) => c.log.errors))],
  };
});
