// A half-open link: the subscriber reads through the fault proxy, which pytest black-holes
// (the sockets stay open, nothing flows either way). The client must notice the silence,
// replace the link and resubscribe from where it was; a publisher on a direct link
// meanwhile sends three messages, and the subscriber two of its own into the hole (resent
// on the new link): all must arrive once, in order, each acked once.
import WebSocket from "ws";
import { client, command, emit, env, run, until } from "./lib.mjs";

const CH = env("channel");

// the frames the subscriber sends, per socket (to see it ping into the silence)
const sockets = [];
class Counting extends WebSocket {
  constructor(...args) {
    super(...args);
    this.sent = [];
    sockets.push(this);
  }
  send(data, ...rest) {
    const f = JSON.parse(data);
    this.sent.push(f.op === "pub" ? `pub ${f.mid}` : f.op);
    return super.send(data, ...rest);
  }
}

run(async () => {
  const sub = client("sub", { WebSocket: Counting, pingIntervalMs: 200, silenceMs: 1_000 }, env("proxy_url"));
  const pub = client("pub");
  const received = [];
  const gaps = [];
  const s = sub.ferry.subscribe(CH, { onMessage: (m) => received.push([m.seq, m.data]), onGap: (g) => gaps.push(g) });
  await sub.ferry.connect();
  await s.ready();
  await pub.ferry.connect();
  emit("ready");
  if ((await command()) !== "blackholed") throw new Error("expected blackholed");
  const before = sockets[0].sent.length;
  // the subscriber's own publishes go into the hole: resent on the new link, same mid
  const own = ["x0", "x1"].map((d) => sub.ferry.publish(CH, d).then((r) => [r.seq, r.dup, d]));
  const acks = [];
  for (let i = 0; i < 3; i++) acks.push([(await pub.ferry.publish(CH, i)).seq, false, i]);
  acks.push(...(await Promise.all(own)));
  await until(() => received.length >= 5, "the five messages on a new link", 10_000);
  // anything past the five would be a repeat: a closing marker gives it the chance to show
  acks.push([(await pub.ferry.publish(CH, "end")).seq, false, "end"]);
  await until(() => received.length >= 6, "the closing marker");
  await Promise.all([sub.ferry.close(), pub.ferry.close()]);
  return {
    acks,
    received,
    gaps,
    sockets: sockets.length,
    silentPings: sockets[0].sent.slice(before).filter((op) => op === "ping").length,
    resub: sockets[1]?.sent.filter((op) => op === "sub").length,
    // the mids of the subscriber's publishes: into the hole, then on the new link
    mids: sockets.map((w) => w.sent.filter((op) => op.startsWith("pub ")).map((op) => op.slice(4))),
    states: sub.log.states,
    closes: sub.log.closes,
    errors: [...sub.log.errors, ...pub.log.errors],
  };
});
