// What the integration scenarios share. Each scenario is run by a pytest test
// (tests/clients/js/): it prints JSON lines on stdout — {"event": …} as it goes, and
// {"report": …} last — and reads commands from pytest on stdin, one per line.
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import WebSocket from "ws";
import { Ferry } from "ferry-client";

export const env = (name, fallback) => {
  const raw = process.env[`FERRYTEST_JS_${name.toUpperCase()}`];
  return raw === undefined ? fallback : raw.startsWith("{") || raw.startsWith("[") || /^-?\d/.test(raw) ? JSON.parse(raw) : raw;
};

export const URL = env("url");

export function emit(event, extra = {}) {
  process.stdout.write(JSON.stringify({ event, ...extra }) + "\n");
}

export function report(obj) {
  process.stdout.write(JSON.stringify({ report: obj }) + "\n");
}

/** A client on `ws`, fast backoff, with a log of its states and errors. */
export function client(name, options = {}, url = URL) {
  const log = { states: [], errors: [], closes: [] };
  const ferry = new Ferry(url, {
    WebSocket,
    backoff: { baseMs: 50, capMs: 500, goingAwayMs: 500 },
    onState: (state, info) => {
      log.states.push(state);
      if (state === "waiting" || state === "closed") {
        if (info.code !== undefined) log.closes.push(info.code);
      }
      emit("state", { client: name, state, code: info.code });
    },
    onError: (e) => log.errors.push(String(e?.message ?? JSON.stringify(e))),
    ...options,
  });
  return { ferry, log };
}

const lines = [];
let wake = null;
let stdinOpen = true;
const rl = createInterface({ input: process.stdin });
rl.on("line", (l) => {
  lines.push(l.trim());
  wake?.();
});
rl.on("close", () => {
  stdinOpen = false;
  wake?.();
});

/** The next command pytest sends. */
export async function command() {
  while (!lines.length) {
    if (!stdinOpen) throw new Error("stdin closed");
    await new Promise((r) => (wake = r));
  }
  return lines.shift();
}

/** Stop reading stdin so the process can exit. */
export function done() {
  rl.close();
  process.stdin.destroy();
}

/** Resolve when `pred()` holds, checking every 10 ms; reject after `ms`. */
export async function until(pred, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** An HS256 JWT, as `ferry token` makes them. */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** Run `main`, report what it returns, exit non-zero on an exception. */
export async function run(main) {
  try {
    report(await main());
  } catch (e) {
    process.stderr.write(`${e?.stack ?? e}\n`);
    process.exitCode = 1;
  } finally {
    done();
  }
}
