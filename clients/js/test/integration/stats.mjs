// `$sys.stats` across a restart: an admin reads the stats stream; pytest restarts the
// relay. The stream's seq starts over with a new epoch (the process's boot id), which the
// client must report as a gap with reason "epoch", not continue silently. The report has
// every delivery with the epoch the subscription was on, and the gaps.
import { client, emit, env, run, until } from "./lib.mjs";

run(async () => {
  const admin = client("admin", { token: env("token"), auth: "query" }) // auth off: at the upgrade (docs/protocol.md);
  const received = [];
  const gaps = [];
  const s = admin.ferry.subscribe("$sys.stats", {
    onMessage: (m) => received.push({ seq: m.seq, epoch: s.epoch, after: gaps.length }),
    onGap: (g) => gaps.push(g),
  });
  await admin.ferry.connect();
  const first = await s.ready();
  await until(() => received.length > 0, "a first snapshot");
  emit("first", { epoch: s.epoch });
  await until(() => gaps.length > 0, "the epoch change to be reported", 30_000);
  await until(() => received.some((m) => m.after > 0), "a snapshot of the new stream");
  await admin.ferry.close();
  return { first, received, gaps, epoch: s.epoch, closes: admin.log.closes, errors: admin.log.errors };
});
