"""Plain HTTP at the adapter: long paths (414/404, never a 500 or a traceback), HEAD and
other methods, fixed short error bodies, quiet rate-limited logs of client mistakes, and
the dashboard served from an in-memory cache filled off the loop with aiofiles."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.accept import MAX_HEAD, MAX_TARGET
from core.guard import PeerLog
from core.http import VERSION
from tests.core.adapter_raw import HttpAnswer, http_raw, upgrade_request
from tests.helpers import UNIT, Relay, ServeProcess, StartRelay


def _get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One real `ferry serve` (uvloop) with a small dashboard directory, logging at info."""
    tmp = tmp_path_factory.mktemp("serve")
    dashboard = tmp / "dist"
    (dashboard / "assets").mkdir(parents=True)
    (dashboard / "index.html").write_text("<!doctype html><title>ferry</title>")
    (dashboard / "assets" / "app-1234.js").write_text("console.log(1)")
    server = ServeProcess(
        {
            "FERRY_DURABILITY": "memory",
            "FERRY_LOG_LEVEL": "info",
            "FERRY_DASHBOARD_DIR": str(dashboard),
        }
    )
    server.start(tmp / "serve.log")
    try:
        server.wait_healthy()
        yield server
    finally:
        server.kill()


async def _ask(serve: ServeProcess, request: bytes) -> HttpAnswer:
    return await http_raw(serve.port, request)


@pytest.mark.parametrize(
    "path",
    [
        "/" + "a" * 300,  # one name over NAME_MAX: used to be a 500 with an ERROR traceback
        "/assets/" + "b" * 300 + ".js",
        "/" + ("x" * 255 + "/") * 20,
        "/%00/../../etc/passwd",
        "/" + "a" * (MAX_TARGET - 1),
    ],
    ids=["name-over-NAME_MAX", "asset-over-NAME_MAX", "deep", "odd", "at-the-limit"],
)
async def test_long_or_odd_paths_are_404(serve: ServeProcess, path: str) -> None:
    answer = await _ask(serve, _get(path))
    assert answer.status == 404
    assert answer.body == b"404 Not Found\n"


async def test_a_target_over_the_limit_is_414(serve: ServeProcess) -> None:
    answer = await _ask(serve, _get("/" + "a" * MAX_TARGET))
    assert answer.status == 414
    assert answer.body == f"414 URI Too Long: at most {MAX_TARGET} bytes\n".encode()
    assert "Traceback" not in serve.output() and " ERROR " not in serve.output()


async def test_a_head_over_the_limit_is_431(serve: ServeProcess) -> None:
    answer = await _ask(serve, _get("/healthz", extra="X-Pad: " + "p" * MAX_HEAD + "\r\n"))
    assert answer.status == 431


async def test_head_is_answered_like_get_without_a_body(serve: ServeProcess) -> None:
    healthz = len(f"ok {VERSION} unknown\n")
    for path, length in [
        ("/healthz", healthz),
        ("/readyz", 6),
        ("/", 35),
        ("/assets/app-1234.js", 14),
    ]:
        get = await _ask(serve, _get(path))
        head = await _ask(serve, _get(path, "HEAD"))
        assert head.status == get.status == 200, path
        assert head.body == b"", path
        assert head.headers == get.headers, path
        assert int(head.headers["content-length"]) == len(get.body) == length, path
    metrics = await _ask(serve, _get("/metrics", "HEAD"))
    assert metrics.status == 200 and metrics.body == b""
    missing = await _ask(serve, _get("/nope", "HEAD"))
    assert missing.status == 404 and missing.body == b""


async def test_other_methods_are_405(serve: ServeProcess) -> None:
    answer = await _ask(serve, _get("/healthz", "DELETE"))
    assert (answer.status, answer.headers["allow"]) == (405, "GET, HEAD")
    answer = await _ask(serve, _get("/ws", "HEAD"))
    assert (answer.status, answer.headers["allow"]) == (405, "GET")
    answer = await _ask(serve, _get("/ws?token=x", "POST"))
    assert (answer.status, answer.headers["allow"]) == (405, "GET")


BAD = [
    (b"GET /x HTTP/1.1 extra-" + b"\xff" * 50 + b"\r\n\r\n", "three-part request line"),
    (b"GET  HTTP/1.1\r\n\r\n", "empty target"),
    (b"GET /x HTTP/9.9\r\n\r\n", "version"),
    (b"GET x HTTP/1.1\r\n\r\n", "not origin-form"),
    (b"GET /healthz HTTP/1.1\r\nno colon here " + b"\xfe" * 40 + b"\r\n\r\n", "header"),
    (b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "body"),
    (b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "chunked"),
]


@pytest.mark.parametrize(("request_bytes", "why"), BAD, ids=[w for _, w in BAD])
async def test_bad_requests_get_a_fixed_short_body(
    serve: ServeProcess, request_bytes: bytes, why: str
) -> None:
    answer = await _ask(serve, request_bytes)
    assert answer.status == 400
    assert answer.body == b"400 Bad Request\n"  # picows echoed the raw request as a bytes repr


@pytest.mark.parametrize(
    "headers",
    [
        "",  # plain GET /ws
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: <not-base64-" + "k" * 40 + ">\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 99\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ],
    ids=["no-upgrade", "bad-key", "bad-version"],
)
async def test_a_bad_upgrade_gets_a_fixed_short_body(serve: ServeProcess, headers: str) -> None:
    answer = await _ask(serve, _get("/ws", extra=headers))
    assert answer.status == 400
    assert answer.body == b"400 Bad Request: /ws expects a WebSocket upgrade\n"


async def test_client_mistakes_are_logged_at_info_and_rate_limited(serve: ServeProcess) -> None:
    before = serve.output()
    for _ in range(40):
        await _ask(serve, BAD[0][0])
        await _ask(serve, _get("/ws", "HEAD"))
    for _ in range(20):  # framing errors picows finds (unmasked frame) and logged at ERROR
        reader, writer = await asyncio.open_connection("127.0.0.1", serve.port)
        writer.write(upgrade_request())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"\x81\x05hello")
        await asyncio.wait_for(reader.read(), UNIT)
        writer.close()
    answer = await _ask(serve, _get("/healthz"))  # the server is fine
    assert answer.status == 200
    new = serve.output()[len(before) :]
    assert "Traceback" not in new
    for level in (" ERROR ", " WARNING ", " CRITICAL "):
        assert level not in new, new
    peer_lines = [line for line in new.splitlines() if " ferry.peer: " in line]
    assert 0 < len(peer_lines) <= 20  # a burst of 20 per 10 s
    assert all(" INFO " in line and len(line) < 500 for line in peer_lines)
    assert "\\xff" not in new  # nothing the client sent is echoed in the log either


async def test_picows_protocol_errors_are_info(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    """picows logs a client's framing error at ERROR on its own logger; ferry hands it a
    logger-like object that turns those into rate-limited INFO lines."""
    with caplog.at_level(logging.DEBUG):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(upgrade_request())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"\x81\x05hello")  # unmasked: RFC 6455 §5.1
        await asyncio.wait_for(reader.read(), UNIT)
        writer.close()
    parser = [r for r in caplog.records if "WS parser error" in r.getMessage()]
    assert [(r.name, r.levelno) for r in parser] == [("ferry.peer", logging.INFO)]
    assert not [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name != "ferry.server"
    ]
    # picows' per-connection chatter is debug only
    accepted = [r for r in caplog.records if "New connection accepted" in r.getMessage()]
    assert accepted and all(r.levelno == logging.DEBUG for r in accepted)


def test_peer_log_counts_what_it_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    peer = PeerLog(logging.getLogger("test.peer"), burst=3, window=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, "test.peer"):
        for i in range(10):
            peer.info("mistake %d %s", i, "x" * 1000)
        now[0] = 10.5
        peer.info("later")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert lines[0].startswith("mistake 0 ") and len(lines[0]) < 320
    assert lines[3] == "later (7 similar lines left out)"
    assert peer.suppressed == 7


# --- the in-memory dashboard ---------------------------------------------------------------


def _dashboard(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html>index")
    (root / "assets" / "index-abc.js").write_text("js();")
    (root / "assets" / "index-abc.css").write_text("b{}")
    (root / "logo.svg").write_text("<svg/>")
    (root / "data.bin").write_bytes(b"\0\1")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    return root


async def _fetch(port: int, path: str) -> HttpAnswer:
    return await http_raw(port, _get(path))


async def test_dashboard_is_served_from_memory_with_the_same_headers(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    root = _dashboard(tmp_path)
    relay = await start_relay(dashboard_dir=str(root))
    expected = {
        "/": ("text/html; charset=utf-8", "no-cache", b"<!doctype html>index"),
        "/index.html": ("text/html; charset=utf-8", "no-cache", b"<!doctype html>index"),
        "/assets/index-abc.js": (
            "text/javascript; charset=utf-8",
            "public, max-age=31536000, immutable",
            b"js();",
        ),
        "/assets/index-abc.css": (
            "text/css; charset=utf-8",
            "public, max-age=31536000, immutable",
            b"b{}",
        ),
        "/logo.svg": ("image/svg+xml; charset=utf-8", "no-cache", b"<svg/>"),
        "/data.bin": ("application/octet-stream", "no-cache", b"\0\1"),
        "/assets/../logo.svg": ("image/svg+xml; charset=utf-8", "no-cache", b"<svg/>"),
    }
    # Nothing is read at request time: change the files and the answers stay the same.
    for file in root.rglob("*"):
        if file.is_file():
            file.write_text("changed")
    for path, (kind, cache, body) in expected.items():
        answer = await _fetch(relay.port, path)
        assert answer.status == 200, path
        assert answer.headers["content-type"] == kind, path
        assert answer.headers["cache-control"] == cache, path
        assert answer.body == body, path
    for path in ("/link.txt", "/../secret.txt", "/assets/", "/assets", "/nope.js"):
        assert (await _fetch(relay.port, path)).status == 404, path


async def test_dashboard_is_read_off_the_loop(start_relay: StartRelay, tmp_path: Path) -> None:
    root = _dashboard(tmp_path)
    opened: list[tuple[str, bool]] = []
    main = threading.get_ident()
    active = [True]

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if active[0] and event in ("open", "os.scandir", "os.listdir"):
            path = str(args[0]) if args else ""
            if path.startswith(str(root)):
                opened.append((path, threading.get_ident() == main))

    sys.addaudithook(audit)
    try:
        relay = await start_relay(dashboard_dir=str(root))
    finally:
        active[0] = False
    assert len(relay.hub.http.files) == 5  # the symlink out of the root is not served
    assert opened and not [path for path, on_loop in opened if on_loop], opened


async def test_dashboard_cache_is_bounded(start_relay: StartRelay, tmp_path: Path) -> None:
    root = _dashboard(tmp_path)
    (root / "assets" / "big.js").write_bytes(b"x" * 5000)
    relay = await start_relay(dashboard_dir=str(root), dashboard_max_bytes=2000)
    http = relay.hub.http
    assert "index.html" in http.files and "assets/big.js" not in http.files
    assert http.cached_bytes <= 2000
    assert (await _fetch(relay.port, "/assets/big.js")).status == 404
    assert (await _fetch(relay.port, "/")).status == 200


async def test_an_unreadable_file_is_a_404(
    start_relay: StartRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _dashboard(tmp_path)
    import aiofiles

    real_open = aiofiles.open

    def failing_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("logo.svg"):
            raise OSError(36, "File name too long")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("core.http.aiofiles.open", failing_open)
    relay = await start_relay(dashboard_dir=str(root))
    assert (await _fetch(relay.port, "/logo.svg")).status == 404
    assert (await _fetch(relay.port, "/")).status == 200


async def test_dashboard_not_built(start_relay: StartRelay, tmp_path: Path) -> None:
    relay = await start_relay(dashboard_dir=str(tmp_path / "missing"))
    answer = await _fetch(relay.port, "/")
    assert answer.status == 200 and b"make dashboard" in answer.body
    assert (await _fetch(relay.port, "/assets/x.js")).status == 404
