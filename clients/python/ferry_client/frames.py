"""Protocol v1 frames (docs/protocol.md) and their two encodings.

Client frames are encoded from Structs; a published value is encoded once (`encode_data`)
and carried as `msgspec.Raw`, so its size is known before sending and a resend reuses the
same bytes. Server frames are decoded into a tagged union; an `op` this client does not
know is skipped (forward compatibility), as are unknown fields.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class Encoding(enum.Enum):
    JSON = "json"
    MSGPACK = "msgpack"


SUBPROTOCOL = {Encoding.JSON: "ferry.v1.json", Encoding.MSGPACK: "ferry.v1.msgpack"}

MsgId = str | int | None

# --- client -> server -----------------------------------------------------------------


class Sub(msgspec.Struct, tag="sub", tag_field="op", omit_defaults=True):
    ch: str
    since: int | None = None
    epoch: str | None = None
    id: MsgId = None


class Unsub(msgspec.Struct, tag="unsub", tag_field="op", omit_defaults=True):
    ch: str
    id: MsgId = None


class Pub(msgspec.Struct, tag="pub", tag_field="op", omit_defaults=True):
    ch: str
    data: msgspec.Raw
    id: MsgId = None
    mid: str | None = None


class Ping(msgspec.Struct, tag="ping", tag_field="op", omit_defaults=True):
    id: MsgId = None


class Auth(msgspec.Struct, tag="auth", tag_field="op", omit_defaults=True):
    token: str
    id: MsgId = None


ClientFrame = Sub | Unsub | Pub | Ping | Auth

# --- server -> client -----------------------------------------------------------------


class Limits(msgspec.Struct, omit_defaults=True):
    max_frame_bytes: int | None = None
    max_data_bytes: int | None = None
    publish_rate: float | None = None
    publish_burst: int | None = None
    max_subscriptions: int | None = None
    history_size: int | None = None
    dedupe_window_s: float | None = None
    idle_timeout_s: float | None = None


class Inbox(msgspec.Struct):
    ch: str
    seq: int


class Welcome(msgspec.Struct, tag="welcome", tag_field="op"):
    client: str = ""
    user: str = ""
    node: str = ""
    version: int = 1
    epoch: str | None = None
    limits: Limits | None = None
    inbox: Inbox | None = None


class Subscribed(msgspec.Struct, tag="subscribed", tag_field="op"):
    ch: str
    seq: int
    epoch: str | None = None
    recovered: bool | None = None
    id: MsgId = None


class Unsubscribed(msgspec.Struct, tag="unsubscribed", tag_field="op"):
    ch: str
    id: MsgId = None
    reason: str | None = None


class Refreshed(msgspec.Struct, tag="refreshed", tag_field="op"):
    user: str = ""
    exp: int | None = None
    id: MsgId = None


class AckFrame(msgspec.Struct, tag="ack", tag_field="op"):
    ch: str
    seq: int
    id: MsgId = None
    dup: bool = False


class Pong(msgspec.Struct, tag="pong", tag_field="op"):
    id: MsgId = None


class ErrorFrame(msgspec.Struct, tag="error", tag_field="op"):
    code: str
    reason: str = ""
    id: MsgId = None


class MsgFrame(msgspec.Struct, tag="msg", tag_field="op"):
    ch: str
    seq: int
    ts: int = 0
    from_: str = msgspec.field(default="", name="from")
    data: Any = None
    error: str | None = None


ServerFrame = (
    Welcome | Subscribed | Unsubscribed | Refreshed | AckFrame | Pong | ErrorFrame | MsgFrame
)


class _Op(msgspec.Struct):
    op: str = ""


class Codec:
    """One encoding's encoders and decoders."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        self.binary = encoding is Encoding.MSGPACK
        self.subprotocol = SUBPROTOCOL[encoding]
        self._encode: Any
        self._decode: Any
        self._op: Any
        if self.binary:
            self._encode = msgspec.msgpack.Encoder().encode
            self._decode = msgspec.msgpack.Decoder(ServerFrame).decode
            self._op = msgspec.msgpack.Decoder(_Op).decode
        else:
            self._encode = msgspec.json.Encoder().encode
            self._decode = msgspec.json.Decoder(ServerFrame).decode
            self._op = msgspec.json.Decoder(_Op).decode

    def encode(self, frame: ClientFrame) -> bytes:
        out: bytes = self._encode(frame)
        return out

    def encode_data(self, value: Any) -> bytes:
        """A published value, encoded once (its length is what `max_data_bytes` bounds)."""
        out: bytes = self._encode(value)
        return out

    def decode(self, payload: bytes) -> ServerFrame | None:
        """The frame, or None for an op this client does not know. Raises
        `msgspec.DecodeError` for bytes that are no frame at all."""
        try:
            frame: ServerFrame = self._decode(payload)
            return frame
        except msgspec.ValidationError:
            op = self._op(payload).op  # raises DecodeError if it is not even a map
            if op in _KNOWN_OPS:
                raise
            return None


_KNOWN_OPS = frozenset(
    {"welcome", "subscribed", "unsubscribed", "refreshed", "ack", "pong", "error", "msg"}
)
