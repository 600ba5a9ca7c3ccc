"""Micro-benchmarks of the relay's hot paths (pytest-benchmark), in-process, no sockets.

    pytest bench/micro --benchmark-enable            the numbers
    pytest tests/bench                               the same functions once, as tests

Each benchmark also checks its result, so a run with `--benchmark-disable` (the default
in pyproject) is a plain correctness test of the path it times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec
import pytest

from common.durability import Encoding, Entry, HistoryLimits, RecoveredState
from common.latency import Stages
from core.auth import Principal
from core.outbox import Flusher, Outbox
from core.protocol import DECODERS, Pub
from core.router import Router, frame_for
from core.session import Limits, Session

pytestmark = pytest.mark.bench

SUBSCRIBERS = 100
BATCH = 16
DATA = b'{"t":1234567890123,"p":"' + b"x" * 100 + b'"}'  # 128 bytes, as in `bench fanout`
PUB_JSON = b'{"op":"pub","ch":"room.1","data":' + DATA + b',"id":"c-17"}'
PUB_MSGPACK = msgspec.msgpack.encode(
    {"op": "pub", "ch": "room.1", "data": msgspec.json.decode(DATA), "id": "c-17"}
)

Benchmark = Any  # pytest-benchmark's fixture (no type stubs)


class CountingWriter:
    """Stands in for the transport: counts writes and bytes, keeps nothing."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def writelines(self, chunks: Sequence[bytes]) -> None:
        self.writes += 1
        self.bytes += sum(map(len, chunks))


class ManualLoop:
    """`call_soon` that only records: the benchmark turns the crank itself."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.calls.append(callback)


def _flusher() -> Flusher:
    return Flusher(ManualLoop().call_soon)


def _outboxes(flusher: Flusher, n: int) -> tuple[list[Outbox], list[CountingWriter]]:
    writers = [CountingWriter() for _ in range(n)]
    boxes = [Outbox(w, flusher, 1 << 30, lambda: None) for w in writers]
    return boxes, writers


def _entry(seq: int, encoding: Encoding = Encoding.JSON) -> Entry:
    data = DATA if encoding == Encoding.JSON else msgspec.msgpack.encode(msgspec.json.decode(DATA))
    return Entry("room.1", seq, 1_700_000_000_000, "alice", None, encoding, data)


# --- envelope decode ---------------------------------------------------------------------


def test_decode_pub_json(benchmark: Benchmark) -> None:
    decode = DECODERS[Encoding.JSON].decode
    frame = benchmark(decode, PUB_JSON)
    assert isinstance(frame, Pub) and bytes(frame.data) == DATA


def test_decode_pub_msgpack(benchmark: Benchmark) -> None:
    decode = DECODERS[Encoding.MSGPACK].decode
    frame = benchmark(decode, PUB_MSGPACK)
    assert isinstance(frame, Pub) and frame.ch == "room.1"


# --- msg encode --------------------------------------------------------------------------


def test_frame_for_json(benchmark: Benchmark) -> None:
    entry = _entry(42)
    frame = benchmark(frame_for, entry, Encoding.JSON)
    assert frame[0] == 0x81 and DATA in frame and b'"seq":42' in frame


def test_frame_for_msgpack_to_json(benchmark: Benchmark) -> None:
    """A subscriber of the other encoding: transcoded once per message."""
    entry = _entry(42, Encoding.MSGPACK)
    frame = benchmark(frame_for, entry, Encoding.JSON)
    assert frame[0] == 0x81 and b'"seq":42' in frame


# --- outbox ------------------------------------------------------------------------------


def test_outbox_push_flush_100(benchmark: Benchmark) -> None:
    """One shared frame pushed to 100 outboxes, then the per-tick flush: 100 writes."""
    flusher = _flusher()
    boxes, writers = _outboxes(flusher, SUBSCRIBERS)
    frame = frame_for(_entry(1), Encoding.JSON)

    def push_flush() -> None:
        for box in boxes:
            box.push(frame)
        flusher.flush()

    benchmark(push_flush)
    assert all(w.writes >= 1 and w.bytes % len(frame) == 0 for w in writers)
    assert all(box.size == 0 for box in boxes)


def test_outbox_coalesces_batch(benchmark: Benchmark) -> None:
    """16 frames per outbox in one tick still make one write per outbox."""
    flusher = _flusher()
    boxes, writers = _outboxes(flusher, SUBSCRIBERS)
    frames = [frame_for(_entry(i), Encoding.JSON) for i in range(1, BATCH + 1)]

    def push_flush() -> None:
        for frame in frames:
            for box in boxes:
                box.push(frame)
        flusher.flush()

    benchmark(push_flush)
    assert all(w.writes == writers[0].writes for w in writers)
    assert writers[0].bytes == writers[0].writes * sum(map(len, frames))


# --- router fan-out ----------------------------------------------------------------------


class NullLog:
    """A DurableLog that takes appends and never completes them (the bench drives
    `on_durable` itself)."""

    def __init__(self) -> None:
        self.appended: list[Entry] = []
        self.stages = Stages()

    async def open(self, limits: HistoryLimits) -> RecoveredState:
        return RecoveredState()

    def head_of(self, channel: str) -> int:
        return 0

    def set_history_floor(self, lsn: int) -> None:
        pass

    def set_handlers(self, on_durable: Any, on_failed: Any) -> None:
        pass

    def append(self, entry: Entry) -> None:
        self.appended.append(entry)

    @property
    def writable(self) -> bool:
        return True

    @property
    def failure(self) -> str | None:
        return None

    def stats(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        pass


def test_router_durable_batch_to_100(benchmark: Benchmark) -> None:
    """A durable batch of 16 msgs on one channel -> 100 subscribers: encode once, push,
    flush. Divide the time by 1600 for the in-process cost per delivery."""
    router = Router(NullLog(), HistoryLimits(size=100))
    flusher = _flusher()
    boxes, writers = _outboxes(flusher, SUBSCRIBERS)
    channel = router.open_channel("room.1", None)
    for box in boxes:
        channel.subs[Encoding.JSON][box] = cast(Session, None)
    seq = iter(range(1, 1 << 62))

    def deliver() -> None:
        router.on_durable([_entry(next(seq)) for _ in range(BATCH)])
        flusher.flush()

    benchmark(deliver)
    assert router.counters.deliveries % (SUBSCRIBERS * BATCH) == 0
    assert all(w.writes == writers[0].writes for w in writers)


# --- session input -----------------------------------------------------------------------


def test_session_receive_pub(benchmark: Benchmark) -> None:
    """A pub frame through the sans-I/O session: decode, authorize, rate-limit, route."""
    log = NullLog()
    router = Router(log, HistoryLimits(size=100))
    flusher = _flusher()
    boxes, _ = _outboxes(flusher, 1)
    limits = Limits(publish_rate=1e12, publish_burst=1 << 40)
    session = Session(
        "c-1", Principal(user="alice"), Encoding.JSON, router, boxes[0], limits, "n1", _no_close
    )
    session.start()

    def receive() -> None:
        session.receive(PUB_JSON, True)
        if len(log.appended) > 10_000:
            log.appended.clear()

    benchmark(receive)
    assert log.appended and log.appended[-1].data == DATA


def _no_close(code: int, reason: str) -> None:
    raise AssertionError(f"session closed: {code} {reason}")
