"""The load generator's worker processes: picows clients that count frames, not parse them.

    coordinator (bench/runner.py)                    worker process (this module)
    ─────────────────────────────                    ────────────────────────────
    spawn(WorkerSpec) ─────────────────────────────▶ connect every client; `sub`; wait `subscribed`
                      ◀──────────────────────────── ("ready", WorkerReady)
    ("go", t_start, t_measure, t_end) ─────────────▶ publish from t_start; snapshot the counters
                                                     at t_measure and t_end (warm-up excluded)
                      ◀──────────────────────────── ("result", WorkerResult)

All times are `time.monotonic()`: on Linux that is CLOCK_MONOTONIC, one clock for every
process on the machine, so the coordinator's timeline and the send stamps embedded in
published data mean the same thing in every worker.

What keeps a client cheap (the server under test owns one of the two cores):
* A subscriber only counts frames. Every `sample_every`-th frame (a power of two) is read
  to find the `"t":` send stamp the publisher put in `data` — no JSON decoding at all.
* Publisher responses are told apart by one byte: every server here sends compact JSON
  with `op` first, so byte 7 of `{"op":"ack",…` is `a` (`m` for msg, `e` for error).
  Acks answer pubs in order per connection, so the pub->ack latency is the time since
  the oldest send still in the FIFO: acks are never parsed either.
* Publishes are built by bytes concatenation and written straight to the socket, all
  that are due for a connection in ONE write: the frames carry a masking key of zero.
  RFC 6455 §5.3 asks clients for unpredictable keys (a defence for intermediaries, not a
  wire rule): every server unmasks a zero key like any other, and the load generator
  saves a mask pass and a syscall per frame. Identical for every server compared.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import struct
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from picows import WSFrame, WSListener, WSTransport, ws_connect

from bench.procfs import raise_nofile_limit

if TYPE_CHECKING:  # hdrhistogram is the `bench` extra: imported when a histogram is made
    from hdrh.histogram import HdrHistogram

# Latency histograms hold microseconds, 1 µs .. 60 s, 3 significant digits.
HIST_MIN_US = 1
HIST_MAX_US = 60_000_000
HIST_DIGITS = 3

# `op` value's first letter at byte 7 of `{"op":"…`.
OP_AT = 7
OP_ACK = ord("a")
OP_MSG = ord("m")

PACE_TICK_S = 0.001  # open-loop publishing: how often the pacer hands out due publishes


def new_histogram() -> HdrHistogram:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(HIST_MIN_US, HIST_MAX_US, HIST_DIGITS)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one worker process runs. Connections of each role, by channel."""

    index: int
    url: str
    subscribers: tuple[str, ...] = ()  # subscribe to the channel, only receive
    members: tuple[str, ...] = ()  # subscribe to the channel AND publish to it (rooms)
    publishers: tuple[str, ...] = ()  # publish only
    idle: int = 0  # connect, take the welcome, do nothing
    window: int = 0  # > 0: closed loop, each publisher keeps `window` pubs unacked
    rate: float = 0.0  # > 0: open loop, pubs/s spread over this worker's publishers+members
    payload: int = 128  # bytes of the published `data` value
    sample_every: int = 32  # latency of every Nth received msg (rounded up to a power of 2)
    connect_concurrency: int = 200
    connect_timeout: float = 60.0
    user_prefix: str = "b"


@dataclass
class WorkerReady:
    index: int
    connected: int
    connect_failures: int
    connect_s: float
    first_error: str = ""


@dataclass
class WorkerResult:
    """Counts over the measured window [t_measure, t_end] and the encoded histograms."""

    index: int
    published: int = 0
    acked: int = 0
    delivered: int = 0
    errors: int = 0
    disconnects: int = 0
    cpu_s: float = 0.0
    latency: bytes = b""  # publish -> deliver, µs
    ack_latency: bytes = b""  # pub -> ack, µs
    connect_latency: bytes = b""  # TCP connect -> welcome, µs (all connections)
    extra: dict[str, Any] = field(default_factory=dict)


# --- frames ----------------------------------------------------------------------------


def client_frame(payload: bytes) -> bytes:
    """A final text frame with a zero masking key (see the module docstring)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0xFF, n)
    return head + b"\0\0\0\0" + payload


class PubBuilder:
    """`pub` frames for one channel whose `data` is `payload` bytes of JSON holding the
    send stamp: {"t":<monotonic ns>,"p":"xxx…"}."""

    __slots__ = ("_pads", "_prefix", "_size")

    def __init__(self, channel: str, payload: int) -> None:
        self._prefix = b'{"op":"pub","ch":"' + channel.encode() + b'","data":{"t":'
        self._size = payload
        self._pads: dict[int, bytes] = {}

    def frame(self, t_ns: int) -> bytes:
        stamp = str(t_ns).encode()
        tail = self._pads.get(len(stamp))
        if tail is None:
            pad = max(0, self._size - 13 - len(stamp))  # 13 = len('{"t":' ',"p":"' '"}')
            tail = self._pads[len(stamp)] = b',"p":"' + b"x" * pad + b'"}}'
        return client_frame(self._prefix + stamp + tail)


def send_stamp(payload: bytes) -> int:
    """The publisher's `"t"` stamp in a msg frame, or -1. Tolerates `"t": 1` spacing."""
    i = payload.find(b'"t"')
    if i < 0:
        return -1
    rest = payload[i + 3 : i + 40].lstrip(b": ")
    end = 0
    while end < len(rest) and 48 <= rest[end] <= 57:
        end += 1
    return int(rest[:end]) if end else -1


# --- clients ---------------------------------------------------------------------------


class Client(WSListener):
    """Base: counts frames; the first `setup` frames (welcome, subscribed) are kept."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.w = worker
        self.n = 0  # frames received
        self.transport: WSTransport | None = None
        self.setup: list[bytes] = []
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self.gone = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gone = True
        self.w.disconnects += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("disconnected during setup"))

    def _setup_frame(self, frame: WSFrame) -> None:
        self.setup.append(frame.get_payload_as_bytes())
        waiter = self._waiter
        if waiter is not None and not waiter.done() and len(self.setup) >= self._want:
            waiter.set_result(None)

    async def wait_setup(self, count: int, timeout: float) -> None:
        if len(self.setup) >= count:
            return
        self._want = count
        self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self._waiter, timeout)

    def send_text(self, text: bytes) -> None:
        assert self.transport is not None
        self.transport.underlying_transport.write(client_frame(text))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.n += 1
        if self.n <= 2:
            self._setup_frame(frame)


class Subscriber(Client):
    """Receives only: counts every frame, reads the stamp of every `mask + 1`-th one."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.mask = worker.sample_mask

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        n = self.n + 1
        self.n = n
        if n & self.mask == 0 or n <= 2:
            if n <= 2:
                self._setup_frame(frame)
            elif self.w.recording:
                self.w.sample_delivery(frame.get_payload_as_bytes())


class Publisher(Client):
    """Publishes to one channel; every frame after the welcome answers one of its pubs."""

    def __init__(self, worker: Worker, channel: str, setup_frames: int) -> None:
        super().__init__(worker)
        self.builder = PubBuilder(channel, worker.spec.payload)
        self.setup_frames = setup_frames
        self.sent = 0
        self.acked = 0
        self.delivered = 0
        self.errors = 0
        self.inflight: collections.deque[int] = collections.deque()
        self.credit = 0
        self._flush_scheduled = False
        self.mask = worker.sample_mask

    def publish(self, count: int) -> None:
        transport = self.transport
        if count <= 0 or self.gone or transport is None:
            return
        now = time.monotonic_ns()
        frame = self.builder.frame(now)
        transport.underlying_transport.write(frame * count if count > 1 else frame)
        self.inflight.extend(itertools.repeat(now, count))
        self.sent += count

    def _answered(self, frame: WSFrame, op: int) -> None:
        inflight = self.inflight
        sent_at = inflight.popleft() if inflight else 0
        if op == OP_ACK:
            self.acked += 1
            if self.acked & self.mask == 0 and self.w.recording and sent_at:
                self.w.sample_ack(sent_at)
        else:
            self.errors += 1
            if self.errors == 1:
                self.w.note_error(frame.get_payload_as_bytes())
        if self.w.window_open:
            self.credit += 1
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.w.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        credit, self.credit = self.credit, 0
        if self.w.publishing:
            self.publish(credit)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        n = self.n + 1
        self.n = n
        if n <= self.setup_frames:
            self._setup_frame(frame)
            return
        payload = frame.get_payload_as_memoryview()
        if len(payload) > OP_AT:  # not a close frame
            self._answered(frame, payload[OP_AT])


class Member(Publisher):
    """Rooms: subscribed to its room and publishing to it; gets both msgs and acks."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        n = self.n + 1
        self.n = n
        if n <= self.setup_frames:
            self._setup_frame(frame)
            return
        payload = frame.get_payload_as_bytes()
        if len(payload) <= OP_AT:  # a close frame
            return
        op = payload[OP_AT]
        if op == OP_MSG:
            self.delivered += 1
            if self.delivered & self.mask == 0 and self.w.recording:
                self.w.sample_delivery(payload)
        else:
            self._answered(frame, op)


# --- the worker ------------------------------------------------------------------------


class Worker:
    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        every = max(1, spec.sample_every)
        self.sample_mask = (1 << (every - 1).bit_length()) - 1
        self.recording = False
        self.publishing = False
        self.window_open = spec.window > 0
        self.disconnects = 0
        self.latency = new_histogram()
        self.ack_latency = new_histogram()
        self.connect_latency = new_histogram()
        self.subscribers: list[Subscriber] = []
        self.publishers: list[Publisher] = []  # members included
        self.idle: list[Client] = []
        self.connect_failures = 0
        self.first_error = ""
        self._pacer: asyncio.TimerHandle | None = None
        self._pace_sent = 0
        self._pace_t0 = 0.0
        self._rr = 0

    # --- samples ---

    def sample_delivery(self, payload: bytes) -> None:
        t = send_stamp(payload)
        if t > 0:
            us = (time.monotonic_ns() - t) // 1000
            self.latency.record_value(min(max(us, HIST_MIN_US), HIST_MAX_US))

    def sample_ack(self, sent_at_ns: int) -> None:
        us = (time.monotonic_ns() - sent_at_ns) // 1000
        self.ack_latency.record_value(min(max(us, HIST_MIN_US), HIST_MAX_US))

    def note_error(self, payload: bytes) -> None:
        if not self.first_error:
            self.first_error = payload[:200].decode(errors="replace")

    # --- connecting ---

    async def _connect(self, make: Any, sem: asyncio.Semaphore, user: str) -> Client | None:
        spec = self.spec
        sep = "&" if "?" in spec.url else "?"
        url = f"{spec.url}{sep}user={user}"
        async with sem:
            t0 = time.monotonic_ns()
            try:
                _, listener = await ws_connect(
                    make,
                    url,
                    websocket_handshake_timeout=spec.connect_timeout,
                    read_buffer_init_size=2048,
                    max_frame_size=64 * 1024 * 1024,
                )
                assert isinstance(listener, Client)
                client = listener
                await client.wait_setup(1, spec.connect_timeout)  # welcome
            except Exception as exc:
                self.connect_failures += 1
                if not self.first_error:
                    self.first_error = f"connect: {type(exc).__name__}: {exc}"
                return None
            us = (time.monotonic_ns() - t0) // 1000
            self.connect_latency.record_value(min(max(us, HIST_MIN_US), HIST_MAX_US))
            return client

    async def _subscribe(self, client: Client, channel: str) -> bool:
        client.send_text(b'{"op":"sub","ch":"' + channel.encode() + b'"}')
        try:
            await client.wait_setup(2, self.spec.connect_timeout)
        except Exception as exc:
            self.connect_failures += 1
            if not self.first_error:
                self.first_error = f"sub: {type(exc).__name__}: {exc}"
            return False
        if b'"subscribed"' not in client.setup[1]:
            self.connect_failures += 1
            if not self.first_error:
                self.first_error = "sub answered with " + client.setup[1][:200].decode(
                    errors="replace"
                )
            return False
        return True

    async def connect_all(self) -> WorkerReady:
        spec = self.spec
        sem = asyncio.Semaphore(spec.connect_concurrency)
        t0 = time.monotonic()
        prefix = f"{spec.user_prefix}{spec.index}"

        async def subscriber(i: int, ch: str) -> None:
            c = await self._connect(lambda: Subscriber(self), sem, f"{prefix}s{i}")
            if c is not None and await self._subscribe(c, ch):
                assert isinstance(c, Subscriber)
                self.subscribers.append(c)

        async def member(i: int, ch: str) -> None:
            c = await self._connect(lambda: Member(self, ch, 2), sem, f"{prefix}m{i}")
            if c is not None and await self._subscribe(c, ch):
                assert isinstance(c, Member)
                self.publishers.append(c)

        async def publisher(i: int, ch: str) -> None:
            c = await self._connect(lambda: Publisher(self, ch, 1), sem, f"{prefix}p{i}")
            if c is not None:
                assert isinstance(c, Publisher)
                self.publishers.append(c)

        async def idle(i: int) -> None:
            c = await self._connect(lambda: Client(self), sem, f"{prefix}i{i}")
            if c is not None:
                self.idle.append(c)

        await asyncio.gather(
            *(subscriber(i, ch) for i, ch in enumerate(spec.subscribers)),
            *(member(i, ch) for i, ch in enumerate(spec.members)),
            *(publisher(i, ch) for i, ch in enumerate(spec.publishers)),
            *(idle(i) for i in range(spec.idle)),
        )
        return WorkerReady(
            spec.index,
            len(self.subscribers) + len(self.publishers) + len(self.idle),
            self.connect_failures,
            time.monotonic() - t0,
            self.first_error,
        )

    # --- publishing ---

    def start_publishing(self) -> None:
        if not self.publishers:
            return
        self.publishing = True
        if self.spec.window > 0:
            for p in self.publishers:
                p.publish(self.spec.window)
        elif self.spec.rate > 0:
            self._pace_t0 = time.monotonic()
            self._pace_sent = 0
            self._pacer = self.loop.call_later(PACE_TICK_S, self._pace)

    def _pace(self) -> None:
        if not self.publishing:
            return
        due = int((time.monotonic() - self._pace_t0) * self.spec.rate) - self._pace_sent
        if due > 0:
            pubs = self.publishers
            each, extra = divmod(due, len(pubs))
            if each:
                for p in pubs:
                    p.publish(each)
            rr = self._rr
            for _ in range(extra):
                pubs[rr].publish(1)
                rr = (rr + 1) % len(pubs)
            self._rr = rr
            self._pace_sent += due
        self._pacer = self.loop.call_later(PACE_TICK_S, self._pace)

    def stop_publishing(self) -> None:
        self.publishing = False
        self.window_open = False
        if self._pacer is not None:
            self._pacer.cancel()

    # --- counters ---

    def snapshot(self) -> dict[str, int]:
        pubs = self.publishers
        return {
            "published": sum(p.sent for p in pubs),
            "acked": sum(p.acked for p in pubs),
            "errors": sum(p.errors for p in pubs),
            # subscribers count every frame: the two setup frames are before the window
            "delivered": sum(s.n for s in self.subscribers) + sum(p.delivered for p in pubs),
        }

    def close_all(self) -> None:
        for c in itertools.chain(self.subscribers, self.publishers, self.idle):
            if c.transport is not None and not c.gone:
                c.transport.disconnect(graceful=False)


async def _recv(loop: asyncio.AbstractEventLoop, pipe: Connection) -> Any:
    """Wait for the coordinator's next message without blocking the loop."""
    fut: asyncio.Future[Any] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(pipe.fileno())
        try:
            fut.set_result(pipe.recv())
        except Exception as exc:  # EOF: the coordinator is gone
            fut.set_exception(exc)

    loop.add_reader(pipe.fileno(), readable)
    return await fut


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run(spec: WorkerSpec, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(spec, loop)
    pipe.send(("ready", await worker.connect_all()))
    message = await _recv(loop, pipe)
    if message[0] != "go":
        worker.close_all()
        return
    _, t_start, t_measure, t_end = message
    await _sleep_until(t_start)
    worker.start_publishing()
    await _sleep_until(t_measure)
    before = worker.snapshot()
    disconnects = worker.disconnects
    cpu0 = time.process_time()
    worker.recording = True
    await _sleep_until(t_end)
    worker.recording = False
    after = worker.snapshot()
    cpu = time.process_time() - cpu0
    worker.stop_publishing()
    result = WorkerResult(
        spec.index,
        published=after["published"] - before["published"],
        acked=after["acked"] - before["acked"],
        delivered=after["delivered"] - before["delivered"],
        errors=after["errors"] - before["errors"],
        disconnects=worker.disconnects - disconnects,
        cpu_s=cpu,
        latency=worker.latency.encode(),
        ack_latency=worker.ack_latency.encode(),
        connect_latency=worker.connect_latency.encode(),
        extra={"first_error": worker.first_error},
    )
    pipe.send(("result", result))
    # Linger until the coordinator has read every result, so that no worker's hang-ups
    # land inside another worker's window.
    await _recv(loop, pipe)
    worker.close_all()


def worker_main(spec: WorkerSpec, pipe: Connection) -> None:
    """Entry point of a worker process."""
    raise_nofile_limit()
    import uvloop

    try:
        uvloop.run(run(spec, pipe))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        pipe.close()
