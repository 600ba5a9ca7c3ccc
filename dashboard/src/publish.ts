/**
 * The "publish a test message" box: validates channel and JSON locally, sends a `pub`
 * with a `dash-N` id, and shows the matching `ack` (seq) or `error` frame.
 */

import { setAttr, setText } from "./dom";
import { CHANNEL_RE, pubFrame, validateJson } from "./protocol";

const ANSWER_TIMEOUT_MS = 10_000;

type ResultState = "ok" | "error" | "pending" | "";

export class PublishBox {
  private nextId = 1;
  private pendingId = "";
  private timer = 0;

  constructor(
    private readonly channel: HTMLInputElement,
    private readonly data: HTMLTextAreaElement,
    private readonly result: HTMLElement,
    private readonly send: (frame: string) => boolean,
  ) {}

  submit(): void {
    const ch = this.channel.value.trim();
    if (!CHANNEL_RE.test(ch)) {
      this.show("error", "Channel must be 1–200 characters of A–Z a–z 0–9 _ . : @ $ -");
      return;
    }
    const problem = validateJson(this.data.value);
    if (problem) {
      this.show("error", `Invalid JSON: ${problem}`);
      return;
    }
    const id = `dash-${this.nextId++}`;
    if (!this.send(pubFrame(ch, this.data.value, id))) {
      this.show("error", "Not connected to the relay.");
      return;
    }
    this.pendingId = id;
    this.show("pending", `Sent ${id}, waiting for the ack…`);
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => {
      if (this.pendingId === id) this.show("error", `No answer for ${id} after ${ANSWER_TIMEOUT_MS / 1000} s.`);
    }, ANSWER_TIMEOUT_MS);
  }

  /** True when this id is one of ours (so the frame is a publish result). */
  owns(id: string | null | undefined): boolean {
    return typeof id === "string" && id.startsWith("dash-");
  }

  ack(id: string, ch: string, seq: number): void {
    if (id !== this.pendingId) return;
    this.done();
    this.show("ok", `Acked: ${ch} seq ${seq}`);
    setAttr(this.result, "data-seq", String(seq));
  }

  error(id: string, code: string, reason: string): void {
    if (id !== this.pendingId) return;
    this.done();
    this.show("error", `Error ${code}${reason ? `: ${reason}` : ""}`);
  }

  /** The socket went away with a publish in flight: its fate is unknown. */
  disconnected(): void {
    if (!this.pendingId) return;
    this.show("error", `Connection lost before ${this.pendingId} was acknowledged.`);
    this.done();
  }

  private done(): void {
    this.pendingId = "";
    window.clearTimeout(this.timer);
  }

  private show(state: ResultState, text: string): void {
    setText(this.result, text);
    setAttr(this.result, "data-state", state);
    setAttr(this.result, "data-seq", null);
  }
}
