"""Admission at the adapter: slowloris bounds (unfinished handshakes per address and in
total, `handshake_timeout`), connection caps per user and per client address (HTTP 429),
and X-Forwarded-For believed only from trusted proxies."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
import websockets

from core.config import Config
from core.guard import MAX_ADDRESS, Guard, parse_ip
from tests.core.adapter_raw import RawWS
from tests.helpers import UNIT, Client, Relay, ServeProcess, StartRelay, http_get, wait_for
from wal.log import WalLog
from wal.record import ConnectionEvent

PARTIAL = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"


def _hold_partial(port: int, n: int) -> list[socket.socket]:
    """n connections that send part of an upgrade request and then nothing."""
    held = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=UNIT)
        sock.sendall(PARTIAL)
        held.append(sock)
    return held


def _dropped_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closed `sock` (EOF or reset), or None if it did not."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - t0


def _rejections(http: str) -> dict[str, float]:
    found = {}
    for line in http_get(http + "/metrics")[1].decode().splitlines():
        if line.startswith("ferry_upgrade_rejections_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


async def _status(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes | bytearray]:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, additional_headers=headers, open_timeout=UNIT)
    return info.value.response.status_code, info.value.response.body


# --- slowloris ------------------------------------------------------------------------------


async def test_slowloris_is_bounded_per_address(tmp_path: Path) -> None:
    timeout = UNIT / 2
    server = ServeProcess(
        {
            "FERRY_DURABILITY": "memory",
            "FERRY_MAX_HANDSHAKES_PER_IP": "4",
            "FERRY_HANDSHAKE_TIMEOUT": str(timeout),
        }
    )
    server.start(tmp_path / "serve.log")
    loop = asyncio.get_running_loop()
    held: list[socket.socket] = []
    try:
        server.wait_healthy()
        t0 = time.monotonic()
        held = _hold_partial(server.port, 4)
        # The next connection from this address is dropped at once, well-formed or not.
        (extra,) = _hold_partial(server.port, 1)
        took = await loop.run_in_executor(None, _dropped_within, extra, timeout / 2)
        assert took is not None, "the fifth unfinished handshake was not dropped at once"
        status = await asyncio.wait_for(_refused(server.url), UNIT)
        assert status == "dropped"
        # The held ones are dropped after handshake_timeout (it used to be 10 s)...
        waits = await asyncio.gather(
            *(loop.run_in_executor(None, _dropped_within, s, timeout + UNIT) for s in held)
        )
        elapsed = time.monotonic() - t0
        assert all(w is not None for w in waits), waits
        assert timeout * 0.8 <= elapsed <= timeout + UNIT, elapsed
        # ...and then a well-formed client gets in.
        client = await Client.connect(server.url)
        await client.send({"op": "ping"})
        await client.expect("pong")
        await client.close()
        rejections = await loop.run_in_executor(None, _rejections, server.http)
        assert rejections["max_handshakes_per_ip"] >= 2
        assert rejections["handshake_timeout"] == 4
        assert "Traceback" not in server.output()
    finally:
        for sock in held:
            sock.close()
        server.kill()


async def _refused(url: str) -> str:
    try:
        ws = await websockets.connect(url, open_timeout=UNIT)
    except (websockets.InvalidMessage, ConnectionError, EOFError):
        return "dropped"
    await ws.close()
    return "accepted"


async def test_unfinished_handshakes_are_bounded_in_total(start_relay: StartRelay) -> None:
    relay = await start_relay(max_handshakes=3, max_handshakes_per_ip=100, handshake_timeout=UNIT)
    guard = relay.guard
    loop = asyncio.get_running_loop()
    held = await loop.run_in_executor(None, _hold_partial, relay.port, 3)
    try:
        await wait_for(lambda: guard.handshakes == 3, what="3 unfinished handshakes")
        (extra,) = await loop.run_in_executor(None, _hold_partial, relay.port, 1)
        assert await loop.run_in_executor(None, _dropped_within, extra, UNIT / 2) is not None
        assert relay.hub.rejections["max_handshakes"] == 1
        held[0].close()  # a client that gives up frees its place
        await wait_for(lambda: guard.handshakes == 2, what="2 unfinished handshakes")
        client = await Client.connect(relay.url)
        await client.close()
    finally:
        for sock in held:
            sock.close()


async def test_a_trusted_proxy_is_bounded_only_in_total(start_relay: StartRelay) -> None:
    relay = await start_relay(
        trusted_proxies=("127.0.0.1",), max_handshakes=4, max_handshakes_per_ip=2
    )
    guard = relay.guard
    loop = asyncio.get_running_loop()
    held = await loop.run_in_executor(None, _hold_partial, relay.port, 4)
    try:
        await wait_for(lambda: guard.handshakes == 4, what="4 unfinished handshakes")
        assert guard.handshakes_by_ip == {}  # carries many clients: not counted per address
        (extra,) = await loop.run_in_executor(None, _hold_partial, relay.port, 1)
        assert await loop.run_in_executor(None, _dropped_within, extra, UNIT / 2) is not None
        assert relay.hub.rejections == {"max_handshakes": 1}
    finally:
        for sock in held:
            sock.close()


def test_handshake_timeout_default() -> None:
    assert Config().handshake_timeout == 5.0


# --- connection caps ------------------------------------------------------------------------


async def test_connections_per_user_are_capped(start_relay: StartRelay) -> None:
    relay = await start_relay(max_connections_per_user=2)
    alice = [await Client.connect(relay.url, user="alice") for _ in range(2)]
    status, body = await _status(relay.url + "?user=alice")
    assert status == 429
    assert body == b"too many connections for this user\n"
    bob = await Client.connect(relay.url, user="bob")  # another user is not affected
    assert relay.hub.rejections == {"max_connections_per_user": 1}
    loop = asyncio.get_running_loop()
    metrics = (await loop.run_in_executor(None, http_get, relay.http + "/metrics"))[1].decode()
    assert 'ferry_upgrade_rejections_total{reason="max_connections_per_user"} 1.0' in metrics
    await alice[0].close()
    guard = relay.guard
    await wait_for(lambda: guard.by_user.get("alice") == 1, what="alice's first one gone")
    alice.append(await Client.connect(relay.url, user="alice"))
    for client in [*alice[1:], bob]:
        await client.close()
    await wait_for(lambda: guard.by_user == {}, what="counts back to nothing")


async def test_connections_per_address_are_capped(start_relay: StartRelay) -> None:
    relay = await start_relay(max_connections_per_ip=3)
    clients = [await Client.connect(relay.url, user=f"u{i}") for i in range(3)]
    status, body = await _status(relay.url + "?user=u9")
    assert (status, body) == (429, b"too many connections from this address\n")
    assert relay.hub.rejections == {"max_connections_per_ip": 1}
    assert relay.guard.by_ip == {"127.0.0.1": 3}
    for client in clients:
        await client.close()


async def test_zero_means_no_limit(start_relay: StartRelay) -> None:
    relay = await start_relay(max_connections_per_user=0, max_connections_per_ip=0)
    clients = [await Client.connect(relay.url, user="same") for _ in range(5)]
    guard = relay.guard
    assert guard.by_user == {} and guard.by_ip == {}  # nothing even counted
    for client in clients:
        await client.close()


# --- X-Forwarded-For ------------------------------------------------------------------------


async def _one_connection(relay: Relay, headers: dict[str, str]) -> tuple[str, str]:
    """(remote, address) of a connection made with these headers."""
    before = set(relay.hub.connections)
    ws = await RawWS.connect(relay.port, headers=headers)
    (conn,) = set(relay.hub.connections) - before
    ws.close()
    return conn.remote, conn.address


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[ConnectionEvent]:
    """The connection events the server hands the WAL for ferry_events (recorded here,
    then written as usual): the composition root wires them for a WAL-backed relay."""
    recorded: list[ConnectionEvent] = []
    append = WalLog.append_event

    def record(self: WalLog, event: ConnectionEvent) -> int:
        recorded.append(event)
        return append(self, event)

    monkeypatch.setattr(WalLog, "append_event", record)
    return recorded


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    start_relay: StartRelay, events: list[ConnectionEvent]
) -> None:
    relay = await start_relay(durability="wal")
    remote, address = await _one_connection(relay, {"X-Forwarded-For": "6.6.6.6" + "x" * 15000})
    assert remote.startswith("127.0.0.1:") and address == "127.0.0.1"
    await wait_for(lambda: len(events) == 2, what="connect and disconnect events")
    assert {e.remote for e in events} == {remote}


async def test_forwarded_for_from_a_trusted_proxy(
    start_relay: StartRelay, events: list[ConnectionEvent]
) -> None:
    relay = await start_relay(durability="wal", trusted_proxies=("127.0.0.1", "10.0.0.0/8"))
    # right-most entry that is not a trusted proxy
    xff = "198.51.100.1, 203.0.113.7, 10.1.2.3"
    assert await _one_connection(relay, {"X-Forwarded-For": xff}) == ("203.0.113.7", "203.0.113.7")
    # not an address: only the hop that passed it on is believed (here the TCP peer)
    remote, address = await _one_connection(relay, {"X-Forwarded-For": "<script>" * 2000})
    assert remote.startswith("127.0.0.1:") and address == "127.0.0.1"
    # IPv6, canonical form
    assert (await _one_connection(relay, {"X-Forwarded-For": "2001:DB8:0::1"}))[1] == "2001:db8::1"
    await wait_for(lambda: len(events) == 6, what="events")
    assert all(len(e.remote) <= MAX_ADDRESS for e in events)


async def test_per_address_cap_counts_the_forwarded_address(start_relay: StartRelay) -> None:
    relay = await start_relay(trusted_proxies=("127.0.0.1",), max_connections_per_ip=1)
    a = await Client.connect(relay.url, headers={"X-Forwarded-For": "192.0.2.1"})
    b = await Client.connect(relay.url, headers={"X-Forwarded-For": "192.0.2.2"})
    status, _ = await _status(relay.url, {"X-Forwarded-For": "192.0.2.1"})
    assert status == 429
    assert relay.guard.by_ip == {"192.0.2.1": 1, "192.0.2.2": 1}
    await a.close()
    await b.close()


def test_client_address_rules() -> None:
    guard = Guard(Config(trusted_proxies=("10.0.0.0/8", "fd00::/8", "192.0.2.10")))
    peer, trusted = guard.peer_address(("10.0.0.1", 5000))
    assert (peer, trusted) == ("10.0.0.1", True)
    assert guard.peer_address(("::ffff:10.0.0.1", 5000, 0, 0)) == ("10.0.0.1", True)
    assert guard.peer_address(("198.51.100.4", 5000)) == ("198.51.100.4", False)

    def client(*values: str, peer: str = "10.0.0.1") -> str:
        return guard.client_address(peer, guard.peer_address((peer, 1))[1], values)

    assert client() == "10.0.0.1"
    assert client("203.0.113.9") == "203.0.113.9"
    assert client("1.1.1.1, 203.0.113.9, 192.0.2.10, 10.9.9.9") == "203.0.113.9"
    assert client("1.1.1.1", "203.0.113.9") == "203.0.113.9"  # several headers: in order
    assert client("203.0.113.9:4711") == "203.0.113.9"
    assert client("[2001:db8::7]:443") == "2001:db8::7"
    assert client("garbage, 10.2.2.2") == "10.2.2.2"  # the hop that passed garbage on
    assert client("10.2.2.2, 10.3.3.3") == "10.2.2.2"  # all trusted: the left-most
    assert client("203.0.113.9", peer="198.51.100.4") == "198.51.100.4"  # untrusted peer
    assert client("1" * 100) == "10.0.0.1"
    assert parse_ip("fe80::1%" + "e" * 80) is None  # longer than MAX_ADDRESS
    assert len(client("fe80::1%" + "e" * 50)) <= MAX_ADDRESS


def test_bad_trusted_proxies_are_a_config_error() -> None:
    from core.config import ConfigError, load

    with pytest.raises(ConfigError, match="trusted_proxies"):
        load(environ={"FERRY_TRUSTED_PROXIES": "10.0.0.0/8,not-a-network"})
    assert load(environ={"FERRY_TRUSTED_PROXIES": "10.0.0.0/8, ::1"}).trusted_proxies == (
        "10.0.0.0/8",
        "::1",
    )
