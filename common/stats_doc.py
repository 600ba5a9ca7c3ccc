"""The server's own messages on `$sys.stats`, `$sys.tail` and `$sys.flow`, as msgspec Structs.

These are the one declaration of what the dashboard receives: dashboard/src/stats.gen.ts is
generated from them (`python -m common.stats_doc > dashboard/src/stats.gen.ts`) through their
JSON Schema, and a test regenerates it to catch drift. A field that is sometimes absent on
the wire is `UNSET` (left out when encoded), never a default that would be sent.

This module imports msgspec only: the replayer's service (wal/replay/service.py) builds
the `db` section without pulling in the relay.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

# The replayer's states (wal.replay.replayer.DbState), and "off" when serve runs none.
DbState = Literal["starting", "up", "down", "recovering", "off"]


class WalStats(msgspec.Struct):
    """The durable log: whether it takes writes, and the WAL's numbers (null for the memory log)."""

    writable: bool
    failure: str | None
    sync: Literal["fsync", "write"]
    # The log's stats() are floats, counts included (and so are they on the wire).
    head_lsn: float | None
    bytes: float | None
    segments: float | None
    fsync_p50_ms: float | None
    fsync_p99_ms: float | None
    records_per_fsync: float | None


class DbStats(msgspec.Struct):
    """The replayer's database; the replay numbers are left out while no replayer runs."""

    state: DbState
    last_error: str | None
    url: str | None
    checkpoint_lsn: int | UnsetType = UNSET
    lag_records: int | UnsetType = UNSET
    lag_seconds: float | UnsetType = UNSET
    rows_per_s: float | UnsetType = UNSET


DB_OFF = DbStats(state="off", last_error=None, url=None)


class HooksStats(msgspec.Struct):
    """The application webhooks (core/hooks.py); the section is left out without
    FERRY_HOOKS_URL. Counts are events since start, `batches` are accepted POSTs."""

    queued: int
    held: int  # channel.vacated / user.offline waiting out their hold-back
    in_flight: int  # events of the batch being sent (or retried)
    sent: int
    batches: int
    failed_attempts: int
    dropped: dict[str, int]  # by reason: queue_full, gave_up, shutdown
    last_error: str | None


class StageLatency(msgspec.Struct):
    """One stage of the publish path (common.latency.PUBLISH_STAGES) over the last
    interval: quantiles estimated from its histogram's buckets, and how many batches
    (or flushes) it timed."""

    p50_ms: float | None
    p99_ms: float | None
    count: int


class TopChannel(msgspec.Struct):
    ch: str
    rate: float  # messages per second over the last interval
    subscribers: int


class Stats(msgspec.Struct):
    """One `$sys.stats` message; rates and latencies are over the last interval."""

    node: str
    uptime_s: float
    ts_ms: int
    connections: int
    subscriptions: int
    channels: int
    history_bytes: int
    msgs_in_per_s: float
    deliveries_per_s: float
    bytes_in_per_s: float
    bytes_out_per_s: float
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    slow_consumer_closes: int
    errors: dict[str, int]
    top_channels: list[TopChannel]
    wal: WalStats
    db: DbStats
    # where a publish spends its time, by stage, in the order of the path; a stage the
    # log does not have (the disk stages of the memory log) is left out
    stages: dict[str, StageLatency] = msgspec.field(default_factory=dict)
    # each background service's own health (common.service.Service.stats), by name
    services: dict[str, dict[str, str | float | bool | None]] = msgspec.field(default_factory=dict)
    # the application webhooks, when FERRY_HOOKS_URL is set
    hooks: HooksStats | UnsetType = UNSET


class TailEntry(msgspec.Struct):
    """One sampled `$sys.tail` message: a durable message's envelope and a JSON preview,
    and what its life looked like up to the fan-out (its timeline in the flow view)."""

    ch: str
    seq: int
    sender: str = msgspec.field(name="from")
    ts: int
    size: int
    preview: str
    lsn: int = 0  # its WAL record (the database has it once db.checkpoint_lsn >= lsn)
    # receive (`ts`) -> durable, acked and fanned out, in ms by the wall clock (`ts` is
    # whole ms, so this is up to 1 ms long)
    durable_ms: float = 0.0
    delivered: int = 0  # subscribers it was handed to


WireEncoding = Literal["json", "msgpack"]
# ok; paused: the socket's buffer is full (the outbox holds on); overflowed: past
# FERRY_MAX_OUTBOX_BYTES, being closed 4408; closing: any other close under way
OutboxState = Literal["ok", "paused", "overflowed", "closing"]


class FlowSubscriber(msgspec.Struct):
    """One subscriber of a channel in the flow view."""

    client: str  # its `welcome.client`
    user: str
    encoding: WireEncoding
    outbox_bytes: int
    state: OutboxState


class FlowChannel(msgspec.Struct):
    """A channel among the busiest of the interval, with a bounded view of it."""

    ch: str
    rate: float  # messages per second
    head: int  # last durable seq (0 on a node that forwards to it but does not follow it)
    subscribers: int
    users: int  # distinct subscribed users (presence)
    shown: list[FlowSubscriber]  # at most flow.SUBSCRIBERS_SHOWN of them
    history_first: int | None  # the in-memory ring's range (`sub … since` from it)
    history_last: int | None
    # the last seq the database log has (from the replayer's checkpoint), null when it
    # is below the ring or no replayer runs
    logged_seq: int | None
    # the node that owns it (its seqs, its log): `Flow.node` on one node; in a cluster the
    # slot map's owner, whose feed delivers it here when that is another node
    owner: str


class FlowPublisher(msgspec.Struct):
    """A publishing user (the messages' `from`) among the busiest of the interval."""

    user: str
    rate: float


FlowHop = Literal["forward", "feed"]


class FlowEdge(msgspec.Struct):
    """Messages per second from `src` to `dst`. Node ids: `p:<user>` a publisher,
    `c:<channel>` a channel, `s:<client>` a subscribing connection; `p:*`, `c:*` and
    `s:*<channel>` are the ones folded into "others" (`count` of them)."""

    src: str
    dst: str
    rate: float
    count: int = 1
    # how it crossed nodes, null when it did not: `forward` a publisher -> channel edge
    # forwarded to the owner (the channel's `owner` is another node) or, on the owner,
    # come in from another node's forward; `feed` a channel -> subscriber edge delivered
    # from another owner's feed
    hop: FlowHop | None = None


class FlowConnection(msgspec.Struct):
    """A connection shown in the graph: what the flow view tells about it when clicked."""

    client: str
    user: str
    encoding: WireEncoding
    subscriptions: int
    channels: list[str]  # the first of them, by name
    published: int  # publishes accepted since it connected
    publish_rate: float  # per second over the interval
    delivery_rate: float  # messages per second of its channels that were active
    errors: int  # error frames sent to it
    outbox_bytes: int
    state: OutboxState


class FlowClosed(msgspec.Struct):
    """A connection that closed in the interval."""

    client: str
    user: str
    code: int
    ts_ms: int


class FlowOthers(msgspec.Struct):
    """What the top-N left out, folded."""

    publishers: int
    channels: int
    rate: float  # messages per second of the channels left out


class Flow(msgspec.Struct):
    """One `$sys.flow` message: who published where and who received it, over the last
    interval, top-N by messages per second (core/flow.py)."""

    node: str
    ts_ms: int
    interval_s: float
    msgs_per_s: float  # every channel but `$sys.*`
    active_channels: int  # channels that got messages in the interval
    publishers: list[FlowPublisher]
    channels: list[FlowChannel]
    edges: list[FlowEdge]
    connections: list[FlowConnection]
    closed: list[FlowClosed]
    others: FlowOthers


class DbStatus(msgspec.Struct):
    """The replayer's view of the database for /metrics and the webhook watch (not sent:
    `DbStats` is what `$sys.stats` carries)."""

    state: DbState
    last_error: str | None
    url: str | None
    up: bool
    checkpoint_lsn: int
    lag_records: int
    lag_seconds: float
    rows: int


WIRE_TYPES: tuple[type[msgspec.Struct], ...] = (Stats, TailEntry, Flow)

_HEADER = """\
// Generated from common/stats_doc.py by `python -m common.stats_doc`: do not edit.
// What the server sends on `$sys.stats`, `$sys.tail` and `$sys.flow`; protocol.ts adds the dashboard's
// defensive view (any field may be null in a message an admin published by hand).
"""


def _ts_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_ts_type(option) for option in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(msgspec.json.encode(value).decode() for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"{_ts_type(schema['items'])}[]"
    if kind == "object":
        return f"Record<string, {_ts_type(schema['additionalProperties'])}>"
    names = {"integer": "number", "number": "number", "string": "string", "boolean": "boolean"}
    return names.get(str(kind), "null")


def typescript() -> str:
    """TypeScript interfaces for the wire types, from their JSON Schema."""
    _, components = msgspec.json.schema_components(WIRE_TYPES)
    out = [_HEADER.rstrip("\n")]
    for name, schema in components.items():
        required = set(schema.get("required", ()))
        if schema.get("description"):
            out.append(f"\n/** {schema['description']} */")
        else:
            out.append("")
        out.append(f"export interface {name} {{")
        for field, spec in schema["properties"].items():
            optional = "" if field in required else "?"
            out.append(f"  {field}{optional}: {_ts_type(spec)};")
        out.append("}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(typescript())
