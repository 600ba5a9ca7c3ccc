// Lost ack: publish K messages one after the other through the fault proxy, which drops
// the ack of one of them and cuts the connection. The client resends it with its mid.
import { client, run } from "./lib.mjs";
import { env } from "./lib.mjs";

run(async () => {
  const { ferry, log } = client("pub");
  await ferry.connect();
  const results = [];
  for (let i = 0; i < env("k", 10); i++) {
    const r = await ferry.publish(env("channel"), { i });
    results.push([r.seq, r.dup]);
  }
  await ferry.close();
  return { results, closes: log.closes, errors: log.errors };
});
