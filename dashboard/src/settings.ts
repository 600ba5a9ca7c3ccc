/**
 * Where the relay is and which token to present: kept in localStorage, defaulting to the
 * relay at the page's own origin (ferry serves this dashboard itself at `/`).
 */

const KEY_RELAY = "ferry.dashboard.relay";
const KEY_TOKEN = "ferry.dashboard.token";

export interface Settings {
  /** Relay base URL as the user typed it; "" means the default. */
  relay: string;
  /** Admin token (FERRY_ADMIN_TOKEN); "" means none. */
  token: string;
}

function read(key: string): string {
  try {
    return localStorage.getItem(key) ?? "";
  } catch {
    return ""; // storage disabled (privacy mode, sandboxed iframe): fall back to defaults
  }
}

function write(key: string, value: string): void {
  try {
    if (value) localStorage.setItem(key, value);
    else localStorage.removeItem(key);
  } catch {
    /* not persisted; the values still apply to this page */
  }
}

export function loadSettings(): Settings {
  return { relay: read(KEY_RELAY), token: read(KEY_TOKEN) };
}

export function saveSettings(s: Settings): void {
  write(KEY_RELAY, s.relay.trim());
  write(KEY_TOKEN, s.token.trim());
}

/**
 * The relay used when none is set: `VITE_FERRY_RELAY` baked in at build time (for a
 * dashboard hosted apart from the relay), else the page's own origin with ws:// or wss://
 * matching http:// or https://. Null when the page has no usable origin (file://).
 */
export function defaultRelay(loc: Pick<Location, "protocol" | "host">): string | null {
  const baked = import.meta.env.VITE_FERRY_RELAY?.trim();
  if (baked) return baked;
  if (loc.protocol !== "http:" && loc.protocol !== "https:") return null;
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}`;
}

/**
 * Normalises a relay base into a URL object with a ws: or wss: scheme and no trailing
 * `/ws` (accepts `host:port`, `http(s)://…`, `ws(s)://…`, with or without `/ws`).
 */
function relayBase(relay: string, loc: Pick<Location, "protocol">): URL {
  let r = relay.trim();
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(r)) {
    r = `${loc.protocol === "https:" ? "wss" : "ws"}://${r}`;
  }
  const u = new URL(r);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  else if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new Error(`unsupported scheme ${u.protocol} (use ws://, wss://, http:// or https://)`);
  }
  u.pathname = u.pathname.replace(/\/+$/, "").replace(/\/ws$/, "") || "/";
  u.search = "";
  u.hash = "";
  return u;
}

/** `base` + `/leaf`, without a doubled slash when base is the root. */
function join(u: URL, leaf: string): string {
  return `${u.pathname.replace(/\/+$/, "")}/${leaf}`;
}

/** `<relay>/ws`. Throws on a malformed relay. The token never goes in the URL (URLs reach
 * access logs): the client sends it in a `ferry.token.*` subprotocol. */
export function wsUrl(relay: string, loc: Pick<Location, "protocol">): string {
  const u = relayBase(relay, loc);
  u.pathname = join(u, "ws");
  return u.toString();
}

/**
 * A token handed over in the page's fragment (`#token=…`, as `ferry serve` prints it for
 * a token made for one run): returned once, and the fragment is wiped from the address
 * bar and history. Fragments never reach a server, so the token is in no log.
 */
export function takeFragmentToken(loc: Pick<Location, "hash">, clear: () => void): string {
  const m = /(?:^#|&)token=([^&]*)/.exec(loc.hash);
  if (!m) return "";
  clear();
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return "";
  }
}

/** `<relay>/healthz` over http(s): probed to tell "relay down" from "upgrade refused". */
export function healthUrl(relay: string, loc: Pick<Location, "protocol">): string {
  const u = relayBase(relay, loc);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname = join(u, "healthz");
  return u.toString();
}

/** The same URL with any query token hidden, for display. */
export function redactToken(url: string): string {
  return url.replace(/([?&]token=)[^&]*/, "$1•••");
}
