// Inbox catch-up: bob (through the fault proxy) tracks his `@bob` inbox; alice sends him
// direct messages while pytest keeps him offline. Once he is back the ones he missed must
// arrive once, in order, then live ones after them.
import { client, command, emit, env, run, until } from "./lib.mjs";

run(async () => {
  const received = [];
  const gaps = [];
  const bob = client("bob", { inbox: { onMessage: (m) => received.push([m.seq, m.data, m.from]), onGap: (g) => gaps.push(g) } }, env("bob_url"));
  const alice = client("alice", {}, env("alice_url"));
  const welcome = await bob.ferry.connect();
  await alice.ferry.connect();
  const box = bob.ferry.inbox;
  const acks = [(await alice.ferry.publish("@bob", "d1")).seq];
  await until(() => received.length === 1, "d1 live");
  emit("online");
  if ((await command()) !== "offline") throw new Error("expected offline");
  await until(() => bob.ferry.state !== "ready", "bob to notice the cut");
  for (const d of ["d2", "d3", "d4"]) acks.push((await alice.ferry.publish("@bob", d)).seq);
  emit("sent");
  await until(() => bob.log.states.filter((x) => x === "ready").length === 2, "bob back", 10_000);
  acks.push((await alice.ferry.publish("@bob", "d5")).seq);
  await until(() => received.length >= 5, "the missed DMs and d5");
  acks.push((await alice.ferry.publish("@bob", "d6")).seq);
  await until(() => received.length >= 6, "d6");
  await Promise.all([bob.ferry.close(), alice.ferry.close()]);
  return {
    inbox: welcome.inbox,
    box: box && { ch: box.ch, seq: box.seq, same: box === bob.ferry.inbox },
    acks,
    received,
    gaps,
    closes: bob.log.closes,
    errors: [...bob.log.errors, ...alice.log.errors],
  };
});
