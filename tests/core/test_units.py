"""Pure logic without sockets: config loading, outbox, session + router with a fake writer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from common.durability import Encoding, HistoryLimits
from common.latency import LatencyHistogram
from core import config as config_mod
from core.auth import Principal
from core.errors import CloseCode
from core.memory_log import MemoryLog
from core.outbox import Flusher, Outbox
from core.protocol import frame_header
from core.router import Router
from core.session import Limits, Session
from tests.core.world import decode_frames

# --- config ------------------------------------------------------------------------------------


def test_config_precedence_flags_env_file_defaults(tmp_path: Path) -> None:
    file = tmp_path / "f.toml"
    file.write_text('port = 1111\nhistory_size = 7\nwal_sync = "write"\n')
    env = {"FERRY_PORT": "2222", "FERRY_HISTORY_SIZE": "8", "PATH": "/bin"}
    cfg = config_mod.load({"port": "3333"}, env, str(file))
    assert cfg.port == 3333  # flag
    assert cfg.history_size == 8  # env over file
    assert cfg.wal_sync == "write"  # file over default
    assert cfg.max_frame_bytes == 64 * 1024  # default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FERRY_PORT": "99999"}, "port"),
        ({"FERRY_REPLAYER": "maybe"}, "replayer must be bool"),
        ({"FERRY_MAX_FRAME_BYTES": "1.5"}, "max_frame_bytes must be int"),
        ({"FERRY_NOPE": "1"}, "unknown setting FERRY_NOPE"),
        ({"FERRY_LOG_FORMAT": "xml"}, "log_format"),
    ],
)
def test_config_errors_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(config_mod.ConfigError, match=message):
        config_mod.load({}, env)


def test_config_is_frozen() -> None:
    cfg = config_mod.load({}, {})
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]


def test_allowed_origins_parse() -> None:
    cfg = config_mod.load({}, {"FERRY_ALLOWED_ORIGINS": "https://a, https://b"})
    assert cfg.allowed_origins == ("https://a", "https://b")


# --- protocol ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 1 << 20])
def test_frame_header_lengths(n: int) -> None:
    header = frame_header(0x1, n)
    assert header[0] == 0x81
    if n < 126:
        assert header[1] == n and len(header) == 2
    elif n < 65536:
        assert header[1] == 126 and int.from_bytes(header[2:4], "big") == n
    else:
        assert header[1] == 127 and int.from_bytes(header[2:10], "big") == n


# --- outbox ------------------------------------------------------------------------------------


class FakeWriter:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []

    def writelines(self, chunks: Sequence[bytes]) -> None:
        self.writes.append(list(chunks))

    def frames(self) -> list[dict[str, object]]:
        """Decode the unmasked server frames written so far (JSON payloads)."""
        data = b"".join(b"".join(w) for w in self.writes)
        return [json.loads(payload) for _, payload in decode_frames(data)]


async def test_outbox_coalesces_one_write_per_tick() -> None:
    writer = FakeWriter()
    flusher = Flusher()
    overflowed = []
    box = Outbox(writer, flusher, 1000, lambda: overflowed.append(1))
    for i in range(10):
        box.push(b"m%d" % i)
    assert writer.writes == []  # nothing before the loop turns
    await asyncio.sleep(0)
    assert writer.writes == [[b"m%d" % i for i in range(10)]]
    box.pause()
    box.push(b"later")
    await asyncio.sleep(0)
    assert len(writer.writes) == 1  # paused: held back
    box.resume()
    await asyncio.sleep(0)
    assert writer.writes[-1] == [b"later"]
    box.pause()
    box.push(b"x" * 1001)
    assert overflowed == [1] and box.discarding and box.size == 0
    box.push(b"more")  # overflowed: ignored until the closing session takes its acks
    assert box.size == 0


# --- session + router (sans-I/O) -----------------------------------------------------------------


class Pair:
    """A router over a MemoryLog and sessions over fake writers (h11's ConnectionPair idea)."""

    def __init__(self, **limits: object) -> None:
        self.log = MemoryLog()
        self.router = Router(self.log, HistoryLimits(size=5))
        self.flusher = Flusher()
        self.limits = Limits(**limits)  # type: ignore[arg-type]
        self.closed: dict[str, tuple[int, str]] = {}

    def session(self, user: str, admin: bool = False) -> tuple[Session, FakeWriter]:
        writer = FakeWriter()
        outbox = Outbox(writer, self.flusher, 1 << 20, lambda: None)
        session = Session(
            f"c-{user}",
            Principal(user=user, admin=admin),
            Encoding.JSON,
            self.router,
            outbox,
            self.limits,
            "n1",
            lambda code, reason: self.closed.__setitem__(user, (code, reason)),
        )
        session.start()
        return session, writer


async def test_session_pub_sub_history() -> None:
    pair = Pair()
    alice, aw = pair.session("alice")
    bob, bw = pair.session("bob")
    bob.receive(b'{"op":"sub","ch":"r"}', True)
    for i in range(7):
        alice.receive(b'{"op":"pub","ch":"r","data":%d,"id":%d}' % (i, i), True)
    await asyncio.sleep(0)  # MemoryLog: durable next tick
    await asyncio.sleep(0)  # flush
    acks = [f for f in aw.frames() if f["op"] == "ack"]
    assert [a["seq"] for a in acks] == list(range(1, 8)) and [a["id"] for a in acks] == list(
        range(7)
    )
    msgs = [f for f in bw.frames() if f["op"] == "msg"]
    assert [m["data"] for m in msgs] == list(range(7))
    # since: history of 5 reaches back to seq 3
    carol, cw = pair.session("carol")
    carol.receive(b'{"op":"sub","ch":"r","since":3}', True)
    carol.receive(b'{"op":"sub","ch":"x","since":0}', True)
    carol.receive(b'{"op":"sub","ch":"r2","since":5}', True)
    dave, dw = pair.session("dave")
    dave.receive(b'{"op":"sub","ch":"r","since":1}', True)  # seq 2 fell out of the ring
    await asyncio.sleep(0)
    frames = cw.frames()
    assert frames[1] == {"op": "subscribed", "ch": "r", "seq": 7, "recovered": True}
    assert [f["seq"] for f in frames[2:6]] == [4, 5, 6, 7]
    assert frames[6] == {"op": "subscribed", "ch": "x", "seq": 0, "recovered": True}
    assert dw.frames()[1] == {"op": "subscribed", "ch": "r", "seq": 7, "recovered": False}
    assert len(dw.frames()) == 2


async def test_disconnect_removes_all_subscriptions() -> None:
    pair = Pair()
    s, _ = pair.session("u")
    for ch in ("a", "b", "c"):
        s.receive(b'{"op":"sub","ch":"%s"}' % ch.encode(), True)
    assert pair.router.subscription_count == 4  # + @u inbox
    s.closed()
    assert pair.router.subscription_count == 0


async def test_rate_limit_strikes_close_4429() -> None:
    now = [0.0]
    pair = Pair(publish_rate=1.0, publish_burst=2, rate_abuse_limit=3)
    writer = FakeWriter()
    session = Session(
        "c",
        Principal(user="u"),
        Encoding.JSON,
        pair.router,
        Outbox(writer, pair.flusher, 1 << 20, lambda: None),
        pair.limits,
        "n",
        lambda code, reason: pair.closed.__setitem__("u", (code, reason)),
        clock=lambda: now[0],
    )
    for _ in range(6):
        session.receive(b'{"op":"pub","ch":"r","data":1}', True)
    assert pair.closed["u"][0] == CloseCode.RATE_ABUSE
    await asyncio.sleep(0)
    codes = [f.get("code") for f in writer.frames() if f["op"] == "error"]
    assert codes.count("rate_limited") == 4


def test_latency_histogram_quantiles() -> None:
    h = LatencyHistogram()
    for _ in range(99):
        h.observe(0.0002)
    h.observe(0.2)
    p50 = h.quantile(0.5)
    p99 = h.quantile(0.999)
    assert p50 is not None and 0.0001 <= p50 <= 0.00025
    assert p99 is not None and 0.1 <= p99 <= 0.25
    snap = h.snapshot()
    assert h.quantile(0.5, snap) is None


async def test_channels_nobody_uses_are_forgotten() -> None:
    pair = Pair()
    s, _ = pair.session("u")
    s.receive(b'{"op":"sub","ch":"ephemeral"}', True)
    s.receive(b'{"op":"unsub","ch":"ephemeral"}', True)
    assert "ephemeral" not in pair.router.channels
    s.receive(b'{"op":"pub","ch":"kept","data":1}', True)
    s.receive(b'{"op":"sub","ch":"kept"}', True)
    s.receive(b'{"op":"unsub","ch":"kept"}', True)
    assert pair.router.channels["kept"].last_seq == 1  # it has history: it stays
    s.closed()
    assert "@u" not in pair.router.channels


def test_no_test_or_dev_variable_takes_the_products_prefix() -> None:
    """Every FERRY_* name used by the tests, the dashboard's tooling and the docs is a real
    setting: exporting one never makes `ferry serve` refuse to start."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[2]
    files = subprocess.run(
        ["git", "ls-files", "tests", "dashboard", "docs", "README.md", "Makefile", "scripts"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    # Not settings of `ferry serve`, and never read by it: the dashboard image's proxy
    # target, compose's image name, a CI output, a Python constant, the deliberately
    # unknown names the config tests feed in, and the Vite build variable.
    others = {"FERRY_UPSTREAM", "FERRY_IMAGE", "FERRY_DIGEST", "FERRY_BENCH_ENV", "FERRY_NOPE",
              "FERRY_TYPO_SETTING", "FERRY_RELAY"}  # fmt: skip
    found = set()
    for name in files:
        path = root / name
        if name == "docs/design.md":  # the design brief also names settings still to come
            continue
        if path.suffix in (".png", ".json") or "node_modules" in name or not path.is_file():
            continue
        found |= set(re.findall(r"\bFERRY_[A-Z][A-Z0-9_]*", path.read_text(errors="replace")))
    settings = {config_mod.env_name(name) for name in config_mod.FIELDS}
    assert found - settings - others == set()
