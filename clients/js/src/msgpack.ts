/**
 * `ferry-client/msgpack`: the `ferry.v1.msgpack` encoding (binary frames), through the
 * optional peer dependency @msgpack/msgpack.
 *
 *   import { Ferry } from "ferry-client";
 *   import { msgpack } from "ferry-client/msgpack";
 *   const ferry = new Ferry(url, { codec: msgpack });
 */
import { decode, encode } from "@msgpack/msgpack";
import type { Codec } from "./index.js";

export const msgpack: Codec = {
  protocol: "ferry.v1.msgpack",
  encode: (frame) => encode(frame),
  decode: (data) => decode(typeof data === "string" ? new TextEncoder().encode(data) : data),
};
