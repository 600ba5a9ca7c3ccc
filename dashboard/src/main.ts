/**
 * ferry live dashboard: wires the relay connection to the views.
 *
 * Frames are handled as they arrive (cheap: store the latest values); all DOM work is
 * batched into one requestAnimationFrame callback, so a burst of frames costs one layout.
 */

import "./style.css";
import { ChartBoard } from "./charts";
import { byTestId, setAttr, setHidden, setText } from "./dom";
import { FlowView } from "./flowview";
import { HeaderView, StatsPanels } from "./panels";
import {
  FLOW_CHANNEL,
  PROTOCOL_VERSION,
  STATS_CHANNEL,
  TAIL_CHANNEL,
  isFlow,
  isStats,
  isTailEntry,
  type ServerFrame,
  type Stats,
} from "./protocol";
import { PublishBox } from "./publish";
import { RelayClient, type ConnStatus, type RelayTarget } from "./relay";
import {
  defaultRelay,
  healthUrl,
  loadSettings,
  redactToken,
  saveSettings,
  takeFragmentToken,
  wsUrl,
} from "./settings";
import { TailView } from "./tail";

/** No stats for this long while connected: say the numbers are stale. */
const STALE_AFTER_MS = 3_000;

// ---- frame scheduler --------------------------------------------------------------------

let frameQueued = false;
function requestFrame(): void {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(flush);
}

// ---- views ------------------------------------------------------------------------------

const header = new HeaderView();
const panels = new StatsPanels();
const charts = new ChartBoard(byTestId("charts"), requestFrame);
const tail = new TailView(byTestId("tail"), byTestId<HTMLButtonElement>("tail-pause"), byTestId("tail-count"), requestFrame);
const flowView = new FlowView(
  byTestId("flow-view"),
  byTestId<HTMLCanvasElement>("flow-canvas"),
  {
    summary: byTestId("flow-summary"),
    publishers: byTestId("flow-publishers"),
    channels: byTestId("flow-channels"),
    subscribers: byTestId("flow-subscribers"),
    edges: byTestId("flow-edges"),
    legend: byTestId("flow-legend"),
    detail: byTestId("detail"),
    empty: byTestId("detail-empty"),
  },
  requestFrame,
);

const ui = {
  conn: byTestId("conn-state"),
  banner: byTestId("banner"),
  bannerText: byTestId("banner-text"),
  bannerDetail: byTestId("banner-detail"),
  retry: byTestId<HTMLButtonElement>("retry-now"),
  auth: byTestId("auth-error"),
  authTitle: byTestId("auth-error-title"),
  authText: byTestId("auth-error-text"),
  authFix: byTestId("auth-error-fix"),
  stale: byTestId("stale"),
  relayUrl: byTestId<HTMLInputElement>("relay-url"),
  token: byTestId<HTMLInputElement>("admin-token"),
  settingsForm: byTestId<HTMLFormElement>("settings-form"),
  settingsNote: byTestId("settings-note"),
  pubForm: byTestId<HTMLFormElement>("pub-form"),
  tailFilter: byTestId<HTMLInputElement>("tail-filter"),
};

// ---- state ------------------------------------------------------------------------------

let status: ConnStatus | null = null;
let latestStats: Stats | null = null;
let statsDirty = false;
let statsCount = 0;
let lastStatsAt = 0;
let welcomeNode = "";
let chartNode = "";
let tokenInUse = "";
/** Why the relay won't give us `$sys.*`, or "" when it does (or we don't know yet). */
let authProblem: { kind: "refused" | "forbidden"; title: string; text: string } | null = null;

const publish = new PublishBox(
  byTestId<HTMLInputElement>("pub-channel"),
  byTestId<HTMLTextAreaElement>("pub-data"),
  byTestId("pub-result"),
  (ch, text) => client.publish(ch, text),
);

const client = new RelayClient({
  status(s) {
    status = s;
    if ((s.state === "waiting" || s.state === "idle") && s.refused) {
      authProblem = {
        kind: "refused",
        title: tokenInUse ? "Admin token rejected." : "Token required.",
        text:
          "The relay answers HTTP but refused the connection, which it does for a " +
          "missing, bad or expired token (HTTP 401 at the upgrade, or close 4401).",
      };
    } else if (authProblem?.kind === "refused" && (s.state === "open" || (s.state === "waiting" && !s.refused))) {
      authProblem = null; // it got through after all, or the relay is simply down now
    }
    requestFrame();
  },
  frame: onFrame,
});

function onFrame(f: ServerFrame): void {
  switch (f.op) {
    case "msg":
      if (f.ch === STATS_CHANNEL && isStats(f.data)) {
        const s = f.data;
        statsCount++;
        lastStatsAt = Date.now();
        latestStats = s;
        statsDirty = true;
        const node = s.node ?? welcomeNode;
        if (node !== chartNode) {
          if (chartNode) charts.clear(); // another node's history would mislead
          chartNode = node;
        }
        charts.push(s, f.ts);
        flowView.stats(s);
        // Hidden tabs get no animation frames; keep the counter true for tools anyway.
        if (document.hidden) setAttr(document.body, "data-stats-count", String(statsCount));
        requestFrame();
      } else if (f.ch === TAIL_CHANNEL && isTailEntry(f.data)) {
        tail.push(f.data);
        flowView.tail(f.data);
      } else if (f.ch === FLOW_CHANNEL && isFlow(f.data)) {
        flowView.flow(f.data);
      }
      break;
    case "welcome":
      // A new session: its subscriptions will tell; without a token there are none to
      // try (asking would only count two `forbidden` errors on the relay).
      authProblem = tokenInUse
        ? null
        : {
            kind: "forbidden",
            title: "Admin token missing.",
            text: `The relay sends ${STATS_CHANNEL} and ${TAIL_CHANNEL} only to the admin token (FERRY_ADMIN_TOKEN).`,
          };
      if (authProblem) requestFrame();
      welcomeNode = f.node;
      header.welcome(f.node, f.user);
      if (f.version !== PROTOCOL_VERSION) {
        console.warn(`ferry dashboard speaks protocol v${PROTOCOL_VERSION}, relay says v${f.version}`);
      }
      break;
    case "subscribed":
      if (f.ch === STATS_CHANNEL) {
        authProblem = null;
        requestFrame();
      }
      break;
    case "error":
      if (f.code === "forbidden") {
        // A refused `$sys.*` subscription (publishes answer through their promise).
        // Both subscriptions fail alike; the first error says it all.
        if (!authProblem) {
          const why = f.reason ? ` (${f.reason})` : "";
          authProblem = tokenInUse
            ? {
                kind: "forbidden",
                title: "Admin token wrong.",
                text: `The relay refused ${STATS_CHANNEL} for this token${why}. It must be the relay's FERRY_ADMIN_TOKEN.`,
              }
            : {
                kind: "forbidden",
                title: "Admin token missing.",
                text: `The relay sends ${STATS_CHANNEL} and ${TAIL_CHANNEL} only to the admin token${why}.`,
              };
          requestFrame();
        }
      } else {
        console.warn(`ferry: error ${f.code}: ${f.reason}`);
      }
      break;
    case "pong":
    case "unsubscribed":
      break;
  }
}

// ---- rendering ----------------------------------------------------------------------------

const CONN_LABEL: Record<ConnStatus["state"], string> = {
  idle: "disconnected",
  connecting: "connecting",
  open: "connecting",
  ready: "connected",
  waiting: "disconnected",
};

function renderConnection(now: number): void {
  const s = status;
  if (!s) return;
  setText(ui.conn, CONN_LABEL[s.state]);
  setAttr(ui.conn, "data-state", CONN_LABEL[s.state]);

  const down = s.state !== "ready";
  setHidden(ui.banner, !down);
  setAttr(ui.banner, "data-state", s.state);
  let text = "";
  let detail = "";
  switch (s.state) {
    case "idle":
      text = "Not connected";
      detail = s.idleReason;
      break;
    case "connecting":
      text = s.attempt ? `Disconnected — reconnecting now (attempt ${s.attempt + 1})…` : `Connecting…`;
      detail = s.url;
      break;
    case "open":
      text = "Connected — waiting for the relay's welcome…";
      detail = s.url;
      break;
    case "waiting": {
      const secs = Math.max(0, Math.ceil((s.retryAt - now) / 1000));
      text = `Disconnected — reconnecting in ${secs}s`;
      detail = `${s.lastClose} · ${s.url}`;
      break;
    }
    case "ready":
      break;
  }
  setText(ui.bannerText, text);
  setText(ui.bannerDetail, detail);
  setHidden(ui.retry, s.state !== "waiting");

  setHidden(ui.auth, !authProblem);
  if (authProblem) {
    setText(ui.authTitle, authProblem.title);
    setText(ui.authText, authProblem.text);
  }

  const stale = s.state === "ready" && lastStatsAt > 0 && now - lastStatsAt > STALE_AFTER_MS;
  setHidden(ui.stale, !stale);
  if (stale) setText(ui.stale, `No stats for ${Math.round((now - lastStatsAt) / 1000)}s — numbers below are stale.`);
  document.body.classList.toggle("is-stale", stale || (down && statsCount > 0));
}

/** Run one view's update; a malformed payload must not stop the others from rendering. */
function guarded(name: string, fn: () => void): void {
  try {
    fn();
  } catch (e) {
    console.error(`ferry dashboard: ${name} failed to render`, e);
  }
}

function flush(): void {
  frameQueued = false;
  const s = latestStats;
  if (statsDirty && s) {
    statsDirty = false;
    guarded("panels", () => panels.render(s));
    guarded("header", () => header.stats(s));
  }
  guarded("charts", () => charts.render());
  guarded("tail", () => tail.render());
  guarded("flow", () => flowView.render());
  renderConnection(Date.now());
  setAttr(document.body, "data-stats-count", String(statsCount));
}

// A 1 s tick drives the countdown and the staleness notice; nothing else polls.
window.setInterval(() => {
  if (status && (status.state === "waiting" || status.state === "ready")) requestFrame();
}, 1_000);

// ---- tabs: #flow is the flow view, anything else the overview -----------------------------

const overview = byTestId("overview-view");
const tabs = { overview: byTestId("tab-overview"), flow: byTestId("tab-flow") };

function showTab(): void {
  const flow = location.hash === "#flow";
  setHidden(overview, flow);
  flowView.setVisible(flow);
  client.setFlow(flow); // $sys.flow costs the relay a little: only while it is shown
  setAttr(tabs.overview, "aria-current", flow ? null : "page");
  setAttr(tabs.flow, "aria-current", flow ? "page" : null);
  requestFrame();
}
window.addEventListener("hashchange", showTab);

// A test hook: where a graph node is drawn (page coordinates), for clicking it.
(window as unknown as { ferryFlow: unknown }).ferryFlow = {
  position: (id: string) => flowView.graph.position(id),
  settled: () => flowView.graph.settled,
};

// ---- settings ---------------------------------------------------------------------------

function targetFor(relay: string, token: string): { target: RelayTarget | null; problem: string } {
  const base = relay || defaultRelay(location);
  if (!base) return { target: null, problem: "set the relay URL in Settings (this page has no origin to default to)" };
  try {
    const url = wsUrl(base, location);
    const target: RelayTarget = {
      url,
      displayUrl: redactToken(url),
      healthUrl: healthUrl(base, location),
      token,
      subscribe: Boolean(token),
    };
    return { target, problem: "" };
  } catch (e) {
    return { target: null, problem: `bad relay URL "${base}": ${e instanceof Error ? e.message : e}` };
  }
}

function apply(relay: string, token: string): string {
  tokenInUse = token;
  authProblem = null;
  const { target, problem } = targetFor(relay, token);
  client.configure(target, problem);
  return target ? target.displayUrl : problem;
}

const initial = loadSettings();
const handedOver = takeFragmentToken(location, () =>
  history.replaceState(null, "", location.pathname + location.search),
);
if (handedOver) {
  initial.token = handedOver;
  saveSettings(initial);
}
ui.relayUrl.value = initial.relay;
ui.token.value = initial.token;
ui.relayUrl.placeholder = defaultRelay(location) ?? "ws://localhost:8080";

ui.settingsForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const next = { relay: ui.relayUrl.value.trim(), token: ui.token.value.trim() };
  saveSettings(next);
  setText(ui.settingsNote, `Saved · ${apply(next.relay, next.token)}`);
});

ui.authFix.addEventListener("click", (ev) => {
  ev.preventDefault();
  ui.token.scrollIntoView({ block: "center", behavior: "smooth" });
  ui.token.focus({ preventScroll: true });
});

ui.retry.addEventListener("click", () => client.retryNow());

ui.pubForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  publish.submit();
});

ui.tailFilter.addEventListener("input", () => tail.setFilter(ui.tailFilter.value));
byTestId("tail-pause").addEventListener("click", () => tail.togglePause());

// Catch up in one frame when the tab becomes visible again.
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) requestFrame();
});

document.body.dataset.statsCount = "0";
apply(initial.relay, initial.token);
showTab();
