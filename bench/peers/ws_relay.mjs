// The protocol-v1 subset (docs/design.md §3) on Node's `ws`, written the way such relays usually
// are: JSON.parse every frame, JSON.stringify each outgoing message once, and one
// ws.send() per frame per subscriber. No durability, no auth, no limits.
//
//   welcome on connect; sub -> subscribed (seq = channel head); unsub -> unsubscribed;
//   pub -> ack (with the channel seq, id echoed) + msg to every subscriber; ping -> pong
//
// Usage: node ws_relay.mjs [--host 127.0.0.1] [--port 8081]
import { WebSocket, WebSocketServer } from 'ws';

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const host = opt('host', '127.0.0.1');
const port = Number(opt('port', '8081'));

const channels = new Map(); // name -> { seq, subs: Set<WebSocket> }
const channel = (name) => {
  let ch = channels.get(name);
  if (ch === undefined) {
    ch = { seq: 0, subs: new Set() };
    channels.set(name, ch);
  }
  return ch;
};

let nextClient = 1;
const wss = new WebSocketServer({ host, port, path: '/ws', perMessageDeflate: false, maxPayload: 64 * 1024 });

wss.on('connection', (ws) => {
  const client = `node-${nextClient++}`;
  const mine = new Set();
  ws.send(JSON.stringify({ op: 'welcome', client, user: 'anonymous', node: 'node-ws', version: 1 }));

  ws.on('message', (raw) => {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      ws.send(JSON.stringify({ op: 'error', code: 'bad_request', reason: 'malformed JSON' }));
      return;
    }
    const { op, ch: name, id } = frame;
    switch (op) {
      case 'sub': {
        const ch = channel(name);
        ch.subs.add(ws);
        mine.add(ch);
        ws.send(JSON.stringify({ op: 'subscribed', ch: name, seq: ch.seq, id }));
        break;
      }
      case 'unsub': {
        const ch = channels.get(name);
        if (ch !== undefined) {
          ch.subs.delete(ws);
          mine.delete(ch);
        }
        ws.send(JSON.stringify({ op: 'unsubscribed', ch: name, id }));
        break;
      }
      case 'pub': {
        const ch = channel(name);
        const seq = ++ch.seq;
        ws.send(JSON.stringify({ op: 'ack', ch: name, seq, id }));
        const msg = JSON.stringify({
          op: 'msg', ch: name, seq, ts: Date.now(), from: 'anonymous', data: frame.data,
        });
        for (const sub of ch.subs) {
          if (sub.readyState === WebSocket.OPEN) sub.send(msg);
        }
        break;
      }
      case 'ping':
        ws.send(JSON.stringify({ op: 'pong', id }));
        break;
      default:
        ws.send(JSON.stringify({ op: 'error', code: 'bad_request', reason: 'unknown op', id }));
    }
  });

  ws.on('close', () => {
    for (const ch of mine) ch.subs.delete(ws);
  });
  ws.on('error', () => {});
});

wss.on('listening', () => console.log(`ws relay listening on ${host}:${port}`));
const stop = () => wss.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
