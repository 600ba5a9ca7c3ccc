"""Protocol v1 (DESIGN §3): every frame is one map with an `op` field.

Client frames are a tagged union decoded by ONE long-lived decoder per encoding. A
published value stays `msgspec.Raw`: it is validated for syntax by the decoder, never
decoded into Python objects, and spliced verbatim into outgoing `msg` frames.

Two encodings, chosen by `Sec-WebSocket-Protocol`:
  ferry.v1.json     text frames (the default)
  ferry.v1.msgpack  binary frames

Outgoing frames are built here too, including the RFC 6455 §5.2 frame header, so the
fan-out can encode each `msg` once and hand the very same bytes to every subscriber.
"""

from __future__ import annotations

import re
import struct
from typing import Annotated

import msgspec

from core.log import Encoding

SUBPROTOCOLS: dict[str, Encoding] = {
    "ferry.v1.json": Encoding.JSON,
    "ferry.v1.msgpack": Encoding.MSGPACK,
}
SUBPROTOCOL_NAMES = {v: k for k, v in SUBPROTOCOLS.items()}
PROTOCOL_VERSION = 1

CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:@$-]{1,200}")
SYS_PREFIX = "$sys."

# A client message id is echoed verbatim and logged; bounded so it fits the database column.
MsgId = Annotated[str, msgspec.Meta(max_length=128)] | int | None


# --- client -> server -----------------------------------------------------------------


class Sub(msgspec.Struct, tag="sub", tag_field="op"):
    ch: str
    since: int | None = None
    id: MsgId = None


class Unsub(msgspec.Struct, tag="unsub", tag_field="op"):
    ch: str
    id: MsgId = None


class Pub(msgspec.Struct, tag="pub", tag_field="op"):
    ch: str
    data: msgspec.Raw
    id: MsgId = None


class Ping(msgspec.Struct, tag="ping", tag_field="op"):
    id: MsgId = None


ClientFrame = Sub | Unsub | Pub | Ping

DECODERS: dict[
    Encoding, msgspec.json.Decoder[ClientFrame] | msgspec.msgpack.Decoder[ClientFrame]
] = {
    Encoding.JSON: msgspec.json.Decoder(ClientFrame),
    Encoding.MSGPACK: msgspec.msgpack.Decoder(ClientFrame),
}


# --- server -> client -----------------------------------------------------------------


class Welcome(msgspec.Struct, tag="welcome", tag_field="op"):
    client: str
    user: str
    node: str
    version: int = PROTOCOL_VERSION


class Subscribed(msgspec.Struct, tag="subscribed", tag_field="op", omit_defaults=True):
    ch: str
    seq: int
    recovered: bool | None = None
    id: MsgId = None


class Unsubscribed(msgspec.Struct, tag="unsubscribed", tag_field="op", omit_defaults=True):
    ch: str
    id: MsgId = None


class Ack(msgspec.Struct, tag="ack", tag_field="op", omit_defaults=True):
    ch: str
    seq: int
    id: MsgId = None


class Pong(msgspec.Struct, tag="pong", tag_field="op", omit_defaults=True):
    id: MsgId = None


class Error(msgspec.Struct, tag="error", tag_field="op", omit_defaults=True):
    code: str
    reason: str
    id: MsgId = None


class Msg(msgspec.Struct, tag="msg", tag_field="op"):
    ch: str
    seq: int
    ts: int
    from_: str = msgspec.field(name="from")
    data: msgspec.Raw = msgspec.Raw(b"null")


ServerFrame = Welcome | Subscribed | Unsubscribed | Ack | Pong | Error | Msg

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
ENCODE = {
    Encoding.JSON: _json_encoder.encode,
    Encoding.MSGPACK: _msgpack_encoder.encode,
}
OPCODE = {Encoding.JSON: 0x1, Encoding.MSGPACK: 0x2}  # text, binary

_json_any = msgspec.json.Decoder()
_msgpack_any = msgspec.msgpack.Decoder()


def frame_header(opcode: int, length: int) -> bytes:
    """RFC 6455 §5.2 header of an unmasked, final server frame."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def ws_frame(encoding: Encoding, payload: bytes) -> bytes:
    """A complete WebSocket frame carrying `payload` in `encoding`'s frame type."""
    return frame_header(OPCODE[encoding], len(payload)) + payload


def encode_frame(encoding: Encoding, frame: ServerFrame) -> bytes:
    """Encode a server frame and wrap it in a WebSocket frame."""
    return ws_frame(encoding, ENCODE[encoding](frame))


def transcode(data: bytes, source: Encoding, target: Encoding) -> bytes:
    """Re-encode a published value for subscribers of the other encoding.

    msgpack -> JSON: bin values become base64 strings (msgspec's JSON rule for bytes).
    JSON -> msgpack: integers outside 64 bits cannot be msgpack ints; such a value is
    delivered as its JSON text in a msgpack string rather than dropped.
    """
    if source == target:
        return data
    if source == Encoding.JSON:
        value = _json_any.decode(data)
        try:
            return _msgpack_encoder.encode(value)
        except OverflowError:
            return _msgpack_encoder.encode(data.decode())
    return _json_encoder.encode(_msgpack_any.decode(data))


def valid_channel(name: str) -> bool:
    return CHANNEL_RE.fullmatch(name) is not None


def ping_frame(payload: bytes) -> bytes:
    """A server PING control frame (RFC 6455 §5.5.2); payload at most 125 bytes."""
    return frame_header(0x9, len(payload)) + payload


def pong_frame(payload: bytes) -> bytes:
    """A server PONG control frame answering a ping with this payload (RFC 6455 §5.5.3)."""
    return frame_header(0xA, len(payload)) + payload
