"""What every sink takes: batches of message and event rows plus the checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

# The database schema's version, kept in the one row (id = 1) of `ferry_schema`:
#   1  ferry_messages, ferry_events, ferry_checkpoints; ferry_schema (version) had no key
#   2  ferry_schema keyed by `id` (managed MySQL, e.g. DigitalOcean's, sets
#      sql_require_primary_key and refuses to create a table without a primary key)
# A sink upgrades an older database on open and refuses a newer one.
SCHEMA_VERSION = 2


class MessageRow(NamedTuple):
    node: str
    lsn: int
    channel: str
    seq: int
    ts_ms: int
    sender: str
    client_msg_id: str | None
    encoding: int
    payload: bytes


class EventRow(NamedTuple):
    node: str
    lsn: int
    ts_ms: int
    kind: str  # connect | disconnect
    conn_id: str
    user: str
    remote: str
    close_code: int | None
    duration_ms: int | None


@dataclass
class RowBatch:
    """The rows one sink transaction inserts, and the checkpoint it moves to (not the
    writer's `wal.writer.CommitBatch`: these are decoded rows, read back from the log)."""

    node: str
    messages: list[MessageRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    last_lsn: int = 0  # the checkpoint this batch moves to
    first_ts_ms: int = 0  # time of its oldest record (for the replay lag in seconds)

    def __len__(self) -> int:
        return len(self.messages) + len(self.events)


class Sink(Protocol):
    url: str
    fault: Callable[[str], None]  # test hook, called between the inserts and the commit

    async def open(self) -> None: ...

    async def checkpoint(self, node: str) -> int: ...

    async def write(self, batch: RowBatch) -> None: ...

    async def close(self) -> None: ...


def redact_url(url: str) -> str:
    """The URL with its password replaced, for logs and the dashboard."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def make_sink(url: str) -> Sink:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from wal.sinks.sqlite import SqliteSink

        return SqliteSink(url)
    if scheme in ("mysql", "mariadb"):
        from wal.sinks.mysql import MysqlSink

        return MysqlSink(url)
    raise ValueError(f"unsupported database URL scheme {scheme!r} (use sqlite:/// or mysql://)")
