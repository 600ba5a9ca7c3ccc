// The protocol-v1 subset (docs/design.md §3) on uWebSockets.js, written the way such relays
// usually are: JSON.parse every frame, JSON.stringify each outgoing message once, and uWS's
// own topic pub/sub (ws.subscribe / app.publish, fan-out in C++). No durability, no auth,
// no limits.
//
// The official uWebSockets.js is not on the npm registry (it installs from GitHub, which
// this machine cannot reach); the npm package `uwebsockets` 3.0.6 is a republished uWS.js
// v20 build whose prebuilt binary loads on Node 20 here. It is pinned in package.json.
//
//   welcome on connect; sub -> subscribed (seq = channel head); unsub -> unsubscribed;
//   pub -> ack (with the channel seq, id echoed) + msg to every subscriber; ping -> pong
//
// Usage: node uws_relay.mjs [--host 127.0.0.1] [--port 8082]
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const uWS = require('uwebsockets');

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const host = opt('host', '127.0.0.1');
const port = Number(opt('port', '8082'));

const seqs = new Map(); // channel -> last seq
const decoder = new TextDecoder();
let nextClient = 1;

const app = uWS.App();
app.ws('/ws', {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 4 * 1024 * 1024,
  idleTimeout: 0,
  open: (ws) => {
    ws.send(
      JSON.stringify({ op: 'welcome', client: `uws-${nextClient++}`, user: 'anonymous', node: 'uws', version: 1 }),
    );
  },
  message: (ws, raw) => {
    let frame;
    try {
      frame = JSON.parse(decoder.decode(raw));
    } catch {
      ws.send(JSON.stringify({ op: 'error', code: 'bad_request', reason: 'malformed JSON' }));
      return;
    }
    const { op, ch: name, id } = frame;
    switch (op) {
      case 'sub':
        ws.subscribe(name);
        ws.send(JSON.stringify({ op: 'subscribed', ch: name, seq: seqs.get(name) ?? 0, id }));
        break;
      case 'unsub':
        ws.unsubscribe(name);
        ws.send(JSON.stringify({ op: 'unsubscribed', ch: name, id }));
        break;
      case 'pub': {
        const seq = (seqs.get(name) ?? 0) + 1;
        seqs.set(name, seq);
        ws.send(JSON.stringify({ op: 'ack', ch: name, seq, id }));
        const msg = JSON.stringify({
          op: 'msg', ch: name, seq, ts: Date.now(), from: 'anonymous', data: frame.data,
        });
        app.publish(name, msg);
        break;
      }
      case 'ping':
        ws.send(JSON.stringify({ op: 'pong', id }));
        break;
      default:
        ws.send(JSON.stringify({ op: 'error', code: 'bad_request', reason: 'unknown op', id }));
    }
  },
});

let listenSocket = null;
app.listen(host, port, (token) => {
  if (!token) {
    console.error(`uws relay could not listen on ${host}:${port}`);
    process.exit(1);
  }
  listenSocket = token;
  console.log(`uws relay listening on ${host}:${port}`);
});
const stop = () => {
  if (listenSocket) uWS.us_listen_socket_close(listenSocket);
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
