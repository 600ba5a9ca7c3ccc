"""Database sinks for the replayer: where the WAL is logged, exactly once.

A sink stores rows and the replay checkpoint in ONE transaction, so after any crash the
checkpoint says exactly which LSNs are in the database. Inserts are idempotent on
(node, lsn): replaying a batch whose commit was lost but actually happened is harmless.

    Sink.open()                      connect, create/upgrade the schema
    Sink.checkpoint(node) -> lsn     last committed LSN (0 if none)
    Sink.write(batch)                insert rows + move the checkpoint, one transaction
    Sink.close()

Errors: anything raised by `open`/`write` is a `SinkError` (the database is unreachable,
refused the credentials, timed out...). The replayer backs off and retries; it never
skips a batch.
"""

from __future__ import annotations

from wal.errors import SinkError
from wal.sinks.base import EventRow, MessageRow, RowBatch, Sink, make_sink, redact_url

__all__ = ["EventRow", "MessageRow", "RowBatch", "Sink", "SinkError", "make_sink", "redact_url"]
