// Pacing: N publishes at once against a relay with a low publish rate; the client spreads
// them by welcome.limits so the relay never answers rate_limited (the proxy counts).
import { client, env, run } from "./lib.mjs";

run(async () => {
  const { ferry, log } = client("pub");
  const welcome = await ferry.connect();
  const results = await Promise.all(
    Array.from({ length: env("n") }, (_, i) => ferry.publish(env("channel"), { i }).then((r) => r.seq)),
  );
  await ferry.close();
  return { results, limits: welcome.limits, errors: log.errors };
});
