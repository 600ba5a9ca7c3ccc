"""What the browser tests share: the dashboard as a page object over its data-testid
hooks, the steady websockets traffic a test runs beside it, page-error capture, and an
asyncio loop in a thread (Playwright's sync API owns the main thread)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from tests.helpers import ROOT, UNIT, Client, ServeProcess

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Locator, Page

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DIST = ROOT / "dashboard" / "dist"
ARTIFACTS = ROOT / "artifacts"
ADMIN = "e2e-admin-token-0123456789abcdef0123"
# Playwright counts in milliseconds; every deadline still derives from UNIT.
MS = UNIT * 1000


class ServeDashboard(Protocol):
    """The `serve` fixture of these tests: a healthy `ferry serve` child serving the built
    dashboard, on `db_url` (default: its own SQLite file), with these FERRY_* variables
    over the fixture's; all are killed after the test."""

    def __call__(self, db_url: str | None = None, **env: str) -> ServeProcess: ...


# JS: how many pixels of colour `rgb` (opaque, within a tolerance) a chart's canvas has,
# and how far apart vertically they are. A series at a constant 0 is a flat line along the
# bottom (a span of a few pixels); a series that rose spans a good part of the plot.
CANVAS_COLOUR_SPAN = """([testid, rgb]) => {
  const c = document.querySelector(`[data-testid="${testid}"] canvas`);
  if (!c || !c.width || !c.height) return { pixels: 0, span: 0 };
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let pixels = 0, top = c.height, bottom = -1;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] < 200) continue;
    if (Math.abs(d[i] - rgb[0]) > 40 || Math.abs(d[i + 1] - rgb[1]) > 40
        || Math.abs(d[i + 2] - rgb[2]) > 40) continue;
    pixels++;
    const y = Math.floor(i / 4 / c.width);
    top = Math.min(top, y);
    bottom = Math.max(bottom, y);
  }
  return { pixels, span: bottom < 0 ? 0 : bottom - top };
}"""

# JS: remember every value the database badge shows (the page may pass through a state
# between two polls of ours, e.g. "recovering").
RECORD_DB_STATES = """() => {
  const el = document.querySelector('[data-testid="db-state"]');
  window.__dbStates = [el.dataset.state];
  new MutationObserver(() => {
    const s = el.dataset.state;
    if (window.__dbStates[window.__dbStates.length - 1] !== s) window.__dbStates.push(s);
  }).observe(el, { attributes: true, attributeFilter: ["data-state"] });
}"""


class Dashboard:
    """One dashboard page pointed at one `ferry serve`."""

    def __init__(self, page: Page, server: ServeProcess) -> None:
        self.page = page
        self.server = server
        self.errors = PageErrors(page)

    def by(self, testid: str) -> Locator:
        return self.page.get_by_test_id(testid)

    def open(self) -> None:
        self.page.goto(self.server.http + "/", wait_until="load")

    def save_settings(self, token: str) -> None:
        self.by("admin-token").fill(token)
        self.by("save-settings").click()

    def stats_count(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.statsCount || 0)"))

    def wait(self, expression: str, what: str, arg: Any = None, timeout: float = UNIT) -> Any:
        """Wait until the JS `expression` (a function of `arg`) is truthy; a clear failure
        message with the page's state when the deadline passes."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            return self.page.wait_for_function(expression, arg=arg, timeout=timeout * 1000)
        except PlaywrightTimeout:
            raise AssertionError(
                f"timed out after {timeout:.1f}s waiting for {what}; page: {self.snapshot()}"
            ) from None

    def wait_stats(self, at_least: int, timeout: float = UNIT) -> None:
        self.wait(
            "n => Number(document.body.dataset.statsCount || 0) >= n",
            f"{at_least} $sys.stats messages on the page",
            at_least,
            timeout,
        )

    def wait_value(self, testid: str, op: str, number: float, timeout: float = UNIT) -> None:
        """Wait until `data-value` of `testid` compares `op` (a JS operator) to `number`."""
        self.wait(
            f"""([id, n]) => {{
                const raw = document.querySelector(`[data-testid="${{id}}"]`)?.dataset.value;
                return raw !== undefined && raw !== "" && Number(raw) {op} n;
            }}""",
            f"{testid} {op} {number}",
            [testid, number],
            timeout,
        )

    def snapshot(self) -> dict[str, Any]:
        """The headline state, for failure messages."""
        try:
            state: dict[str, Any] = self.page.evaluate(
                """() => {
                  const q = (id) => document.querySelector(`[data-testid="${id}"]`);
                  const pick = (id) => ({ text: q(id)?.textContent, ...q(id)?.dataset });
                  return {
                    stats: document.body.dataset.statsCount,
                    conn: pick("conn-state"), banner: pick("banner-text"),
                    detail: pick("banner-detail"), auth: q("auth-error")?.hidden ? null
                      : q("auth-error")?.textContent.trim(),
                    msgsIn: pick("stat-msgs-in"), db: pick("db-state"),
                    dbError: pick("db-error"), dbLag: pick("db-lag"), walHead: pick("wal-head"),
                  };
                }"""
            )
        except Exception as exc:  # the page itself may be the problem
            return {"error": repr(exc)}
        return state


class Traffic:
    """One publisher publishing steadily round-robin to `channels` (with ids; acks are
    counted) and one subscriber to all of them, so the relay both logs and delivers."""

    def __init__(self, url: str, channels: tuple[str, ...], rate: float) -> None:
        self.url = url
        self.channels = channels
        self.rate = rate
        self.acked = 0
        self.delivered = 0
        self.errors: list[Any] = []  # error frames, and any client task that died
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._clients: list[Client] = []

    async def start(self) -> None:
        pub = await Client.connect(self.url, user="e2e-pub")
        sub = await Client.connect(self.url, user="e2e-sub")
        self._clients = [pub, sub]
        for ch in self.channels:
            await sub.sub(ch)
        self._tasks = [
            asyncio.create_task(self._publish(pub)),
            asyncio.create_task(self._read_publisher(pub)),
            asyncio.create_task(self._read_subscriber(sub)),
        ]

    async def _publish(self, pub: Client) -> None:
        for ch in itertools.cycle(self.channels):
            n = next(self._ids)
            await pub.pub(ch, {"n": n, "steady": True}, f"s-{n}")
            await asyncio.sleep(1.0 / self.rate)  # pacing, not waiting for anything

    async def _read_publisher(self, pub: Client) -> None:
        async for raw in pub.ws:
            frame = json.loads(raw)
            if frame["op"] == "ack":
                self.acked += 1
            elif frame["op"] == "error":
                self.errors.append(frame)
            waiter = self._waiting.pop(str(frame.get("id")), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)

    async def _read_subscriber(self, sub: Client) -> None:
        async for raw in sub.ws:
            if json.loads(raw)["op"] == "msg":
                self.delivered += 1

    async def publish(self, ch: str, data: Any) -> dict[str, Any]:
        """Publish one message on the steady connection; return its ack (or error)."""
        msg_id = f"m-{next(self._ids)}"
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = waiter
        await self._clients[0].pub(ch, data, msg_id)
        return await asyncio.wait_for(waiter, UNIT)

    async def stop(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                self.errors.append(repr(task.exception()))
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self._clients:
            await client.close()


async def admin_stats(url: str, count: int) -> list[dict[str, Any]]:
    """The next `count` `$sys.stats` documents, received as the admin (from outside the
    browser: waiting this way costs the page nothing)."""
    client = await Client.connect(url, token=ADMIN)
    try:
        await client.sub("$sys.stats")
        docs: list[dict[str, Any]] = []
        while len(docs) < count:
            frame = await client.recv(UNIT)
            if frame["op"] == "msg" and frame["ch"] == "$sys.stats":
                docs.append(frame["data"])
        return docs
    finally:
        await client.close()


class PageErrors:
    """Uncaught exceptions and console errors of one page (asserted empty by the tests)."""

    def __init__(self, page: Page) -> None:
        self.uncaught: list[str] = []
        self.console: list[str] = []
        page.on("pageerror", lambda exc: self.uncaught.append(str(exc)))
        page.on("console", self._console)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.console.append(msg.text)

    def app_errors(self) -> list[str]:
        """Everything but the browser's own line for a refused WebSocket handshake."""
        return self.uncaught + [m for m in self.console if "WebSocket connection to" not in m]


class LoopThread:
    """An asyncio loop in a thread: the test's websockets clients run there while the main
    thread drives the browser with Playwright's sync API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="e2e-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = UNIT) -> T:
        """Run `coro` on the loop and wait for its result, at most `timeout` seconds."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(drain(), UNIT)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(UNIT)
            self.loop.close()
