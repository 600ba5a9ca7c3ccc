// Offline queue: publishes made while the relay is unreachable wait in order; those whose
// deadline passes reject with "timeout" and are never sent; the rest go out in order once
// the relay is back.
import { client, command, emit, env, run, until } from "./lib.mjs";

const CH = env("channel");

run(async () => {
  const { ferry, log } = client("pub");
  await ferry.connect();
  const results = {};
  for (const i of [0, 1, 2]) results[i] = (await ferry.publish(CH, { i })).seq;
  emit("online-acked");
  if ((await command()) !== "offline") throw new Error("expected offline");
  await until(() => ferry.state !== "ready", "the client to notice the cut");
  const short = [];
  const long = [];
  for (let i = 3; i < 13; i++) {
    const expires = i % 3 === 0;
    const p = ferry.publish(CH, { i }, { timeoutMs: expires ? 300 : 30_000 }).then(
      (r) => (results[i] = r.seq),
      (e) => (results[i] = e.code),
    );
    (expires ? short : long).push(p);
  }
  await Promise.all(short);
  emit("expired", { state: ferry.state });
  await Promise.all(long);
  await ferry.close();
  return { results, closes: log.closes, errors: log.errors };
});
