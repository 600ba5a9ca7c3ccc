"""The durability seam: the relay hands every publish to a `DurableLog` and acts on it
(ack + fan-out) only when the log says the batch is durable (docs/design.md §2).

    router ──append(entry)──▶ DurableLog ──on_durable([entries…])──▶ router: ack + fan-out
                                      └────on_failed([entries…], reason)──▶ router: `unavailable`

Contract every implementation keeps:

* `append` is called on the event loop. It assigns `entry.lsn` (node-wide, gap-free)
  before returning and never blocks; it raises `LogUnavailable` when the log can no
  longer accept writes (then nothing is acked).
* `on_durable` is called on the event loop, once per batch, with the batch's entries in
  LSN order; batches are delivered in LSN order. Only after that call may anything be acked.
* After a write or sync error the log turns unwritable for good (an fsync is never
  retried): the failed batch goes to `on_failed` and every later `append` raises.
* `close()` finishes what was appended (durable or failed callbacks fire) and is idempotent.
* `head_of(channel)` is the channel's last durable seq (0 if the log never held one). The
  router keeps only a bounded set of channels in memory and asks the log for the head of
  any other channel when it comes back, so a forgotten channel continues its seq. The
  router only forgets a channel whose every append is durable.
* `set_history_floor(lsn)`: the oldest LSN still held by any in-memory history ring.
  Retention keeps the records from there on, so the rings are rebuilt as they were
  after a restart (within the `HistoryLimits` given to `open`).

This module is the vocabulary core (the relay) and wal (the write-ahead log) share; it
imports neither. `core.memory_log.MemoryLog` is the in-memory stand-in: durable only in
the sense that the process is alive. `wal.log.WalLog` is the real one. Only the
composition root (`core.compose`) puts a `WalLog` under a `Router`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from common.errors import LogUnavailable
from common.latency import Stages

__all__ = [
    "DurableLog",
    "Encoding",
    "Entry",
    "HistoryLimits",
    "LogUnavailable",
    "RecordType",
    "RecoveredState",
]


class Encoding(enum.IntEnum):
    """Wire encoding a message was published in; `data` is stored verbatim in it."""

    JSON = 0
    MSGPACK = 1


class RecordType(enum.IntEnum):
    """What a log record holds (the WAL's `u8 type`)."""

    MESSAGE = 1
    EVENT = 2  # connection events (connect/disconnect), see the database-log issue


class Entry:
    """One published message on its way to durability.

    `data` is the published value exactly as it arrived (JSON text or msgpack bytes).
    `origin` is opaque to the log: the router uses it to find whom to ack.
    `client_msg_id` is the frame's correlation `id`; `mid` the publisher's message id
    (`pub` with `mid`: retries of it are duplicates, core/dedupe.py).
    """

    __slots__ = (
        "channel",
        "client_msg_id",
        "data",
        "encoding",
        "lsn",
        "mid",
        "origin",
        "sender",
        "seq",
        "ts_ms",
    )

    def __init__(
        self,
        channel: str,
        seq: int,
        ts_ms: int,
        sender: str,
        client_msg_id: str | None,
        encoding: int,
        data: bytes,
        origin: object = None,
        lsn: int = 0,
        mid: str | None = None,
    ) -> None:
        self.channel = channel
        self.seq = seq
        self.ts_ms = ts_ms
        self.sender = sender
        self.client_msg_id = client_msg_id
        self.encoding = encoding
        self.data = data
        self.origin = origin
        self.lsn = lsn
        self.mid = mid  # the publisher's message id (idempotent publish), if it gave one

    def __repr__(self) -> str:
        return f"Entry(lsn={self.lsn}, channel={self.channel!r}, seq={self.seq})"


# What one history entry costs in memory beyond its data: the Entry object, its strings
# and the ring slot (measured with tracemalloc: ~180 bytes for a short channel name).
ENTRY_OVERHEAD_BYTES = 192


def entry_bytes(entry: Entry) -> int:
    """The memory an entry held in a history ring is accounted with."""
    return len(entry.data) + ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """Bounds of the in-memory history the router keeps (and recovery rebuilds)."""

    size: int = 1000  # messages per channel
    channel_bytes: int = 1024 * 1024  # entry_bytes() per channel
    total_bytes: int = 256 * 1024 * 1024  # entry_bytes() over all channels
    max_channels: int = 100_000  # channels held in memory
    # publish mids recovery hands back for the dedupe index (the newest ones)
    mids: int = 100_000


@dataclass
class RecoveredState:
    """What the log hands the router at startup.

    Bounded by the `HistoryLimits` given to `open`: at most `max_channels` channels (the
    most recently written), each ring within `size` and `channel_bytes`, all rings within
    `total_bytes` (the oldest entries dropped first). Channels not in `heads` are still
    known to the log: `head_of` answers for them.
    """

    next_lsn: int = 1
    # channel -> last seq written for it (the channels the router should hold)
    heads: dict[str, int] = field(default_factory=dict)
    # channel -> its newest entries, oldest first, consecutive seqs ending at its head
    history: dict[str, list[Entry]] = field(default_factory=dict)
    # the newest publishes that carried a `mid`, oldest first, at most `HistoryLimits.mids`:
    # (sender, channel, mid, seq, ts_ms), for the dedupe index
    mids: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    # the log's incarnation: a random id made when it was created (docs/protocol.md, "Epochs")
    epoch: str = ""


DurableHandler = Callable[[list[Entry]], None]
FailedHandler = Callable[[list[Entry], str], None]


class DurableLog(Protocol):
    # where its appends spend their time, stage by stage (common.latency.PUBLISH_STAGES);
    # the relay observes the stages after the log's (the outbox flush) into the same one
    stages: Stages

    async def open(self, limits: HistoryLimits) -> RecoveredState: ...

    def set_handlers(self, on_durable: DurableHandler, on_failed: FailedHandler) -> None: ...

    def append(self, entry: Entry) -> None: ...

    @property
    def writable(self) -> bool: ...

    @property
    def failure(self) -> str | None:
        """Why the log is unwritable (for logs, /readyz and the dashboard), else None."""
        ...

    def head_of(self, channel: str) -> int:
        """The channel's last durable seq, 0 if the log holds none."""
        ...

    def set_history_floor(self, lsn: int) -> None:
        """The oldest LSN any in-memory history ring still holds (0: none)."""
        ...

    def stats(self) -> dict[str, float]: ...

    async def close(self) -> None: ...
