"""Fixtures for the browser end-to-end tests.

Debian's /usr/bin/chromium driven by Playwright's sync API (so every test here is a plain
function: the sync API must not run inside an event loop), `ferry serve` as a child
process serving the built dashboard, a private MariaDB, and an asyncio loop in a thread
for the websockets clients a test runs beside the page. Under CI a missing browser,
Playwright, dashboard build or MariaDB fails the test; elsewhere it skips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e.support import ADMIN, CHROMIUM, CHROMIUM_ARGS, DIST, MS, LoopThread, ServeDashboard
from tests.helpers import ServeProcess, unavailable
from tests.mariadb import PrivateMariaDB, require_mariadb

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"playwright is not installed ({exc}); pip install -e '.[dev]'")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    if not (DIST / "index.html").is_file():
        unavailable(f"{DIST} is not built: scripts/bootstrap.sh dashboard")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=MS * 4)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh profile per test: empty localStorage, so no token carries over."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(MS * 2)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeDashboard]:
    """Start `ferry serve` children (WAL in tmp_path); killed at teardown, logs printed."""
    started: list[ServeProcess] = []

    def start(db_url: str | None = None, **env: str) -> ServeProcess:
        n = len(started)
        server = ServeProcess(
            {
                "FERRY_WAL_DIR": str(tmp_path / f"wal{n}"),
                "FERRY_DB_URL": db_url or f"sqlite:///{tmp_path / f'ferry{n}.db'}",
                "FERRY_ADMIN_TOKEN": ADMIN,
                "FERRY_STATS_INTERVAL": "0.5",
                "FERRY_DASHBOARD_DIR": str(DIST),
                **env,
            }
        )
        started.append(server)
        server.start(tmp_path / f"serve{n}.log")
        server.wait_healthy()
        return server

    yield start
    for server in started:
        server.kill()
        # shown by pytest only when the test failed
        print(f"--- ferry serve log ({server.log_path}) ---\n{server.output()[-4000:]}")


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    db = require_mariadb(tmp_path / "mariadb")
    yield db
    db.stop()


@pytest.fixture
def aio() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()
