// Node `ws` client for the interop test: runs the same protocol-v1 scenario as the python
// drivers and prints one JSON line per received frame, tagged with the connection name.
// usage: node interop_client.mjs URL SCRIPT_JSON
// SCRIPT_JSON: [{"conn":"a","user":"alice","proto":"ferry.v1.json"}, {"send":"a","text":"..."},
//               {"recv":"a","count":2}, {"sendb":"b","b64":"..."}, ...]
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const WebSocket = require(process.env.FERRYTEST_NODE_MODULES + "/ws");

const [url, scriptJson] = process.argv.slice(2);
const script = JSON.parse(scriptJson);
const conns = {};
const queues = {};
const waiters = {};

function push(name, item) {
  if (waiters[name]) { const w = waiters[name]; delete waiters[name]; w(item); }
  else queues[name].push(item);
}
function next(name) {
  if (queues[name].length) return Promise.resolve(queues[name].shift());
  return new Promise((resolve, reject) => {
    waiters[name] = resolve;
    setTimeout(() => reject(new Error(`timeout waiting on ${name}`)), 10000).unref();
  });
}

for (const step of script) {
  if (step.conn) {
    const q = step.user ? `?user=${step.user}` : "";
    const ws = new WebSocket(url + q, step.proto ? [step.proto] : []);
    queues[step.conn] = [];
    ws.on("message", (data, isBinary) => push(step.conn, { isBinary, data }));
    await new Promise((resolve, reject) => { ws.on("open", resolve); ws.on("error", reject); });
    conns[step.conn] = ws;
  } else if (step.send) {
    conns[step.send].send(step.text);
  } else if (step.sendb) {
    conns[step.sendb].send(Buffer.from(step.b64, "base64"));
  } else if (step.recv) {
    for (let i = 0; i < step.count; i++) {
      const { isBinary, data } = await next(step.recv);
      const out = { conn: step.recv, binary: isBinary };
      if (isBinary) out.b64 = Buffer.from(data).toString("base64");
      else out.text = data.toString("utf8");
      process.stdout.write(JSON.stringify(out) + "\n");
    }
  }
}
for (const ws of Object.values(conns)) ws.close();
