// History exceeded: the subscriber (behind the proxy) is offline while more messages than
// the channel's history holds are published; it reconnects and reports exactly one gap.
import { client, command, emit, env, run, until } from "./lib.mjs";

const CH = env("channel");

run(async () => {
  const sub = client("sub", {}, env("proxy_url"));
  const pub = client("pub");
  const received = [];
  const gaps = [];
  const s = sub.ferry.subscribe(CH, { onMessage: (m) => received.push(m.seq), onGap: (g) => gaps.push(g) });
  await sub.ferry.connect();
  await s.ready();
  await pub.ferry.connect();
  for (let i = 0; i < 5; i++) await pub.ferry.publish(CH, { i });
  await until(() => received.length === 5, "5 live messages");
  emit("live");
  if ((await command()) !== "offline") throw new Error("expected offline");
  await until(() => sub.ferry.state !== "ready", "the subscriber to notice the cut");
  for (let i = 5; i < 35; i++) await pub.ferry.publish(CH, { i });
  emit("published");
  await until(() => gaps.length > 0, "the gap report");
  await pub.ferry.publish(CH, { i: 35 });
  await until(() => received.includes(36), "the next live message");
  await Promise.all([sub.ferry.close(), pub.ferry.close()]);
  return { received, gaps, epoch: s.epoch, errors: [...sub.log.errors, ...pub.log.errors] };
});
