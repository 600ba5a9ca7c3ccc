/**
 * The flow tab: the graph (flowgraph.ts), lists of its nodes (keyboard- and test-
 * friendly twins of the canvas), and the detail panel for what was clicked: a channel,
 * a connection, a publisher, or one message's timeline (timeline.ts).
 *
 * Frames only store; `render()` (from the page's one animation frame) touches the DOM,
 * at most once per `$sys.flow` message for the lists and the detail, and on a click.
 */

import { h, setAttr, setHidden, setText } from "./dom";
import { FlowGraph, kindOf, nodeColour } from "./flowgraph";
import { fmtBytes, fmtClock } from "./format";
import type { Flow, FlowChannel, FlowClosed, FlowConnection, Stats, TailEntry } from "./protocol";
import { timeline, type StageP50, type TrackedMessage } from "./timeline";

/** Tail messages kept for channel details and timelines. */
const TRACKED = 600;
/** Recent messages listed for a channel. */
const CHANNEL_TAIL = 12;
/** Connections and channels remembered after they leave the top-N (or close). */
const REMEMBERED = 500;

const STAGE_NAMES = ["queue", "handoff", "write", "fsync", "wake", "flush"] as const;

type Selection = { kind: "node"; id: string } | { kind: "message"; ch: string; seq: number } | null;

function remember<K, V>(map: Map<K, V>, key: K, value: V): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > REMEMBERED) map.delete(map.keys().next().value as K);
}

function fmtRate(n: number | null | undefined): string {
  return n === null || n === undefined ? "—" : `${n.toLocaleString("en-US", { maximumFractionDigits: 1 })}/s`;
}

function kv(pairs: [string, string, string][]): HTMLElement {
  const dl = h("dl", "kv");
  for (const [label, testid, value] of pairs) {
    dl.append(h("dt", "", label));
    const dd = h("dd", "", value);
    dd.dataset.testid = testid;
    dl.append(dd);
  }
  return dl;
}

function ownerText(owner: string, here: string): string {
  return owner === here ? `${owner} (this node)` : `${owner} (another node)`;
}

export class FlowView {
  readonly graph: FlowGraph;
  private latest: Flow | null = null;
  private dirty = false;
  private visible = false;
  private selection: Selection = null;
  private readonly channels = new Map<string, FlowChannel>();
  private readonly conns = new Map<string, FlowConnection>();
  private readonly closed = new Map<string, FlowClosed>();
  private readonly messages: TrackedMessage[] = [];
  private readonly stages: StageP50 = {};
  private dbState: string | null = null;
  private checkpoint = 0;
  /** `$sys.flow` messages received (the page's test hook `data-flow-count`). */
  count = 0;

  constructor(
    private readonly root: HTMLElement,
    canvas: HTMLCanvasElement,
    private readonly ui: {
      summary: HTMLElement;
      publishers: HTMLElement;
      channels: HTMLElement;
      subscribers: HTMLElement;
      edges: HTMLElement;
      legend: HTMLElement;
      detail: HTMLElement;
      empty: HTMLElement;
    },
    private readonly requestFrame: () => void,
  ) {
    this.graph = new FlowGraph(canvas, (id) => this.select({ kind: "node", id }));
    for (const list of [ui.publishers, ui.channels, ui.subscribers]) {
      list.addEventListener("click", (ev) => {
        const btn = (ev.target as HTMLElement).closest<HTMLElement>("[data-id]");
        if (btn?.dataset.id) this.select({ kind: "node", id: btn.dataset.id });
      });
    }
    ui.detail.addEventListener("click", (ev) => {
      const el = (ev.target as HTMLElement).closest<HTMLElement>("[data-pick]");
      if (!el) return;
      const pick = el.dataset.pick ?? "";
      if (pick.startsWith("msg:")) {
        const [ch, seq] = [el.dataset.ch ?? "", Number(el.dataset.seq)];
        this.select({ kind: "message", ch, seq });
      } else {
        this.select({ kind: "node", id: pick });
      }
    });
  }

  setVisible(visible: boolean): void {
    this.visible = visible;
    setHidden(this.root, !visible);
    this.graph.setVisible(visible);
    if (visible) {
      this.dirty = true;
      this.requestFrame();
    }
  }

  flow(doc: Flow): void {
    this.latest = doc;
    this.count++;
    for (const c of doc.channels) remember(this.channels, c.ch, c);
    for (const c of doc.connections) remember(this.conns, c.client, c);
    for (const c of doc.closed) remember(this.closed, c.client, c);
    this.dirty = true;
    this.requestFrame();
  }

  tail(e: TailEntry): void {
    this.messages.push({ entry: e, stages: { ...this.stages }, loggedAt: null });
    if (this.messages.length > TRACKED) this.messages.splice(0, this.messages.length - TRACKED);
    this.graph.message(e);
    const sel = this.selection;
    if (sel?.kind === "node" && sel.id === "c:" + e.ch) {
      this.dirty = true;
      this.requestFrame();
    }
  }

  stats(s: Stats): void {
    for (const name of STAGE_NAMES) {
      const p50 = s.stages?.[name]?.p50_ms;
      if (typeof p50 === "number") this.stages[name] = p50;
    }
    this.dbState = s.db?.state ?? null;
    const lsn = s.db?.checkpoint_lsn;
    if (typeof lsn === "number" && lsn > this.checkpoint) {
      this.checkpoint = lsn;
      const at = s.ts_ms ?? Date.now();
      for (const m of this.messages) {
        if (m.loggedAt === null && (m.entry.lsn ?? Infinity) <= lsn) m.loggedAt = at;
      }
      if (this.selection?.kind === "message") this.dirty = true;
    }
    if (this.dirty) this.requestFrame();
  }

  select(sel: Selection): void {
    this.selection = sel;
    this.graph.select(sel?.kind === "node" ? sel.id : sel ? "c:" + sel.ch : "");
    this.dirty = true;
    this.requestFrame();
  }

  render(): void {
    if (!this.visible || !this.dirty) return;
    this.dirty = false;
    const doc = this.latest;
    setAttr(document.body, "data-flow-count", String(this.count));
    if (doc) {
      this.graph.update(doc, this.labels(doc));
      setText(
        this.ui.summary,
        `${fmtRate(doc.msgs_per_s)} over ${doc.active_channels.toLocaleString("en-US")} active channels · node ${doc.node}`,
      );
      this.renderLists(doc);
      this.renderLegend(doc);
    }
    this.renderDetail();
  }

  private labels(doc: Flow): Map<string, string> {
    const labels = new Map<string, string>();
    labels.set("p:*", `${doc.others.publishers} other publishers`);
    labels.set("c:*", `${doc.others.channels} other channels`);
    // a client id is `<node>-<boot>-<n>`: the user and the connection's number tell it apart
    for (const c of doc.connections) labels.set("s:" + c.client, `${c.user} #${c.client.split("-").pop()}`);
    for (const e of doc.edges) {
      if (e.dst.startsWith("s:*")) labels.set(e.dst, `+${e.count} more`);
    }
    return labels;
  }

  /** In a cluster: each owner node's colour, and what a dashed edge means. */
  private renderLegend(doc: Flow): void {
    const bands = this.graph.bands;
    const crossing = doc.edges.some((e) => e.hop);
    setHidden(this.ui.legend, !bands.length && !crossing);
    if (!bands.length && !crossing) return;
    const parts: HTMLElement[] = bands.map((owner, i) => {
      const item = h("span", "legend-node", i === 0 ? `${owner} (this node)` : owner);
      item.dataset.testid = "legend-node";
      item.dataset.owner = owner;
      item.style.setProperty("--swatch", nodeColour(i));
      return item;
    });
    parts.push(h("span", "legend-line", "on this node"));
    parts.push(h("span", "legend-line legend-cross", "crosses nodes: forwarded to / from the owner, or its feed"));
    this.ui.legend.replaceChildren(...parts);
  }

  private renderLists(doc: Flow): void {
    const item = (id: string, label: string, rate: number): HTMLElement => {
      const li = h("li");
      const btn = h("button", "node-btn");
      btn.type = "button";
      btn.dataset.id = id;
      btn.dataset.testid = "flow-node";
      const owner = this.graph.nodes.get(id)?.owner;
      if (owner) btn.dataset.owner = owner;
      btn.append(h("span", "ellipsis", label), h("span", "muted num", fmtRate(rate)));
      if (this.selection?.kind === "node" && this.selection.id === id) btn.setAttribute("aria-pressed", "true");
      li.append(btn);
      return li;
    };
    const labels = this.labels(doc);
    const nodes = [...this.graph.nodes.values()];
    for (const [kind, list] of [
      ["p", this.ui.publishers],
      ["c", this.ui.channels],
      ["s", this.ui.subscribers],
    ] as const) {
      list.replaceChildren(
        ...nodes
          .filter((n) => n.kind === kind)
          .sort((a, b) => b.rate - a.rate)
          .map((n) => item(n.id, labels.get(n.id) ?? n.id.slice(2), n.rate)),
      );
    }
    this.ui.edges.replaceChildren(
      ...doc.edges.map((e) => {
        const tr = h("tr");
        tr.dataset.testid = "flow-edge";
        tr.dataset.src = e.src;
        tr.dataset.dst = e.dst;
        tr.dataset.hop = e.hop ?? "";
        tr.append(
          h("td", "mono ellipsis", e.src),
          h("td", "mono ellipsis", e.dst),
          h("td", "", e.hop ?? ""),
          h("td", "num", fmtRate(e.rate)),
        );
        return tr;
      }),
    );
  }

  private renderDetail(): void {
    const sel = this.selection;
    const out = this.ui.detail;
    setHidden(this.ui.empty, sel !== null);
    setHidden(out, sel === null);
    if (!sel) return;
    const parts: HTMLElement[] = [];
    if (sel.kind === "message") {
      parts.push(...this.messageDetail(sel.ch, sel.seq));
    } else {
      const kind = kindOf(sel.id);
      const name = sel.id.slice(2);
      if (kind === "c") parts.push(...this.channelDetail(name));
      else if (kind === "s") parts.push(...this.connectionDetail(name));
      else parts.push(...this.publisherDetail(name));
    }
    out.replaceChildren(...parts);
  }

  private head(kind: string, title: string): HTMLElement[] {
    const k = h("span", "badge", kind);
    k.dataset.testid = "detail-kind";
    const t = h("h3", "detail-title mono ellipsis", title);
    t.dataset.testid = "detail-title";
    return [k, t];
  }

  private channelDetail(name: string): HTMLElement[] {
    const c = this.channels.get(name);
    const parts = this.head("channel", name);
    if (name.startsWith("*")) {
      parts.push(h("p", "muted", "Channels outside the top-N, folded together."));
      return parts;
    }
    if (!c) {
      parts.push(h("p", "muted", "No traffic seen on this channel yet."));
      return parts;
    }
    const quiet = !this.latest?.channels.some((x) => x.ch === name);
    const here = this.latest?.node ?? "";
    const logged = c.logged_seq;
    parts.push(
      kv([
        ["Owner", "ch-owner", ownerText(c.owner || here, here)],
        ["Head seq", "ch-head", c.head === 0 && !c.subscribers && c.owner !== here ? `not followed here (${c.owner} has it)` : String(c.head)],
        ["Rate", "ch-rate", quiet ? "quiet now" : fmtRate(c.rate)],
        ["Subscribers", "ch-subscribers", `${c.subscribers} (${c.users} users)`],
        ["History", "ch-history", c.history_first === null ? "empty" : `seq ${c.history_first}–${c.history_last}`],
        ["In the database", "ch-logged", logged === null ? (this.dbState === "off" ? "no database log" : "below the ring / unknown") : `up to seq ${logged}`],
        ["Database lag", "ch-db-lag", logged === null ? "—" : `${Math.max(0, c.head - logged)} messages`],
      ]),
    );
    parts.push(h("h4", "", "Subscribers"));
    const table = h("table", "top-table");
    const thead = h("thead");
    const tr = h("tr");
    for (const t of ["user", "client", "enc", "outbox", "state"]) tr.append(h("th", "", t));
    thead.append(tr);
    const body = h("tbody");
    body.dataset.testid = "ch-subs";
    for (const s of c.shown) {
      const row = h("tr");
      row.dataset.client = s.client;
      row.dataset.user = s.user;
      row.dataset.pick = "s:" + s.client;
      row.className = "pickable";
      row.append(
        h("td", "ellipsis", s.user),
        h("td", "mono ellipsis", s.client),
        h("td", "", s.encoding),
        h("td", "num", fmtBytes(s.outbox_bytes)),
        h("td", `state-${s.state}`, s.state),
      );
      body.append(row);
    }
    table.append(thead, body);
    parts.push(table);
    if (c.subscribers > c.shown.length) parts.push(h("p", "muted", `and ${c.subscribers - c.shown.length} more`));
    parts.push(h("h4", "", "Recent messages (sampled tail)"));
    const ol = h("ol", "detail-tail");
    ol.dataset.testid = "ch-tail";
    const recent = this.messages.filter((m) => m.entry.ch === name).slice(-CHANNEL_TAIL).reverse();
    for (const m of recent) {
      const li = h("li");
      const btn = h("button", "link mono");
      btn.type = "button";
      btn.dataset.pick = "msg:";
      btn.dataset.ch = name;
      btn.dataset.seq = String(m.entry.seq);
      btn.dataset.testid = "tail-message";
      btn.textContent = `#${m.entry.seq} ${fmtClock(m.entry.ts)} ${m.entry.from}: ${m.entry.preview.slice(0, 60)}`;
      li.append(btn);
      ol.append(li);
    }
    if (!recent.length) ol.append(h("li", "muted", "none sampled yet"));
    parts.push(ol);
    return parts;
  }

  private connectionDetail(client: string): HTMLElement[] {
    const parts = this.head("connection", client);
    if (client.startsWith("*")) {
      parts.push(h("p", "muted", `Subscribers of ${client.slice(1)} beyond the ones shown.`));
      return parts;
    }
    const c = this.conns.get(client);
    const closed = this.closed.get(client);
    if (!c) {
      parts.push(h("p", "muted", "Not seen in the flow yet."));
      return parts;
    }
    parts.push(
      kv([
        ["User", "conn-user", c.user],
        ["Encoding", "conn-encoding", c.encoding],
        ["Subscriptions", "conn-subs", String(c.subscriptions)],
        ["Channels", "conn-channels", c.channels.join(", ") + (c.subscriptions > c.channels.length ? ", …" : "")],
        ["Publishes", "conn-pub-rate", `${fmtRate(c.publish_rate)} (${c.published} in all)`],
        ["Deliveries", "conn-del-rate", fmtRate(c.delivery_rate)],
        ["Errors sent", "conn-errors", String(c.errors)],
        ["Outbox", "conn-outbox", `${fmtBytes(c.outbox_bytes)} · ${c.state}`],
        ["Closed", "conn-closed", closed ? `code ${closed.code} at ${fmtClock(closed.ts_ms)}` : "open"],
      ]),
    );
    return parts;
  }

  private publisherDetail(user: string): HTMLElement[] {
    const parts = this.head("publisher", user);
    const doc = this.latest;
    const edges = doc ? doc.edges.filter((e) => e.src === "p:" + user) : [];
    const rate = edges.reduce((a, e) => a + e.rate, 0);
    parts.push(
      kv([
        ["Rate", "pub-user-rate", fmtRate(rate)],
        ["Channels", "pub-user-channels", edges.map((e) => e.dst.slice(2)).join(", ") || "—"],
      ]),
    );
    return parts;
  }

  private messageDetail(ch: string, seq: number): HTMLElement[] {
    const m = this.messages.find((x) => x.entry.ch === ch && x.entry.seq === seq);
    const parts = this.head("message", `${ch} #${seq}`);
    const back = h("button", "link", `← ${ch}`);
    back.type = "button";
    back.dataset.pick = "c:" + ch;
    parts.push(back);
    if (!m) {
      parts.push(h("p", "muted", "No longer in the sampled buffer."));
      return parts;
    }
    parts.push(kv([["Data", "msg-preview", m.entry.preview], ["Size", "msg-size", fmtBytes(m.entry.size)], ["LSN", "msg-lsn", String(m.entry.lsn ?? "—")]]));
    const ol = h("ol", "timeline");
    ol.dataset.testid = "timeline";
    const t0 = m.entry.ts;
    for (const st of timeline(m, this.dbState)) {
      const li = h("li");
      li.dataset.stage = st.key;
      li.dataset.done = String(st.at !== null);
      const when = st.at === null ? "—" : `${st.estimated ? "≈ " : ""}+${(st.at - t0).toFixed(2)} ms`;
      li.append(h("span", "tl-label", st.label), h("span", "tl-at mono", when), h("small", "muted", st.note));
      ol.append(li);
    }
    parts.push(ol);
    return parts;
  }
}
