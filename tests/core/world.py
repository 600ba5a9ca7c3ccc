"""A sans-I/O world for session + router + outbox tests: no event loop, no socket.

`FakeLoop` stands in for the loop (call_soon / call_later, run by hand), `HeldLog` is a
`DurableLog` whose batches become durable only when the test says so, and `Peer` is one
connection's session with a writer that decodes what the server wrote. Modelled on
h11's ConnectionPair: every step is explicit, so a test can stop between any two.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from common.durability import (
    DurableHandler,
    Encoding,
    Entry,
    FailedHandler,
    HistoryLimits,
    RecoveredState,
)
from common.latency import Stages
from core.auth import Grant, Principal
from core.dedupe import DedupeIndex
from core.errors import SlowConsumer
from core.outbox import Flusher, Outbox
from core.router import Router
from core.session import Admit, Limits, Session

_json = msgspec.json.Decoder()
_msgpack = msgspec.msgpack.Decoder()


class Timer:
    def __init__(self, loop: FakeLoop, when: float, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class FakeLoop:
    """call_soon/call_later by hand; `time` moves only when `advance` is called."""

    def __init__(self) -> None:
        self.time = 1_000_000.0
        self._ready: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._timers: list[Timer] = []

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        self._ready.append((callback, args))

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self, self.time + delay, callback)
        heapq.heappush(self._timers, timer)
        return timer

    def run(self) -> None:
        """Run everything ready, and what that makes ready, until nothing is left."""
        for _ in range(10_000):
            if not self._ready:
                return
            ready, self._ready = self._ready, []
            for callback, args in ready:
                callback(*args)
        raise AssertionError("the fake loop never went idle")

    def advance(self, seconds: float) -> None:
        self.time += seconds
        while self._timers and self._timers[0].when <= self.time:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()
            self.run()
        self.run()

    def wall(self) -> float:
        return self.time


class HeldLog:
    """A DurableLog that holds every append until `release()`; `fail()` fails them."""

    def __init__(self) -> None:
        self.pending: list[Entry] = []
        self.heads: dict[str, int] = {}
        self.floor = 0
        self._lsn = itertools.count(1)
        self._on_durable: DurableHandler | None = None
        self._on_failed: FailedHandler | None = None
        self.refuse: Exception | None = None
        self.stages = Stages()

    async def open(self, limits: HistoryLimits) -> RecoveredState:
        return RecoveredState()

    def set_handlers(self, on_durable: DurableHandler, on_failed: FailedHandler) -> None:
        self._on_durable = on_durable
        self._on_failed = on_failed

    def append(self, entry: Entry) -> None:
        if self.refuse is not None:
            raise self.refuse
        entry.lsn = next(self._lsn)
        self.pending.append(entry)

    def release(self, n: int | None = None) -> list[Entry]:
        batch = self.pending[:n] if n is not None else self.pending
        self.pending = self.pending[len(batch) :]
        for entry in batch:
            self.heads[entry.channel] = entry.seq
        if batch and self._on_durable is not None:
            self._on_durable(list(batch))
        return batch

    def fail(self, reason: str = "disk on fire") -> None:
        batch, self.pending = self.pending, []
        if self._on_failed is not None:
            self._on_failed(batch, reason)

    @property
    def writable(self) -> bool:
        return True

    @property
    def failure(self) -> str | None:
        return None

    def head_of(self, channel: str) -> int:
        return self.heads.get(channel, 0)

    def set_history_floor(self, lsn: int) -> None:
        self.floor = lsn

    def stats(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        pass


def decode_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in `data`."""
    out = []
    i = 0
    while i < len(data):
        opcode = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i : i + 8], "big")
            i += 8
        out.append((opcode, data[i : i + n]))
        i += n
    return out


class FakeWriter:
    """The transport side of an outbox: records writes, can refuse or pause."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.raise_on_write: Exception | None = None

    def writelines(self, chunks: Sequence[bytes]) -> None:
        if self.raise_on_write is not None:
            raise self.raise_on_write
        self.writes.append(b"".join(chunks))

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


@dataclass
class Peer:
    session: Session
    writer: FakeWriter
    outbox: Outbox
    closes: list[tuple[int, str]] = field(default_factory=list)
    _read: int = 0  # writes already returned by new_frames

    def send(self, frame: dict[str, Any] | bytes) -> None:
        json = self.session.encoding == Encoding.JSON
        if isinstance(frame, bytes):
            self.session.receive(frame, json)
        else:
            enc = msgspec.json.encode if json else msgspec.msgpack.encode
            self.session.receive(enc(frame), json)

    def frames(self) -> list[dict[str, Any]]:
        """Every frame the server wrote to this peer, decoded."""
        dec = _json if self.session.encoding == Encoding.JSON else _msgpack
        return [dec.decode(p) for _, p in decode_frames(self.writer.data)]

    def new_frames(self) -> list[dict[str, Any]]:
        """Frames written since the last call (each write holds whole frames)."""
        writes = self.writer.writes
        fresh, self._read = b"".join(writes[self._read :]), len(writes)
        dec = _json if self.session.encoding == Encoding.JSON else _msgpack
        return [dec.decode(p) for _, p in decode_frames(fresh)]

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [f for f in self.frames() if f["op"] == op]


class World:
    """A router over a HeldLog (or the given log), sessions over fake writers, all on one
    `FakeLoop` (pass it when the log needs it too: `MemoryLog(loop.call_soon)`)."""

    def __init__(
        self,
        log: Any = None,
        history: HistoryLimits | None = None,
        max_channels_per_user: int = 10_000,
        outbox_limit: int = 1 << 20,
        loop: FakeLoop | None = None,
        dedupe: tuple[float, int] = (120.0, 100_000),
        **limits: Any,
    ) -> None:
        self.loop = loop if loop is not None else FakeLoop()
        self.log = log if log is not None else HeldLog()
        self.router = Router(
            self.log,
            history if history is not None else HistoryLimits(size=100),
            max_channels_per_user=max_channels_per_user,
            dedupe=DedupeIndex(*dedupe, self.loop.wall),  # the server's defaults
        )
        self.flusher = Flusher(self.loop.call_soon)
        self.limits = Limits(**limits)
        self.outbox_limit = outbox_limit
        self.grants: dict[str, Grant] = {}
        self._ids = itertools.count(1)

    def connect(
        self,
        user: str = "u",
        encoding: Encoding = Encoding.JSON,
        *,
        admin: bool = False,
        pub: tuple[str, ...] = ("*",),
        sub: tuple[str, ...] = ("*",),
        expires_at: float | None = None,
        first_frame_auth: Admit | None = None,
    ) -> Peer:
        """A connected session; with `first_frame_auth` one that came without a token and
        waits for `auth` (10 s), `first_frame_auth` standing in for the transport's limits."""
        writer = FakeWriter()
        peer: Peer
        outbox = Outbox(
            writer,
            self.flusher,
            self.outbox_limit,
            # as core/listener.py does: the table in core/errors.py picks the codes
            lambda: self.loop.call_soon(lambda: peer.session.fail(SlowConsumer("slow consumer"))),
            lambda exc: self.loop.call_soon(lambda: peer.session.fail(exc)),
        )

        def request_close(code: int, reason: str) -> None:
            outbox.flush_now()
            outbox.close()
            peer.closes.append((code, reason))

        principal = Principal(user=user, admin=admin, pub_patterns=pub, sub_patterns=sub)
        session = Session(
            f"c{next(self._ids)}",
            principal,
            encoding,
            self.router,
            outbox,
            self.limits,
            "n1",
            request_close,
            clock=lambda: self.loop.time,
            expires_at=expires_at,
            schedule=self.loop.call_later,
            authenticate=self._authenticate,
            wall_clock=self.loop.wall,
        )
        peer = Peer(session, writer, outbox)
        if first_frame_auth is None:
            session.start()
        else:
            session.start_unauthenticated(10.0, first_frame_auth)
        return peer

    def _authenticate(self, token: str) -> Grant:
        from core.errors import AuthError

        grant = self.grants.get(token)
        if grant is None:
            raise AuthError("token is not valid")
        return grant

    def tick(self) -> None:
        """Let the loop turn: flushes run."""
        self.loop.run()

    def settle(self) -> None:
        """Make everything appended durable and flush it all out."""
        for _ in range(1000):
            self.loop.run()
            if not getattr(self.log, "pending", None):
                return
            self.log.release()
        raise AssertionError("never settled")
