/**
 * The flow graph: publishers → channels → subscribers from `$sys.flow`, drawn on one
 * canvas, with sampled messages (`$sys.tail`) moving along the edges.
 *
 * Layout is d3-force with each kind of node held to its column (forceX) and spread
 * vertically (forceY, forceCollide), plus weak links so connected nodes line up: nodes
 * that stay keep their place between two updates and new ones ease in. The simulation
 * never runs its own timer: it is ticked from the page's one animation loop, which runs
 * only while the view is visible and something moves (the layout settling, or a
 * message dot on its way), and is idle otherwise.
 *
 * Node ids are the server's: `p:<user>`, `c:<channel>`, `s:<client>`; `p:*`, `c:*` and
 * `s:*<channel>` are the folded "others".
 *
 * In a cluster the channel column is cut into one band per owner node (this node's
 * first), each channel held to its owner's band and drawn in its colour; edges that
 * cross nodes (`hop`: a forward to or from the owner, an owner's feed) are dashed.
 */

import {
  forceCollide,
  forceLink,
  forceSimulation,
  forceX,
  forceY,
  type Simulation,
  type SimulationLinkDatum,
  type SimulationNodeDatum,
} from "d3-force";
import type { Flow, FlowEdge, TailEntry } from "./protocol";

export type NodeKind = "p" | "c" | "s";

export interface GraphNode extends SimulationNodeDatum {
  id: string;
  kind: NodeKind;
  label: string;
  rate: number;
  /** How many things a folded "others" node stands for (1 otherwise). */
  count: number;
  others: boolean;
  r: number;
  /** A channel's owner node ("" for the others). */
  owner: string;
}

export interface GraphEdge extends SimulationLinkDatum<GraphNode> {
  source: GraphNode;
  target: GraphNode;
  rate: number;
  count: number;
  hop: FlowEdge["hop"];
}

interface Dot {
  edge: GraphEdge;
  start: number;
  /** Hand the message on to the channel's subscribers when it arrives. */
  fanout: boolean;
}

const HEIGHT = 520;
const COLUMNS: Record<NodeKind, number> = { p: 0.14, c: 0.5, s: 0.86 };
const COLOURS: Record<NodeKind, string> = { p: "#3ddbb0", c: "#5aa9ff", s: "#c39bff" };
/** Owner nodes' colours, by band: this node's is the channels' usual blue. */
const NODE_COLOURS = ["#5aa9ff", "#ffb86b", "#ff7aa8", "#9be564", "#f5e663", "#7ad7f0"];
const CROSS_DASH = [7, 4];
const BAND_TOP = 24;
const HOP_MS = 650;
const MAX_DOTS = 400;
/** Per tail message, dots to at most this many of the channel's subscriber edges. */
const FANOUT_DOTS = 8;

export function nodeColour(band: number): string {
  return NODE_COLOURS[band % NODE_COLOURS.length];
}

export function kindOf(id: string): NodeKind {
  return id.startsWith("p:") ? "p" : id.startsWith("c:") ? "c" : "s";
}

function radius(rate: number): number {
  return 5 + 2.2 * Math.log10(1 + rate);
}

function width(rate: number): number {
  return 0.8 + 1.6 * Math.log10(1 + rate);
}

export class FlowGraph {
  readonly nodes = new Map<string, GraphNode>();
  edges: GraphEdge[] = [];
  private readonly out = new Map<string, GraphEdge[]>();
  private readonly sim: Simulation<GraphNode, GraphEdge>;
  private readonly ctx: CanvasRenderingContext2D;
  private dots: Dot[] = [];
  private w = 800;
  private dpr = 1;
  private running = false;
  private visible = false;
  selected = "";
  /** The channels' owner nodes, one band each, this node's first (one node: none). */
  bands: string[] = [];
  /** Frames drawn (a test hook and a cheap sanity figure). */
  frames = 0;

  constructor(
    private readonly canvas: HTMLCanvasElement,
    private readonly onSelect: (id: string) => void,
  ) {
    const ctx = canvas.getContext("2d");
    if (!ctx) throw new Error("no 2D canvas");
    this.ctx = ctx;
    this.sim = forceSimulation<GraphNode, GraphEdge>([])
      .alphaDecay(0.05)
      .force("x", forceX<GraphNode>((n) => COLUMNS[n.kind] * this.w).strength(0.9))
      .force(
        "y",
        forceY<GraphNode>((n) => this.bandY(n)).strength((n) => (n.kind === "c" && this.bands.length > 1 ? 0.3 : 0.04)),
      )
      // channels carry their label above them: more room between them
      .force("collide", forceCollide<GraphNode>((n) => n.r + (n.kind === "c" ? 17 : 10)))
      .force("link", forceLink<GraphNode, GraphEdge>([]).strength(0.03))
      .stop();
    canvas.addEventListener("click", (ev) => {
      const rect = canvas.getBoundingClientRect();
      const hit = this.hit(ev.clientX - rect.left, ev.clientY - rect.top);
      if (hit) this.onSelect(hit.id);
    });
    canvas.addEventListener("mousemove", (ev) => {
      const rect = canvas.getBoundingClientRect();
      canvas.style.cursor = this.hit(ev.clientX - rect.left, ev.clientY - rect.top) ? "pointer" : "default";
    });
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
  }

  setVisible(visible: boolean): void {
    this.visible = visible;
    if (visible) {
      this.resize();
      this.kick();
    }
  }

  /** Replace the graph with one `$sys.flow` document's nodes and edges. */
  update(flow: Flow, labels: Map<string, string>): void {
    const keep = new Set<string>();
    let changed = false;
    const edges: GraphEdge[] = [];
    const node = (id: string): GraphNode => {
      keep.add(id);
      let n = this.nodes.get(id);
      if (!n) {
        const kind = kindOf(id);
        n = {
          id,
          kind,
          label: id,
          rate: 0,
          count: 1,
          others: id.slice(2).startsWith("*"),
          r: 5,
          owner: "",
          x: COLUMNS[kind] * this.w + (Math.random() - 0.5) * 20,
          y: HEIGHT / 2 + (Math.random() - 0.5) * HEIGHT * 0.6,
        };
        this.nodes.set(id, n);
        changed = true;
      }
      n.rate = 0;
      return n;
    };
    for (const e of flow.edges) {
      const source = node(e.src);
      const target = node(e.dst);
      edges.push({ source, target, rate: e.rate, count: e.count ?? 1, hop: e.hop ?? null });
    }
    const owners = new Map(flow.channels.map((c) => [c.ch, c.owner || flow.node]));
    const bands = [...new Set(owners.values())].filter((o) => o !== flow.node).sort();
    if (bands.length) bands.unshift(flow.node);
    if (bands.join() !== this.bands.join()) changed = true;
    this.bands = bands;
    for (const e of edges) {
      // a node's weight: what goes through it (what it sends, for publishers)
      if (e.source.kind === "p") e.source.rate += e.rate;
      e.target.rate += e.rate; // a channel: what its publishers send; a subscriber: what it gets
      if (e.target.others) e.target.count = Math.max(e.target.count, e.count);
    }
    for (const id of [...this.nodes.keys()]) {
      if (!keep.has(id)) {
        this.nodes.delete(id);
        changed = true;
      }
    }
    for (const n of this.nodes.values()) {
      n.r = radius(n.rate);
      n.label = labels.get(n.id) ?? n.id.slice(2);
      if (n.kind === "c") n.owner = owners.get(n.id.slice(2)) ?? "";
    }
    this.edges = edges;
    this.out.clear();
    for (const e of edges) {
      const list = this.out.get(e.source.id);
      if (list) list.push(e);
      else this.out.set(e.source.id, [e]);
    }
    this.dots = this.dots.filter((d) => this.nodes.get(d.edge.source.id) === d.edge.source && edges.includes(d.edge));
    this.sim.nodes([...this.nodes.values()]);
    (this.sim.force("link") as ReturnType<typeof forceLink<GraphNode, GraphEdge>>).links(edges);
    // Reheat only when nodes came or went: a steady graph stays still (and costs no
    // frames) while its rates and widths change in place.
    if (changed) this.sim.alpha(Math.max(this.sim.alpha(), 0.4));
    this.kick();
  }

  /** The layout has come to rest (a test hook: click a node once it stays put). */
  get settled(): boolean {
    return this.sim.alpha() <= this.sim.alphaMin();
  }

  /** A sampled message: a dot from its publisher to its channel, then to subscribers. */
  message(e: TailEntry): void {
    if (!this.visible || this.dots.length >= MAX_DOTS) return;
    const src = this.nodes.has("p:" + e.from) ? "p:" + e.from : "p:*";
    const dst = this.nodes.has("c:" + e.ch) ? "c:" + e.ch : "c:*";
    const edge = this.out.get(src)?.find((x) => x.target.id === dst);
    if (!edge) return;
    this.dots.push({ edge, start: performance.now(), fanout: dst !== "c:*" });
    this.kick();
  }

  select(id: string): void {
    this.selected = id;
    this.kick();
  }

  /** Where node `id` is drawn, in the page's CSS pixels (tests click there). */
  position(id: string): { x: number; y: number } | null {
    const n = this.nodes.get(id);
    if (!n || n.x === undefined || n.y === undefined) return null;
    const rect = this.canvas.getBoundingClientRect();
    return { x: rect.left + n.x, y: rect.top + n.y };
  }

  /** A node's band: its owner's (channels in a cluster), or the whole height. */
  private band(n: GraphNode): [number, number] {
    const i = n.kind === "c" ? this.bands.indexOf(n.owner) : -1;
    if (i < 0 || this.bands.length < 2) return [0, HEIGHT];
    const h = (HEIGHT - BAND_TOP) / this.bands.length;
    return [BAND_TOP + i * h, BAND_TOP + (i + 1) * h];
  }

  private bandY(n: GraphNode): number {
    const [top, bottom] = this.band(n);
    return (top + bottom) / 2;
  }

  private hit(x: number, y: number): GraphNode | null {
    let best: GraphNode | null = null;
    let bestD = Infinity;
    for (const n of this.nodes.values()) {
      const d = Math.hypot((n.x ?? 0) - x, (n.y ?? 0) - y);
      if (d <= n.r + 6 && d < bestD) {
        best = n;
        bestD = d;
      }
    }
    return best;
  }

  private resize(): void {
    const cssW = Math.max(320, Math.floor(this.canvas.clientWidth || 800));
    const dpr = window.devicePixelRatio || 1;
    if (cssW === this.w && dpr === this.dpr && this.canvas.width) return;
    this.w = cssW;
    this.dpr = dpr;
    this.canvas.width = Math.floor(cssW * dpr);
    this.canvas.height = Math.floor(HEIGHT * dpr);
    this.canvas.style.height = `${HEIGHT}px`;
    this.sim.alpha(Math.max(this.sim.alpha(), 0.3));
    this.kick();
  }

  private kick(): void {
    if (this.running || !this.visible) return;
    this.running = true;
    requestAnimationFrame(this.frame);
  }

  private readonly frame = (now: number): void => {
    this.running = false;
    if (!this.visible) return;
    const settling = this.sim.alpha() > this.sim.alphaMin();
    if (settling) this.sim.tick();
    this.clampY();
    this.draw(now);
    if (settling || this.dots.length) this.kick();
  };

  private clampY(): void {
    for (const n of this.nodes.values()) {
      const [top, bottom] = this.band(n);
      const y = n.y ?? 0;
      n.y = Math.min(bottom - n.r - 14, Math.max(top + n.r + 14, y));
    }
  }

  private draw(now: number): void {
    const ctx = this.ctx;
    this.frames++;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.w, HEIGHT);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    // column heads
    ctx.fillStyle = "#8a94a6";
    ctx.textAlign = "center";
    ctx.fillText("publishers", COLUMNS.p * this.w, 10);
    ctx.fillText("channels", COLUMNS.c * this.w, 10);
    ctx.fillText("subscribers", COLUMNS.s * this.w, 10);
    this.drawBands();
    const sel = this.selected;
    for (const e of this.edges) {
      const near = sel && (e.source.id === sel || e.target.id === sel);
      ctx.strokeStyle = COLOURS[e.source.kind];
      ctx.globalAlpha = near ? 0.85 : sel ? 0.15 : 0.4;
      ctx.lineWidth = width(e.rate);
      ctx.setLineDash(e.hop ? CROSS_DASH : e.target.others || e.source.others ? [2, 4] : []);
      this.curve(e);
      ctx.stroke();
    }
    ctx.setLineDash([]);
    ctx.globalAlpha = 1;
    // dots: advance, draw, hand on
    const next: Dot[] = [];
    ctx.fillStyle = "#ffd479";
    for (const d of this.dots) {
      const t = (now - d.start) / HOP_MS;
      if (t >= 1) {
        if (d.fanout) {
          for (const e of (this.out.get(d.edge.target.id) ?? []).slice(0, FANOUT_DOTS)) {
            if (next.length < MAX_DOTS) next.push({ edge: e, start: now, fanout: false });
          }
        }
        continue;
      }
      const [x, y] = this.along(d.edge, Math.max(0, t));
      ctx.beginPath();
      ctx.arc(x, y, 2.6, 0, Math.PI * 2);
      ctx.fill();
      next.push(d);
    }
    this.dots = next;
    // nodes and labels
    for (const n of this.nodes.values()) {
      const x = n.x ?? 0;
      const y = n.y ?? 0;
      ctx.globalAlpha = sel && n.id !== sel && !this.adjacent(n.id, sel) ? 0.35 : 1;
      ctx.fillStyle = n.others ? "#39424f" : n.kind === "c" && this.bands.length > 1 ? this.colourOf(n.owner) : COLOURS[n.kind];
      ctx.beginPath();
      ctx.arc(x, y, n.r, 0, Math.PI * 2);
      ctx.fill();
      if (n.id === sel) {
        ctx.strokeStyle = "#ffffff";
        ctx.lineWidth = 2;
        ctx.stroke();
      }
      ctx.fillStyle = n.others ? "#8a94a6" : "#e6ebf2";
      const label = n.label.length > 26 ? n.label.slice(0, 25) + "…" : n.label;
      if (n.kind === "p") {
        ctx.textAlign = "right";
        ctx.fillText(label, x - n.r - 6, y);
      } else if (n.kind === "s") {
        ctx.textAlign = "left";
        ctx.fillText(label, x + n.r + 6, y);
      } else {
        ctx.textAlign = "center";
        ctx.fillText(label, x, y - n.r - 8);
      }
    }
    ctx.globalAlpha = 1;
  }

  /** The colour of an owner node's band. */
  colourOf(owner: string): string {
    return nodeColour(Math.max(0, this.bands.indexOf(owner)));
  }

  /** One labelled band per owner node behind the channel column. */
  private drawBands(): void {
    if (this.bands.length < 2) return;
    const ctx = this.ctx;
    const x = (COLUMNS.c - 0.13) * this.w;
    const w = 0.26 * this.w;
    ctx.textAlign = "left";
    this.bands.forEach((owner, i) => {
      const [top, bottom] = this.band({ kind: "c", owner } as GraphNode);
      ctx.globalAlpha = 0.08;
      ctx.fillStyle = nodeColour(i);
      ctx.fillRect(x, top + 2, w, bottom - top - 4);
      ctx.globalAlpha = 0.9;
      ctx.fillText(i === 0 ? `${owner} (this node)` : `owned by ${owner}`, x + 6, top + 12);
    });
    ctx.globalAlpha = 1;
  }

  private adjacent(a: string, b: string): boolean {
    return this.edges.some((e) => (e.source.id === a && e.target.id === b) || (e.source.id === b && e.target.id === a));
  }

  private curve(e: GraphEdge): void {
    const ctx = this.ctx;
    const x1 = e.source.x ?? 0;
    const y1 = e.source.y ?? 0;
    const x2 = e.target.x ?? 0;
    const y2 = e.target.y ?? 0;
    const mx = (x1 + x2) / 2;
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.bezierCurveTo(mx, y1, mx, y2, x2, y2);
  }

  /** The point at `t` (0..1) on an edge's curve. */
  private along(e: GraphEdge, t: number): [number, number] {
    const x1 = e.source.x ?? 0;
    const y1 = e.source.y ?? 0;
    const x2 = e.target.x ?? 0;
    const y2 = e.target.y ?? 0;
    const mx = (x1 + x2) / 2;
    const u = 1 - t;
    const x = u * u * u * x1 + 3 * u * u * t * mx + 3 * u * t * t * mx + t * t * t * x2;
    const y = u * u * u * y1 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t * t * t * y2;
    return [x, y];
  }
}
