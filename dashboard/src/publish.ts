/**
 * The "publish a test message" box: validates channel and JSON locally, publishes the JSON
 * text verbatim through the client and shows the durable ack (seq) or the error.
 */

import { FerryError } from "ferry-client";
import { setAttr, setText } from "./dom";
import { CHANNEL_RE, validateJson } from "./protocol";

type ResultState = "ok" | "error" | "pending" | "";

export class PublishBox {
  private nextId = 1;
  private pendingId = "";

  constructor(
    private readonly channel: HTMLInputElement,
    private readonly data: HTMLTextAreaElement,
    private readonly result: HTMLElement,
    private readonly publish: (ch: string, jsonText: string) => Promise<{ seq: number; dup: boolean }>,
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
    this.pendingId = id;
    this.show("pending", `Sent ${id}, waiting for the ack…`);
    // While the relay is unreachable the client queues it (10 s deadline) and resends it
    // with the same mid after a reconnect: one message, whatever happened to the socket.
    this.publish(ch, this.data.value).then(
      ({ seq }) => {
        if (id !== this.pendingId) return;
        this.show("ok", `Acked: ${ch} seq ${seq}`);
        setAttr(this.result, "data-seq", String(seq));
      },
      (e: unknown) => {
        if (id !== this.pendingId) return;
        if (e instanceof FerryError && e.code === "timeout") this.show("error", `No answer for ${id} after 10 s.`);
        else if (e instanceof FerryError) this.show("error", `Error ${e.code}${e.message && e.message !== e.code ? `: ${e.message}` : ""}`);
        else this.show("error", String(e));
      },
    );
  }

  private show(state: ResultState, text: string): void {
    setText(this.result, text);
    setAttr(this.result, "data-state", state);
    setAttr(this.result, "data-seq", null);
  }
}
