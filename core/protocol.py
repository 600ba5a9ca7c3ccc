"""Protocol v1 (docs/design.md §3): every frame is one map with an `op` field.

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

from common.durability import Encoding
from core.errors import BadRequest

SUBPROTOCOLS: dict[str, Encoding] = {
    "ferry.v1.json": Encoding.JSON,
    "ferry.v1.msgpack": Encoding.MSGPACK,
}
SUBPROTOCOL_NAMES = {v: k for k, v in SUBPROTOCOLS.items()}
PROTOCOL_VERSION = 1

# The characters of channel names and user ids (a user's inbox is "@" + user id).
NAME_CHARS = r"[A-Za-z0-9_.:@$-]"
MAX_CHANNEL_CHARS = 200
CHANNEL_RE = re.compile(f"{NAME_CHARS}{{1,{MAX_CHANNEL_CHARS}}}")
# The server's own channels: written by the server only, readable by the admin only.
SYS_PREFIX = "$sys."
STATS_CHANNEL = SYS_PREFIX + "stats"
TAIL_CHANNEL = SYS_PREFIX + "tail"
FLOW_CHANNEL = SYS_PREFIX + "flow"
SERVER_CHANNELS = frozenset({STATS_CHANNEL, TAIL_CHANNEL, FLOW_CHANNEL})

# A client message id is echoed verbatim and logged; bounded so it fits the database column.
MsgId = Annotated[str, msgspec.Meta(max_length=128)] | int | None
# A publisher's message id (idempotent publish): unique per message, kept in the WAL.
Mid = Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None
# An epoch as `welcome` and `subscribed` carry it (16 hex digits; any short string is read).
Epoch = Annotated[str, msgspec.Meta(max_length=64)] | None


# --- client -> server -----------------------------------------------------------------


class Sub(msgspec.Struct, tag="sub", tag_field="op"):
    ch: str
    since: int | None = None
    id: MsgId = None
    epoch: Epoch = None  # the epoch `since` belongs to
    presence: bool = False  # also send `join` / `leave` as users come and go


class Unsub(msgspec.Struct, tag="unsub", tag_field="op"):
    ch: str
    id: MsgId = None


class Pub(msgspec.Struct, tag="pub", tag_field="op"):
    ch: str
    data: msgspec.Raw
    id: MsgId = None
    mid: Mid = None


class Ping(msgspec.Struct, tag="ping", tag_field="op"):
    id: MsgId = None


class Auth(msgspec.Struct, tag="auth", tag_field="op"):
    """Present a fresh token on an open connection (before the old one expires)."""

    token: Annotated[str, msgspec.Meta(max_length=8192)]
    id: MsgId = None


# A user id as a presence cursor (`presence.after`): a user id is a channel name minus "@".
UserCursor = Annotated[str, msgspec.Meta(max_length=MAX_CHANNEL_CHARS)] | None
PRESENCE_PAGE = 100  # users per `presence` answer unless `limit` says otherwise
MAX_PRESENCE_PAGE = 1000


class Presence(msgspec.Struct, tag="presence", tag_field="op"):
    """Who is subscribed to `ch` now: a count and one page of users (by user id)."""

    ch: str
    after: UserCursor = None  # the page starts after this user id (the last `next`)
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PRESENCE_PAGE)] = PRESENCE_PAGE
    id: MsgId = None


ClientFrame = Sub | Unsub | Pub | Ping | Auth | Presence

DECODERS: dict[
    Encoding, msgspec.json.Decoder[ClientFrame] | msgspec.msgpack.Decoder[ClientFrame]
] = {
    Encoding.JSON: msgspec.json.Decoder(ClientFrame),
    Encoding.MSGPACK: msgspec.msgpack.Decoder(ClientFrame),
}


# --- server -> client -----------------------------------------------------------------


class ClientLimits(msgspec.Struct):
    """What a client must respect not to be refused (`welcome.limits`)."""

    max_frame_bytes: int
    max_data_bytes: int
    publish_rate: float
    publish_burst: int
    max_subscriptions: int
    history_size: int
    dedupe_window_s: float
    idle_timeout_s: float


class Inbox(msgspec.Struct):
    ch: str
    seq: int


class Welcome(msgspec.Struct, tag="welcome", tag_field="op"):
    client: str
    user: str
    node: str
    version: int = PROTOCOL_VERSION
    epoch: str = ""
    limits: ClientLimits | None = None
    inbox: Inbox | None = None


class Subscribed(msgspec.Struct, tag="subscribed", tag_field="op", omit_defaults=True):
    ch: str
    seq: int
    epoch: str = ""
    recovered: bool | None = None
    id: MsgId = None


class Unsubscribed(msgspec.Struct, tag="unsubscribed", tag_field="op", omit_defaults=True):
    ch: str
    id: MsgId = None
    # set when the server ended the subscription itself (a refreshed token no longer allows it)
    reason: str | None = None


class Refreshed(msgspec.Struct, tag="refreshed", tag_field="op", omit_defaults=True):
    """The answer to `auth` on an open connection: the new token is in force."""

    user: str
    exp: int | None = None  # Unix seconds when the new token expires
    id: MsgId = None


class Ack(msgspec.Struct, tag="ack", tag_field="op", omit_defaults=True):
    ch: str
    seq: int
    id: MsgId = None
    dup: bool = False  # a retry of an accepted `mid`: `seq` is the original's


class Pong(msgspec.Struct, tag="pong", tag_field="op", omit_defaults=True):
    id: MsgId = None


class Error(msgspec.Struct, tag="error", tag_field="op", omit_defaults=True):
    code: str
    reason: str
    id: MsgId = None


class Member(msgspec.Struct):
    """One user in a presence page: how many of its connections are subscribed."""

    user: str
    conns: int


class PresencePage(msgspec.Struct, tag="presence", tag_field="op", omit_defaults=True):
    """The answer to `presence` (and the body of GET /api/v1/channels/{ch}/presence).

    `users` and `connections` count everything; `members` is one page of users in order
    of user id, and `next` the cursor (`after`) of the page after it (null: the last)."""

    ch: str
    users: int
    connections: int
    members: list[Member]
    next: str | None
    id: MsgId = None


class Join(msgspec.Struct, tag="join", tag_field="op"):
    """A user's first connection subscribed to `ch` (to subscribers that asked with
    `sub … presence: true`)."""

    ch: str
    user: str


class Leave(msgspec.Struct, tag="leave", tag_field="op"):
    """A user's last connection subscribed to `ch` left it."""

    ch: str
    user: str


class Msg(msgspec.Struct, tag="msg", tag_field="op"):
    ch: str
    seq: int
    ts: int
    from_: str = msgspec.field(name="from")
    data: msgspec.Raw = msgspec.Raw(b"null")


class UntranscodableMsg(msgspec.Struct, tag="msg", tag_field="op"):
    """A `msg` whose value cannot be represented in this subscriber's encoding. `pub`
    refuses such values, so only a message logged before that check existed (an old WAL)
    can come out like this: the seq still arrives, with `data` null and an `error`."""

    ch: str
    seq: int
    ts: int
    from_: str = msgspec.field(name="from")
    data: None = None
    error: str = "untranscodable"


ServerFrame = (
    Welcome | Subscribed | Unsubscribed | Refreshed | Ack | Pong | Error | Msg | PresencePage
    | Join | Leave
)  # fmt: skip

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


_JSON = Encoding.JSON  # bound once (check_value)
_MSGPACK = Encoding.MSGPACK


def transcode(data: bytes, source: Encoding, target: Encoding) -> bytes:
    """Re-encode a published value for subscribers of the other encoding.

    msgpack -> JSON: bin values become base64 strings (msgspec's JSON rule for bytes).
    JSON -> msgpack: integers outside 64 bits cannot be msgpack ints; such a value is
    delivered as its JSON text in a msgpack string rather than dropped.
    """
    if source == target:
        return data
    if source == _JSON:
        value = _json_any.decode(data)
        try:
            return _msgpack_encoder.encode(value)
        except OverflowError:
            return _msgpack_encoder.encode(data.decode())
    return _json_encoder.encode(_msgpack_any.decode(data))


class UnportableValue(BadRequest):
    """A published value that cannot be delivered in both encodings (the reason says why);
    a bad_request (core/errors.py)."""


# Bytes that may start an array or a map in msgpack (fixmap, fixarray, array16/32,
# map16/32): how many of them a value holds bounds how deeply it can nest.
_MSGPACK_NOT_CONTAINER = bytes(
    b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF)
)


def check_value(data: bytes, encoding: Encoding, max_depth: int) -> None:
    """Raise `UnportableValue` unless `data` can reach subscribers of both encodings.

    `pub` calls this, so fan-out and history replay never meet a value they cannot
    encode: a value is accepted exactly when `transcode` to the other encoding succeeds
    and its arrays/maps nest at most `max_depth` deep. The transcode costs ~0.5 us for a
    60-byte value here; the nesting bound is one C-level count for nearly every value
    (the number of brackets bounds the depth) and a walk only when that count is high.
    The Encoding members are bound once: an IntEnum attribute costs ~0.1 us a lookup.
    """
    try:
        if encoding == _JSON:
            transcode(data, encoding, _MSGPACK)
            containers = data.count(b"[") + data.count(b"{")
        else:
            transcode(data, encoding, _JSON)
            containers = len(data.translate(None, _MSGPACK_NOT_CONTAINER))
        if containers > max_depth:
            value = (_json_any if encoding == _JSON else _msgpack_any).decode(data)
            if _nests_deeper(value, max_depth):
                raise UnportableValue(f"data nests deeper than {max_depth} levels")
    except RecursionError:
        raise UnportableValue(f"data nests deeper than {max_depth} levels") from None
    except (msgspec.DecodeError, TypeError, ValueError, UnicodeError) as exc:
        raise UnportableValue(_unportable_reason(exc, encoding)) from None


def _nests_deeper(value: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:  # type: ignore[attr-defined]
            if isinstance(child, (list, dict)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _unportable_reason(exc: Exception, encoding: Encoding) -> str:
    """A client-facing reason for a value `transcode` refused (never the exception text of
    something unexpected)."""
    text = str(exc)
    if encoding == Encoding.JSON:
        if "out of range" in text:
            return "data holds a number that no msgpack number can hold"
        if isinstance(exc, UnicodeError):
            return "data holds a string with an unpaired UTF-16 surrogate"
        return "data cannot be represented in msgpack"
    if "Ext" in text:
        return "data holds a msgpack extension type, which JSON cannot represent"
    if "keys" in text:
        return "data holds a map key that is not a string or number"
    if "UTF-8" in text:
        return "data holds a string that is not valid UTF-8"
    if "timestamp" in text.lower():
        return "data holds a malformed msgpack timestamp"
    return "data cannot be represented in JSON"


def valid_channel(name: str) -> bool:
    return CHANNEL_RE.fullmatch(name) is not None


def ping_frame(payload: bytes) -> bytes:
    """A server PING control frame (RFC 6455 §5.5.2); payload at most 125 bytes."""
    return frame_header(0x9, len(payload)) + payload


def pong_frame(payload: bytes) -> bytes:
    """A server PONG control frame answering a ping with this payload (RFC 6455 §5.5.3)."""
    return frame_header(0xA, len(payload)) + payload
