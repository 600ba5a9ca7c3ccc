// msgpack and JSON side by side: a client on `ferry-client/msgpack` (binary frames) and one
// on the default JSON codec both read one channel and each publishes to it. The report has
// what each decoded (bytes as {"bytes": [...]}, to survive JSON) and the subprotocol each
// socket negotiated.
import WebSocket from "ws";
import { msgpack } from "ferry-client/msgpack";
import { client, env, run, until } from "./lib.mjs";

const CH = env("channel");
const protocols = {};
const recording = (name) =>
  class extends WebSocket {
    constructor(...args) {
      super(...args);
      this.on("open", () => (protocols[name] = this.protocol));
      this.on("message", (data, isBinary) => (protocols[`${name}Binary`] = isBinary));
    }
  };

const plain = (v) =>
  v instanceof Uint8Array
    ? { bytes: [...v] }
    : Array.isArray(v)
      ? v.map(plain)
      : v && typeof v === "object"
        ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]))
        : v;

run(async () => {
  const mp = client("mp", { codec: msgpack, WebSocket: recording("mp") });
  const js = client("js", { WebSocket: recording("js") });
  const got = { mp: [], js: [] };
  const sMp = mp.ferry.subscribe(CH, { onMessage: (m) => got.mp.push([m.seq, plain(m.data)]) });
  const sJs = js.ferry.subscribe(CH, { onMessage: (m) => got.js.push([m.seq, plain(m.data)]) });
  await Promise.all([mp.ferry.connect(), js.ferry.connect(), sMp.ready(), sJs.ready()]);
  const acks = [];
  acks.push((await mp.ferry.publish(CH, { bin: new Uint8Array([0, 1]), f: 1.5, s: "é", big: 2 ** 40, neg: -7 })).seq);
  acks.push((await js.ferry.publish(CH, { list: [1, null, true], s: "ü", nested: { a: [0.25] } })).seq);
  await until(() => got.mp.length >= 2 && got.js.length >= 2, "both messages on both clients");
  await Promise.all([mp.ferry.close(), js.ferry.close()]);
  return { acks, got, protocols, errors: [...mp.log.errors, ...js.log.errors] };
});
