// Tokens that expire: getToken mints short-lived JWTs. With a normal lead the client
// refreshes on the open connection (no close); with a lead past the expiry the relay
// closes 4401 and the client fetches a token and reconnects. Either way the subscriber
// gets every message once, in order.
import { client, env, jwt, run, until } from "./lib.mjs";

const SECRET = env("secret");
const CH = env("channel");
const TTL = env("ttl", 2);
let calls = 0;
const getToken = async () => {
  calls++;
  const now = Math.floor(Date.now() / 1000);
  return jwt(SECRET, { sub: "alice", pub: ["room.*"], subs: ["room.*"], exp: now + TTL });
};

run(async () => {
  const options = { getToken, auth: env("auth", "frame"), refreshLeadMs: env("lead", undefined) };
  const c = client("alice", options);
  const received = [];
  const gaps = [];
  const s = c.ferry.subscribe(CH, { onMessage: (m) => received.push(m.data.i), onGap: (g) => gaps.push(g) });
  await c.ferry.connect();
  await s.ready();
  const want = env("calls", 3);
  let i = 0;
  const acked = [];
  while (calls < want || i < 5) {
    acked.push((await c.ferry.publish(CH, { i: i++ })).seq);
    await new Promise((r) => setTimeout(r, 100));
    if (i > 400) throw new Error("no refresh in 40 s");
  }
  // getToken runs before the reconnect is ready: wait for the ready that follows each close,
  // then publish once more so the resumed connection carries a message too.
  const readies = () => c.log.states.filter((x) => x === "ready").length;
  await until(() => readies() === c.log.closes.length + 1, "a ready after each close");
  const closes = [...c.log.closes];
  const ready = readies();
  acked.push((await c.ferry.publish(CH, { i: i++ })).seq);
  await until(() => received.length === i, `${i} deliveries`);
  await c.ferry.close();
  return { calls, received, acked, gaps, closes, readies: ready, errors: c.log.errors };
});
