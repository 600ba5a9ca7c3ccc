import assert from "node:assert/strict";
import { test } from "node:test";
import { encode } from "@msgpack/msgpack";
import { msgpack } from "../dist/msgpack.js";
import { FakeSocket, setup } from "./harness.mjs";

test("the msgpack codec: ferry.v1.msgpack, binary frames both ways", async (t) => {
  assert.equal(msgpack.protocol, "ferry.v1.msgpack");
  const frame = { op: "pub", ch: "room.1", data: { a: [1, 2] } };
  assert.deepEqual(msgpack.decode(msgpack.encode(frame)), frame);

  const h = setup(t, { codec: msgpack });
  h.ferry.connect();
  const ws = h.last();
  assert.deepEqual(ws.protocols, ["ferry.v1.msgpack"]);
  ws.open();
  ws.onmessage({ data: encode({ op: "welcome", client: "c", user: "u", node: "n", version: 1 }).slice().buffer });
  assert.equal(h.ferry.state, "ready");
  const p = h.ferry.publish("room.1", { x: 1 });
  assert.deepEqual(msgpack.decode(ws.sent[0]), { op: "ping" }, "no token: a ping first");
  const sent = ws.sent[1];
  assert.ok(sent instanceof Uint8Array);
  const pub = msgpack.decode(sent);
  assert.deepEqual([pub.op, pub.data], ["pub", { x: 1 }]);
  ws.onmessage({ data: encode({ op: "ack", ch: "room.1", seq: 4, id: pub.id, dup: true }) });
  assert.deepEqual(await p, { seq: 4, dup: true });
  assert.equal(FakeSocket.all.length, 1);
});
