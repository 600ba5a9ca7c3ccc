// A terminal close is never retried: the process ends by itself afterwards, with no timer
// left (the test asserts that it exits), and the client made one connection only.
import { client, env, jwt, run, until } from "./lib.mjs";

const SECRET = env("secret");
const now = () => Math.floor(Date.now() / 1000);

run(async () => {
  const user = env("user");
  const token = user ? jwt(SECRET, { sub: user, pub: ["*"], subs: ["*"], exp: now() + 60 }) : undefined;
  // the refresh (due at once with this lead) presents another user's token: 4403
  const other = async () => jwt(SECRET, { sub: env("other", "mallory"), pub: ["*"], subs: ["*"], exp: now() + 60 });
  const options = { token, auth: env("auth", "query"), refreshLeadMs: env("lead", 3_600_000) };
  if (token) options.getToken = other;
  const c = client("c", options);
  const connected = c.ferry.connect().then(
    () => "welcomed",
    (e) => `rejected ${e.closeCode}`,
  );
  await until(() => c.ferry.state === "closed", "the terminal close");
  const pub = await c.ferry.publish("room.1", 1).then(
    () => "acked",
    (e) => e.code,
  );
  return { connected: await connected, states: c.log.states, closes: c.log.closes, pub };
});
