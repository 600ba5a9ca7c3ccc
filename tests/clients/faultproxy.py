"""A loopback fault proxy for client tests: an asyncio TCP proxy between a WebSocket client
and a ferry server that can break the connection in the ways real networks do.

    client ──TCP──▶ FaultProxy(127.0.0.1:port) ──TCP──▶ ferry serve (upstream)

Faults (each returns at once; they act on the event loop the proxy runs on):

* `cut()`           abort every open connection (RST both ways: the client sees 1006)
* `refuse(True)`    new connections are accepted and reset at once (`refuse(False)` ends it)
* `blackhole()`     the open connections stop forwarding in both directions, their sockets
                    stay open (a half-open link: only a deadline can notice it); new
                    connections are forwarded normally
* `drop_ack(match)` the next server→client `ack` frame for which `match(frame)` is true is
                    not forwarded and its connection is cut right there (what the client got
                    before it, it keeps). Returns a future with the dropped frame.

It parses both directions (the HTTP upgrade, then RFC 6455 frames: the server's unmasked,
the client's masked), decodes JSON text and msgpack binary frames, and records them
(`frames(...)`), so a test can count what really crossed the wire (e.g. `rate_limited`
errors, or the `mid` of every `pub` a client resent). Only complete frames are forwarded.

Stand-alone on purpose (stdlib + msgspec for msgpack): clients in other languages copy it.
As a process, for tests written in another language:

    python faultproxy.py --upstream 127.0.0.1:8080 [--listen 0] [--control 0]

prints one JSON line {"port": P, "control": C}; the control port takes one command per
line (`cut`, `refuse on`, `refuse off`, `blackhole`, `drop-ack [ID]`, `stats`) and answers
one JSON line each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:
    import msgspec

    _msgpack_decode: Callable[[bytes], Any] | None = msgspec.msgpack.decode
except ImportError:  # pragma: no cover - msgspec is a ferry dependency
    _msgpack_decode = None

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
C2S, S2C = "c2s", "s2c"
READ_CHUNK = 1 << 16


@dataclass
class WireFrame:
    """One WebSocket frame as it crossed the proxy."""

    direction: str  # C2S or S2C
    conn: int  # the proxy's connection number (1, 2, ...)
    opcode: int
    fin: bool
    payload: bytes  # unmasked
    frame: dict[str, Any] | None = None  # the decoded protocol frame (text/binary only)

    @property
    def op(self) -> str | None:
        return None if self.frame is None else self.frame.get("op")

    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])


class FrameParser:
    """Splits one direction of a WebSocket connection into the HTTP head and frames.

    `feed(data)` returns [(raw bytes, parsed frame or None for the HTTP head)], complete
    pieces only; the rest waits for more data. After a non-101 response no frames follow:
    everything is passed through as raw bytes."""

    def __init__(self, masked: bool) -> None:
        self.masked = masked
        self.buf = bytearray()
        self.in_head = True
        self.upgraded = True  # until a response says otherwise
        self.fragments: list[bytes] = []
        self.fragment_opcode = 0

    def feed(self, data: bytes) -> list[tuple[bytes, tuple[int, bool, bytes] | None]]:
        self.buf += data
        out: list[tuple[bytes, tuple[int, bool, bytes] | None]] = []
        if self.in_head:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            head = bytes(self.buf[: end + 4])
            del self.buf[: end + 4]
            self.in_head = False
            if not self.masked:  # the server's answer: frames follow only after a 101
                self.upgraded = head.startswith(b"HTTP/1.1 101")
            out.append((head, None))
        if not self.upgraded:
            if self.buf:
                out.append((bytes(self.buf), None))
                self.buf.clear()
            return out
        while True:
            parsed = self._one()
            if parsed is None:
                return out
            out.append(parsed)

    def _one(self) -> tuple[bytes, tuple[int, bool, bytes]] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        n = second & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n = struct.unpack_from("!H", buf, 2)[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n = struct.unpack_from("!Q", buf, 2)[0]
            pos = 10
        mask = b""
        if second & 0x80:
            if len(buf) < pos + 4:
                return None
            mask = bytes(buf[pos : pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        raw = bytes(buf[: pos + n])
        payload = raw[pos:]
        del buf[: pos + n]
        if mask:
            payload = _unmask(payload, mask)
        return raw, (first & 0x0F, bool(first & 0x80), payload)

    def message(self, opcode: int, fin: bool, payload: bytes) -> tuple[int, bytes] | None:
        """Reassemble data frames: (opcode, whole payload) when a message is complete."""
        if opcode >= 0x8:
            return None
        if opcode != OP_CONT:
            self.fragment_opcode = opcode
            self.fragments = []
        self.fragments.append(payload)
        if not fin:
            return None
        whole = b"".join(self.fragments)
        self.fragments = []
        return self.fragment_opcode, whole


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big") if n else 0
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""


def decode(opcode: int, payload: bytes) -> dict[str, Any] | None:
    """A protocol frame from a text (JSON) or binary (msgpack) message, None if it is not
    one."""
    try:
        if opcode == OP_TEXT:
            value = json.loads(payload)
        elif opcode == OP_BINARY and _msgpack_decode is not None:
            value = _msgpack_decode(payload)
        else:
            return None
    except ValueError:
        return None
    except Exception:  # msgspec.DecodeError is a ValueError; anything else: not a frame
        return None
    return value if isinstance(value, dict) else None


AckMatch = Callable[[dict[str, Any]], bool]


@dataclass
class _DropRule:
    match: AckMatch
    future: asyncio.Future[dict[str, Any]]


@dataclass
class _Conn:
    number: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    blackholed: bool = False
    closed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class FaultProxy:
    def __init__(
        self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self.conns: dict[int, _Conn] = {}
        self.accepted = 0  # connections accepted and forwarded, ever
        self.refused = 0  # connections reset by refuse()
        self.cuts = 0  # connections aborted by a fault
        self.wire: list[WireFrame] = []
        self.record = True
        self._refusing = False
        self._drop_rules: list[_DropRule] = []
        self._changed = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns.values()):
            conn.abort()
        tasks = [t for c in self.conns.values() for t in c.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, path: str = "/ws") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    # --- faults ------------------------------------------------------------------------

    def cut(self) -> int:
        """Abort every open connection; returns how many."""
        n = 0
        for conn in list(self.conns.values()):
            if not conn.closed:
                conn.abort()
                n += 1
        self.cuts += n
        self._notify()
        return n

    def refuse(self, on: bool = True) -> None:
        """While on, new connections are reset as soon as they are accepted."""
        self._refusing = on

    def blackhole(self) -> int:
        """Stop forwarding on every open connection (both ways), keep its sockets open."""
        n = 0
        for conn in self.conns.values():
            if not conn.closed and not conn.blackholed:
                conn.blackholed = True
                n += 1
        return n

    def drop_ack(self, match: AckMatch | None = None) -> asyncio.Future[dict[str, Any]]:
        """Drop the next server→client `ack` for which `match(frame)` holds (any ack when
        None), then cut its connection. The future gets the dropped frame."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._drop_rules.append(_DropRule(match or (lambda _f: True), future))
        return future

    # --- observation -----------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self.conns.values() if not c.closed)

    def frames(
        self, direction: str | None = None, op: str | None = None, conn: int | None = None
    ) -> list[dict[str, Any]]:
        """The decoded protocol frames recorded so far, oldest first."""
        return [
            w.frame
            for w in self.wire
            if w.frame is not None
            and (direction is None or w.direction == direction)
            and (op is None or w.op == op)
            and (conn is None or w.conn == conn)
        ]

    def close_codes(self, direction: str = S2C) -> list[int]:
        """Close codes sent in `direction` (server→client by default)."""
        codes = [w.close_code() for w in self.wire if w.direction == direction]
        return [c for c in codes if c is not None]

    async def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until `predicate()` holds (checked whenever traffic or connections change)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"faultproxy: timed out after {timeout:.1f}s: {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.05))

    def _notify(self) -> None:
        self._changed.set()

    # --- forwarding --------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()  # upstream down: the client sees a reset, as without us
            return
        self.accepted += 1
        number = self.accepted
        conn = _Conn(number, writer, up_writer)
        self.conns[number] = conn
        self._notify()
        c2s = asyncio.create_task(self._pump(conn, reader, up_writer, C2S))
        s2c = asyncio.create_task(self._pump(conn, up_reader, writer, S2C))
        conn.tasks = [c2s, s2c]
        try:
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # One side ended: end the other (a graceful close already forwarded its bytes).
            if not conn.closed:
                conn.closed = True
                for w in (writer, up_writer):
                    with contextlib.suppress(Exception):
                        w.close()
            for task in conn.tasks:
                task.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            self.conns.pop(number, None)
            self._notify()

    async def _pump(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        parser = FrameParser(masked=direction == C2S)
        try:
            while True:
                data = await src.read(READ_CHUNK)
                if not data:
                    return
                if conn.blackholed:
                    continue  # swallowed: nothing arrives, nothing is closed
                out: list[bytes] = []
                for raw, parsed in parser.feed(data):
                    if parsed is not None and self._inspect(conn, parser, direction, parsed):
                        # What came before the dropped ack still reaches the client; then
                        # the connection ends without a close frame (the client sees 1006).
                        self.cuts += 1
                        conn.closed = True
                        conn.upstream.transport.abort()
                        with contextlib.suppress(Exception):
                            if out:
                                dst.write(b"".join(out))
                            await dst.drain()
                        dst.close()
                        self._notify()
                        return
                    out.append(raw)
                if out:
                    dst.write(b"".join(out))
                    await dst.drain()
                self._notify()
        except (ConnectionError, OSError):
            return

    def _inspect(
        self, conn: _Conn, parser: FrameParser, direction: str, parsed: tuple[int, bool, bytes]
    ) -> bool:
        """Record a frame; True when it is an ack to drop (the connection is then cut)."""
        opcode, fin, payload = parsed
        frame = None
        whole = parser.message(opcode, fin, payload)
        if whole is not None:
            frame = decode(*whole)
        if self.record:
            self.wire.append(WireFrame(direction, conn.number, opcode, fin, payload, frame))
        if direction != S2C or frame is None or frame.get("op") != "ack":
            return False
        for rule in self._drop_rules:
            if rule.future.done():
                continue
            if rule.match(frame):
                self._drop_rules.remove(rule)
                rule.future.set_result(frame)
                return True
        return False


# --- as a process ----------------------------------------------------------------------


async def _control(
    proxy: FaultProxy, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    while line := (await reader.readline()).decode().strip():
        cmd, _, arg = line.partition(" ")
        answer: dict[str, Any] = {"ok": True}
        if cmd == "cut":
            answer["cut"] = proxy.cut()
        elif cmd == "refuse":
            proxy.refuse(arg != "off")
        elif cmd == "blackhole":
            answer["blackholed"] = proxy.blackhole()
        elif cmd == "drop-ack":
            proxy.drop_ack((lambda f, want=arg: str(f.get("id")) == want) if arg else None)
        elif cmd == "stats":
            answer.update(
                open=proxy.open_connections,
                accepted=proxy.accepted,
                refused=proxy.refused,
                cuts=proxy.cuts,
                s2c_errors=[f.get("code") for f in proxy.frames(S2C, "error")],
                close_codes=proxy.close_codes(),
            )
        else:
            answer = {"ok": False, "error": f"unknown command {cmd!r}"}
        w.write((json.dumps(answer) + "\n").encode())
        await w.drain()
    w.close()


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    proxy = await FaultProxy(host or "127.0.0.1", int(port), port=args.listen).start()
    control = await asyncio.start_server(
        lambda r, w: _control(proxy, r, w), "127.0.0.1", args.control
    )
    print(
        json.dumps({"port": proxy.port, "control": control.sockets[0].getsockname()[1]}),
        flush=True,
    )
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="a loopback fault proxy for WebSocket clients")
    p.add_argument("--upstream", required=True, help="HOST:PORT of the server")
    p.add_argument("--listen", type=int, default=0, help="port to listen on (0: any)")
    p.add_argument("--control", type=int, default=0, help="control port (0: any)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(p.parse_args(sys.argv[1:])))
