"""The JS client in headless Chromium (Playwright): crash mid-stream, and offline → online.

The page is the relay's own origin (/healthz) with the client bundled into one script
(esbuild, IIFE) and clients/js/test/browser/scenarios.js beside it. Playwright's sync API
owns the thread, so these are plain functions; the relay is a `ferry serve` child."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from websockets.sync.client import connect

from tests.clients.js.conftest import Serve
from tests.clients.js.node import CLIENT, node_binary
from tests.clients.js.test_crash import check_stream
from tests.e2e.support import CHROMIUM, CHROMIUM_ARGS
from tests.helpers import UNIT, ServeProcess, unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

MS = UNIT * 1000
N = 3000
ROUNDS = 3


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node_binary()
    out = tmp_path_factory.mktemp("bundle") / "ferry-client.iife.js"
    esbuild = CLIENT / "node_modules" / ".bin" / "esbuild"
    subprocess.run(
        [str(esbuild), "dist/index.js", "--bundle", "--format=iife", "--global-name=FerryClient",
         f"--outfile={out}"],
        cwd=CLIENT, check=True, capture_output=True, timeout=UNIT * 4,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"playwright is not installed ({exc}); pip install -e '.[dev]'")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=MS * 4)
        yield browser
        browser.close()


def open_page(browser: Browser, bundle: Path, http: str, url: str) -> Page:
    context = browser.new_context()
    context.set_default_timeout(MS * 2)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(http + "/healthz")
    page.evaluate("url => { window.RELAY = url; }", url)
    page.add_script_tag(path=str(bundle))
    page.add_script_tag(path=str(CLIENT / "test" / "browser" / "scenarios.js"))
    assert page.evaluate("typeof window.crash") == "function", errors
    return page


class Killer:
    """An HTTP endpoint the page calls at its chosen moments: each GET SIGKILLs the relay
    and starts it again on the same WAL and port (the page does not wait for it)."""

    def __init__(self, serve: Serve, server: ServeProcess) -> None:
        self.server = server
        self.kills = 0
        self.failures: list[str] = []
        killer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    killer.server.signal(signal.SIGKILL)
                    assert killer.server.wait() == -signal.SIGKILL
                    killer.kills += 1
                    killer.server = serve(killer.server.port)
                except Exception as exc:  # reported by the test, not lost in this thread
                    killer.failures.append(repr(exc))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/kill"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_crash_mid_stream_in_chromium(browser: Browser, bundle: Path, serve: Serve) -> None:
    rng = random.Random()
    server = serve()
    page = open_page(browser, bundle, server.http, server.url)
    # a random point in each third of the stream
    kill_at = [
        rng.randrange(r * N // ROUNDS + 100, (r + 1) * N // ROUNDS - 100) for r in range(ROUNDS)
    ]
    killer = Killer(serve, server)
    try:
        page.evaluate(
            """args => { window.crash(...args).then(
                 (r) => { window.report = r; }, (e) => { window.report = { error: String(e) }; }); }""",
            [N, 100, "crash.b", kill_at, killer.url],
        )
        page.wait_for_function("() => window.report !== undefined", timeout=MS * 12)
    finally:
        killer.close()
    assert killer.failures == []
    assert killer.kills == ROUNDS
    report: dict[str, Any] = page.evaluate("window.report")
    assert "error" not in report, report
    check_stream(report, N)
    assert report["reconnects"]["pub"] >= ROUNDS and report["reconnects"]["sub"] >= 1
    print(
        f"chromium crash mid-stream: {ROUNDS} rounds (kills after {kill_at} resolved), {N} messages"
    )


def test_offline_then_online_in_chromium(browser: Browser, bundle: Path, serve: Serve) -> None:
    server = serve()
    page = open_page(browser, bundle, server.http, server.url)
    page.evaluate("ch => window.offlineStart(ch)", "off.b")
    page.context.set_offline(True)
    # both clients notice the dead link (silence) and wait out a one-minute backoff
    page.wait_for_function(
        "() => ['sub', 'pub'].every(c => window.offline[c].state === 'waiting')", timeout=MS
    )
    assert page.evaluate("n => window.offlinePublish('off.b', n)", 10) == ["waiting", "waiting"]
    with connect(server.url, open_timeout=UNIT) as other:  # the relay itself is up
        json.loads(other.recv(timeout=UNIT))
        for i in range(5):
            other.send(json.dumps({"op": "pub", "ch": "off.b", "data": f"other-{i}", "id": i}))
            assert json.loads(other.recv(timeout=UNIT))["seq"] == 4 + i
    page.context.set_offline(False)  # `online`: both reconnect now, not in a minute
    report = page.evaluate("n => window.offlineFinish(n)", 18)
    assert report["results"] == [1, 2, 3]
    assert report["queued"] == list(range(9, 19)), "the queue went out in order, once each"
    expected = [
        *(f"page-{i}" for i in range(3)),
        *(f"other-{i}" for i in range(5)),
        *(f"queued-{i}" for i in range(10)),
    ]
    assert report["received"] == [[seq, data] for seq, data in enumerate(expected, 1)]
    assert report["gaps"] == []
    assert ["sub", "waiting", 4000] in report["states"], "silence took the link down"
