"""The messages cluster nodes exchange over NATS (msgpack, array-like structs).

Subjects, with `<cid>` the cluster id (`FERRY_CLUSTER_ID`):

    <cid>.fwd.<node>    request  Forward -> ForwardReply     publishes for its channels
    <cid>.ctl.<node>    request  Sync -> SyncReply           heads of one slot's channels
                        request  HistoryRequest -> HistoryReply   a channel's messages
    <cid>.feed.<slot>   publish  Feed                        one owner's durable batch, per slot
    <cid>.hb.<node>     publish  Heartbeat                   incarnation + every slot's counter

A `Forward` carries the sender's node-list digest: an owner whose list differs answers
`not_owner` for every item rather than write a channel it does not own.
"""

from __future__ import annotations

import msgspec

# A forward's item outcome codes besides success (ForwardReply.results[i] is a list
# [seq, ts_ms, dup] or one of these strings).
UNAVAILABLE = "unavailable"
LIMIT_EXCEEDED = "limit_exceeded"
TOO_LARGE = "too_large"
NOT_OWNER = "not_owner"


class Item(msgspec.Struct, array_like=True):
    """One forwarded publish."""

    channel: str
    data: bytes
    encoding: int
    sender: str
    owner: str | None  # the user a new channel counts against (None: exempt)
    mid: str | None
    client_msg_id: str | int | None


class Forward(msgspec.Struct, array_like=True, tag="fwd"):
    digest: str
    items: list[Item]


class Done(msgspec.Struct, array_like=True):
    seq: int
    ts_ms: int
    dup: bool


class ForwardReply(msgspec.Struct, array_like=True):
    epoch: str  # the owner's log epoch
    results: list[Done | str]


class Record(msgspec.Struct, array_like=True):
    """A durable message as followers deliver it."""

    channel: str
    seq: int
    ts_ms: int
    sender: str
    encoding: int
    data: bytes


class Feed(msgspec.Struct, array_like=True):
    incarnation: str
    counter: int
    records: list[Record]


class Heartbeat(msgspec.Struct, array_like=True):
    node: str
    incarnation: str
    counters: list[int]  # one per slot


class Sync(msgspec.Struct, array_like=True, tag="sync"):
    slot: int
    channels: list[str]


class SyncReply(msgspec.Struct, array_like=True):
    epoch: str  # the owner's log epoch: its channels' `subscribed.epoch` on every node
    incarnation: str
    counter: int
    heads: list[int]  # one per asked channel


class HistoryRequest(msgspec.Struct, array_like=True, tag="hist"):
    channel: str
    after: int
    before: int
    limit: int


class HistoryReply(msgspec.Struct, array_like=True):
    records: list[Record]


Control = Sync | HistoryRequest

ENCODE = msgspec.msgpack.Encoder().encode
FORWARD = msgspec.msgpack.Decoder(Forward)
FORWARD_REPLY = msgspec.msgpack.Decoder(ForwardReply)
FEED = msgspec.msgpack.Decoder(Feed)
HEARTBEAT = msgspec.msgpack.Decoder(Heartbeat)
CONTROL = msgspec.msgpack.Decoder(Control)
SYNC_REPLY = msgspec.msgpack.Decoder(SyncReply)
HISTORY_REPLY = msgspec.msgpack.Decoder(HistoryReply)
