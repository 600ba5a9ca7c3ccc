"""Raw-socket clients for the adapter tests (tests/core/test_adapter_*.py): HTTP requests
and WebSocket frames written byte by byte, so malformed and hostile input can be sent."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from dataclasses import dataclass

from tests.helpers import UNIT

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def upgrade_request(path: str = "/ws", headers: dict[str, str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def parse_one(data: bytes, pos: int = 0) -> tuple[tuple[int, bool, bytes], int] | None:
    """The unmasked frame at `pos` and the position after it, or None if incomplete."""
    if len(data) - pos < 2:
        return None
    first, second = data[pos], data[pos + 1]
    n = second & 0x7F
    head = 2
    if n == 126:
        if len(data) - pos < 4:
            return None
        n = struct.unpack_from("!H", data, pos + 2)[0]
        head = 4
    elif n == 127:
        if len(data) - pos < 10:
            return None
        n = struct.unpack_from("!Q", data, pos + 2)[0]
        head = 10
    if len(data) - pos < head + n:
        return None
    frame = (first & 0x0F, bool(first & 0x80), data[pos + head : pos + head + n])
    return frame, pos + head + n


def parse_server_frames(data: bytes) -> tuple[list[tuple[int, bool, bytes]], bytes]:
    """Complete unmasked frames in `data`, and the bytes left over."""
    frames = []
    pos = 0
    while (parsed := parse_one(data, pos)) is not None:
        frame, pos = parsed
        frames.append(frame)
    return frames, data[pos:]


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_http(raw: bytes) -> HttpAnswer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpAnswer(status, headers, body)


async def http_raw(port: int, request: bytes, timeout: float = UNIT) -> HttpAnswer:
    """Send `request` as is and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return parse_http(raw)


class RawWS:
    """A WebSocket client that sends exactly the frames it is told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""
        self.response: HttpAnswer | None = None

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/ws",
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> RawWS:
        """`rcvbuf`: a small socket receive buffer, so that a client that never reads
        stops the server's writes soon (the memory tests measure what the server holds)."""
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        ws = cls(reader, writer)
        writer.write(upgrade_request(path, headers))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), UNIT)
        ws.response = parse_http(head)
        assert ws.response.status == 101, ws.response
        return ws

    async def send(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        self.writer.write(client_frame(opcode, payload, fin))
        await self.writer.drain()

    async def recv(self, timeout: float = UNIT) -> tuple[int, bool, bytes]:
        """The next frame; raises EOFError when the server closes the TCP connection."""
        while True:
            parsed = parse_one(self.buffer)
            if parsed is not None:
                frame, end = parsed
                self.buffer = self.buffer[end:]
                return frame
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buffer += chunk

    async def recv_until(self, opcode: int, timeout: float = UNIT) -> tuple[int, bool, bytes]:
        """Skip frames until one with `opcode` arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame[0] == opcode:
                return frame

    async def expect_close(self, timeout: float = UNIT) -> int:
        return close_code((await self.recv_until(OP_CLOSE, timeout))[2])

    async def closed_by_server(self, timeout: float = UNIT) -> bool:
        """True once the server has closed the TCP connection (EOF or reset)."""
        try:
            while True:
                chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not chunk:
                    return True
        except (ConnectionError, OSError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()
