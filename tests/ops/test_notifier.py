"""core/notifier.py against a real HTTP server on loopback (port 0).

The webhook server below speaks plain HTTP/1.1 and can answer, refuse or never answer.
The "loop stays responsive" tests make the webhook hang and then do real socket work on
the same loop while the POST is still in flight: no wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.notifier import CONTENT_LIMIT, DESCRIPTION_LIMIT, EVENTS, Notifier
from tests.helpers import UNIT, HttpReceiver

NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as the JSON document it is (its values untyped, as JSON's are)."""
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


class Webhook(HttpReceiver):
    """A Discord-like webhook on 127.0.0.1:0 that records POSTs and answers as told."""

    def __init__(self, answers: list[bytes] | None = None, *, hang: bool = False) -> None:
        super().__init__()
        self.answers = list(answers or [])
        self.hang = hang
        self.requests: list[Request] = []
        self.received: asyncio.Queue[Request] = asyncio.Queue()

    def url(self, path: str = "/api/webhooks/1/secret?wait=true") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> bytes | None:
        request = Request(method, target, headers, body)
        self.requests.append(request)
        self.received.put_nowait(request)
        if self.hang:
            return None
        return self.answers.pop(0) if self.answers else NO_CONTENT


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    server = Webhook()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def hanging_webhook() -> AsyncIterator[Webhook]:
    server = Webhook(hang=True)
    await server.start()
    yield server
    await server.close()


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = UNIT) -> None:
    """Poll the loop until `predicate()` holds; fail naming `what` after `timeout`."""
    step = 0.005
    for _ in range(int(timeout / step)):
        if predicate():
            return
        await asyncio.sleep(step)
    assert predicate(), f"not reached within {timeout} s: {what}"


def refused_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_posts_a_discord_compatible_payload(webhook: Webhook) -> None:
    notifier = Notifier(webhook.url(), node_id="node-a", min_interval_s=0)
    notifier.start()
    notifier.notify("start", "ferry 0.1.0 listening on :8080")
    request = await asyncio.wait_for(webhook.received.get(), UNIT)
    await eventually(lambda: notifier.stats.sent == 1, "sent counted")
    await notifier.close()

    assert request.method == "POST"
    assert request.target == "/api/webhooks/1/secret?wait=true"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == f"127.0.0.1:{webhook.port}"
    payload = request.json()
    assert payload["username"] == "ferry"
    content = str(payload["content"])
    assert "start" in content and "node-a" in content and "listening on :8080" in content
    assert payload["allowed_mentions"] == {"parse": []}
    embeds = payload["embeds"]
    assert isinstance(embeds, list) and len(embeds) == 1
    embed = embeds[0]
    assert embed["title"] == "start"
    assert embed["description"] == "ferry 0.1.0 listening on :8080"
    assert embed["color"] == EVENTS["start"]
    assert datetime.fromisoformat(embed["timestamp"]).tzinfo is not None
    assert "node-a" in embed["footer"]["text"]


async def test_every_event_kind_ferry_sends(webhook: Webhook) -> None:
    notifier = Notifier(webhook.url(), node_id="n", min_interval_s=60)
    notifier.start()
    kinds = ["start", "db_down", "db_up", "wal_unwritable", "wal_writable", "wal_backlog",
             "slow_fsync"]  # fmt: skip
    for kind in kinds:
        notifier.notify(kind, f"{kind} happened")
    await eventually(lambda: notifier.stats.sent == len(kinds), "all sent")
    await notifier.close()
    titles = [r.json()["embeds"][0]["title"] for r in webhook.requests]
    assert titles == kinds
    assert set(titles) == set(EVENTS)


async def test_state_changes_are_never_suppressed_only_repeats_are(webhook: Webhook) -> None:
    """down -> up -> down inside the window sends all three: the channel's last word is the
    real state. A repeat of the current state is what the rate limit drops."""
    now = [1000.0]
    notifier = Notifier(webhook.url(), node_id="n", min_interval_s=60, clock=lambda: now[0])
    notifier.start()
    for event in ("db_down", "db_up", "db_down"):
        now[0] += 1.0
        notifier.notify(event, event)
    now[0] += 1.0
    notifier.notify("db_down", "still down")  # a repeat of the state already reported
    notifier.notify("wal_unwritable", "EIO")  # another thing's state: its own history
    now[0] += 1.0
    notifier.notify("db_up", "back")
    await eventually(lambda: notifier.stats.sent == 5, "five sent")
    await notifier.close()
    titles = [r.json()["embeds"][0]["title"] for r in webhook.requests]
    assert titles == ["db_down", "db_up", "db_down", "wal_unwritable", "db_up"]
    assert notifier.stats.dropped_rate_limited == 1
    assert "(1 similar suppressed)" not in str(webhook.requests[-1].json()["content"])


async def test_a_state_change_makes_room_in_a_full_queue(hanging_webhook: Webhook) -> None:
    notifier = Notifier(hanging_webhook.url(), node_id="n", min_interval_s=0, queue_size=2)
    for i in range(5):
        notifier.notify("slow_fsync", f"fsync took {i} ms")
    notifier.notify("wal_unwritable", "EIO")
    assert notifier.pending == 2
    assert notifier.stats.dropped_queue_full == 4  # 3 that found it full, 1 that gave way
    queued = [notifier._queue.get_nowait().event for _ in range(2)]
    assert queued == ["slow_fsync", "wal_unwritable"]
    await notifier.close()


async def test_rate_limit_is_per_event_kind_and_reports_what_it_suppressed(
    webhook: Webhook,
) -> None:
    now = [1000.0]
    notifier = Notifier(webhook.url(), node_id="n", min_interval_s=60, clock=lambda: now[0])
    notifier.start()
    for _ in range(3):
        notifier.notify("wal_backlog", "backlog 1 GiB")
    notifier.notify("db_down", "connection refused")
    notifier.notify("db_down", "connection refused")
    assert notifier.stats.dropped_rate_limited == 3
    await eventually(lambda: notifier.stats.sent == 2, "one per kind sent")

    now[0] += 59.0
    notifier.notify("wal_backlog", "still inside the window")
    assert notifier.stats.dropped_rate_limited == 4
    now[0] += 2.0
    notifier.notify("wal_backlog", "backlog 2 GiB")
    await eventually(lambda: notifier.stats.sent == 3, "sent once the window passed")
    await notifier.close()

    contents = [str(r.json()["content"]) for r in webhook.requests]
    assert len(contents) == 3
    assert "backlog 1 GiB" in contents[0] and "suppressed" not in contents[0]
    assert "connection refused" in contents[1]
    assert "backlog 2 GiB" in contents[2] and "(3 similar suppressed)" in contents[2]


async def test_queue_full_drops_instead_of_blocking(hanging_webhook: Webhook) -> None:
    notifier = Notifier(hanging_webhook.url(), node_id="n", min_interval_s=0, queue_size=2)
    notifier.start()
    for i in range(100):  # no await in between: notify() itself must never wait
        notifier.notify("slow_fsync", f"fsync took {i} ms")
    assert notifier.stats.dropped_queue_full == 98
    assert notifier.pending == 2
    await asyncio.wait_for(hanging_webhook.received.get(), UNIT)  # the sender took one
    notifier.notify("slow_fsync", "one more fits now")
    assert notifier.pending == 2
    await asyncio.wait_for(notifier.close(), UNIT)
    assert notifier.stats.sent == 0


async def test_refused_connection_is_counted_not_raised() -> None:
    notifier = Notifier(f"http://127.0.0.1:{refused_port()}/hook", node_id="n", min_interval_s=0)
    notifier.start()
    notifier.notify("db_down", "first")
    notifier.notify("db_up", "second")
    await eventually(lambda: notifier.stats.failed == 2, "both failed")
    assert notifier.stats.sent == 0
    await notifier.close()


async def test_a_hanging_webhook_leaves_the_loop_free(hanging_webhook: Webhook) -> None:
    notifier = Notifier(hanging_webhook.url(), node_id="n", min_interval_s=0, timeout_s=60 * UNIT)
    notifier.start()
    notifier.notify("db_down", "database unreachable")
    await asyncio.wait_for(hanging_webhook.received.get(), UNIT)  # the POST is now in flight

    # Real work on the same loop while the webhook never answers: 200 echo round trips.
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    for i in range(200):
        writer.write(b"ping %d\n" % i)
        assert await asyncio.wait_for(reader.readline(), UNIT) == b"ping %d\n" % i
        notifier.notify("wal_backlog", f"backlog {i}")  # and notify keeps returning at once
    writer.close()
    server.close()
    await server.wait_closed()

    # All that happened while the POST was still unanswered: nothing sent, nothing failed.
    assert notifier.stats.sent == 0 and notifier.stats.failed == 0
    assert len(hanging_webhook.requests) == 1
    await asyncio.wait_for(notifier.close(), UNIT)  # close() does not wait for the webhook


async def test_timeout_bounds_one_post(hanging_webhook: Webhook) -> None:
    notifier = Notifier(hanging_webhook.url(), node_id="n", min_interval_s=0, timeout_s=UNIT / 10)
    notifier.start()
    notifier.notify("db_down", "first")
    notifier.notify("db_up", "second")
    await eventually(lambda: notifier.stats.failed == 2, "both timed out", timeout=2 * UNIT)
    # The second went out after the first gave up on its never-answered request.
    assert [r.json()["embeds"][0]["title"] for r in hanging_webhook.requests] == [
        "db_down",
        "db_up",
    ]
    await notifier.close()


async def test_429_is_retried_after_retry_after() -> None:
    too_many = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n"
    server = Webhook([too_many, NO_CONTENT])
    await server.start()
    notifier = Notifier(server.url(), node_id="n", min_interval_s=0)
    notifier.start()
    notifier.notify("start", "up")
    await eventually(lambda: notifier.stats.sent == 1, "sent on the second try")
    await notifier.close()
    await server.close()
    assert len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body


async def test_http_error_counts_as_failed_and_the_next_one_still_goes() -> None:
    server = Webhook([b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"])
    await server.start()
    notifier = Notifier(server.url(), node_id="n", min_interval_s=0)
    notifier.start()
    notifier.notify("db_down", "x")
    notifier.notify("db_up", "y")
    await eventually(lambda: notifier.stats.failed == 1 and notifier.stats.sent == 1, "1 + 1")
    await notifier.close()
    await server.close()


async def test_long_text_is_clipped_to_discords_limits(webhook: Webhook) -> None:
    notifier = Notifier(webhook.url(), node_id="n", min_interval_s=0)
    notifier.start()
    notifier.notify("wal_backlog", "x" * 10_000)
    request = await asyncio.wait_for(webhook.received.get(), UNIT)
    await notifier.close()
    payload = request.json()
    assert len(str(payload["content"])) <= CONTENT_LIMIT
    assert len(payload["embeds"][0]["description"]) <= DESCRIPTION_LIMIT


async def test_notify_before_start_is_sent_after_start(webhook: Webhook) -> None:
    notifier = Notifier(webhook.url(), node_id="n")
    notifier.notify("start", "queued early")
    assert notifier.pending == 1
    notifier.start()
    notifier.start()  # idempotent
    await eventually(lambda: notifier.stats.sent == 1, "sent")
    await notifier.close()


async def test_notify_is_synchronous_and_never_raises(webhook: Webhook) -> None:
    assert not inspect.iscoroutinefunction(Notifier.notify)
    notifier = Notifier(webhook.url(), node_id="n", min_interval_s=0, queue_size=1)
    # What is tested is what mypy refuses: a wrong type, and the value of a None function.
    assert notifier.notify("start", 42) is None  # type: ignore[arg-type,func-returns-value]
    assert notifier.notify("start", "full queue") is None  # type: ignore[func-returns-value]
    await notifier.close()
    await notifier.close()  # idempotent
    notifier.notify("start", "after close")
    assert notifier.stats.dropped_closed == 2  # the queued one and this one
    assert notifier.stats.dropped_queue_full == 1


@pytest.mark.parametrize("url", ["", "not a url", "ftp://example.com/hook", "http:///nohost"])
def test_bad_urls_are_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError):
        Notifier(url, node_id="n")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl from the base system)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=6 * UNIT,
    )
    return cert, key


async def test_https_verifies_the_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = Webhook()
    await server.start(tls=server_tls)
    url = server.url().replace("http://", "https://")

    # Default trust store: a self-signed certificate is refused (and nothing is posted).
    untrusting = Notifier(url, node_id="n", min_interval_s=0)
    untrusting.start()
    untrusting.notify("start", "x")
    await eventually(lambda: untrusting.stats.failed == 1, "refused")
    await untrusting.close()
    assert server.requests == []

    # Trusting that certificate: posted over TLS.
    client_tls = ssl.create_default_context(cafile=str(cert))
    trusting = Notifier(url, node_id="n", min_interval_s=0, ssl_context=client_tls)
    trusting.start()
    trusting.notify("start", "over tls")
    await eventually(lambda: trusting.stats.sent == 1, "sent")
    await trusting.close()
    await server.close()
    assert "over tls" in str(server.requests[0].json()["content"])
