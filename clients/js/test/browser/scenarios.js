// The client's scenarios in a page (tests/clients/js/test_browser.py): loaded after the
// client bundle (an IIFE exposing FerryClient), each sets window.progress as it goes and
// resolves with its report.
/* global FerryClient */
(() => {
  const { Ferry } = FerryClient;
  const fast = { baseMs: 50, capMs: 500, goingAwayMs: 500 };
  const until = async (pred, what, ms = 30_000) => {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  window.progress = { acked: 0, states: [] };
  const client = (name, options = {}) =>
    new Ferry(window.RELAY, {
      backoff: fast,
      onState: (s, info) => window.progress.states.push([name, s, info.code ?? null]),
      ...options,
    });

  // Crash mid-stream, as clients/js/test/integration/crash.mjs does it in Node.
  // At each of `killAt` resolved publishes the page asks the test's kill endpoint to
  // SIGKILL the relay (without waiting for the answer: the stream goes on).
  window.crash = async (n, windowSize, ch, killAt = [], killUrl = "") => {
    const sub = client("sub");
    const pub = client("pub", { publishTimeoutMs: 120_000 });
    const received = [];
    const gaps = [];
    const s = sub.subscribe(ch, {
      onMessage: (m) => received.push([m.seq, m.data.i, m.data.pad.length]),
      onGap: (g) => gaps.push(g),
    });
    await sub.connect();
    await s.ready();
    await pub.connect();
    window.progress.ready = true;
    const results = new Array(n).fill(null);
    let resolvedTwice = 0;
    let inflight = 0;
    let maxInflight = 0;
    const all = [];
    for (let i = 0; i < n; i++) {
      while (inflight >= windowSize) await new Promise((r) => setTimeout(r, 1));
      inflight++;
      maxInflight = Math.max(maxInflight, inflight);
      const settle = (r) => {
        if (results[i] !== null) resolvedTwice++;
        results[i] = r;
        inflight--;
        window.progress.acked++;
        if (killAt.includes(window.progress.acked)) void fetch(killUrl, { mode: "no-cors", cache: "no-store" });
      };
      all.push(pub.publish(ch, { i, pad: "x".repeat(i % 50) }).then((r) => settle([r.seq, r.dup]), (e) => settle(["error", e.code])));
    }
    await Promise.all(all);
    await until(() => received.length >= n, `${n} deliveries`);
    await pub.publish(ch, { i: -1, pad: "" });
    await until(() => received.some(([, i]) => i === -1), "the closing marker");
    await Promise.all([sub.close(), pub.close()]);
    const readies = (who) => window.progress.states.filter(([c, st]) => c === who && st === "ready").length;
    return { results, received, gaps, resolvedTwice, maxInflight, reconnects: { sub: readies("sub") - 1, pub: readies("pub") - 1 } };
  };

  // Offline → online: the backoff is a minute, so only the browser's `online` event can
  // bring the clients back within the test's deadline.
  window.offline = { sub: null, pub: null, received: [], gaps: [], results: [] };
  window.offlineStart = async (ch) => {
    const o = window.offline;
    const slow = { backoff: { baseMs: 60_000, capMs: 60_000 }, pingIntervalMs: 300, silenceMs: 1_500 };
    o.sub = client("sub", slow);
    o.pub = client("pub", slow);
    const s = o.sub.subscribe(ch, { onMessage: (m) => o.received.push([m.seq, m.data]), onGap: (g) => o.gaps.push(g) });
    await o.sub.connect();
    await s.ready();
    await o.pub.connect();
    for (let i = 0; i < 3; i++) o.results.push((await o.pub.publish(ch, `page-${i}`)).seq);
    await until(() => o.received.length === 3, "3 live messages");
  };
  window.offlinePublish = (ch, count) => {
    const o = window.offline;
    o.pending = Array.from({ length: count }, (_, i) => o.pub.publish(ch, `queued-${i}`).then((r) => r.seq, (e) => e.code));
    return [o.sub.state, o.pub.state];
  };
  window.offlineFinish = async (total) => {
    const o = window.offline;
    const queued = await Promise.all(o.pending);
    await until(() => o.received.length >= total, `${total} deliveries`);
    await Promise.all([o.sub.close(), o.pub.close()]);
    return { results: o.results, queued, received: o.received, gaps: o.gaps, states: window.progress.states };
  };
})();
