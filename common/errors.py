"""The root of ferry's error tree, and the errors both core and wal raise.

    FerryError                      every error ferry raises on purpose
    ├── core.errors.PeerError       the client did something wrong (its own subtree)
    ├── core.errors.AuthError       bad or expired token
    ├── core.config.ConfigError     a setting is invalid
    ├── core.http_post.WebhookError a webhook refused a POST (the operational notifier's
    │                               or an application webhook's attempt)
    ├── wal.errors.WalError         the write-ahead log (its own subtree)
    ├── RecordRefused               the durable log refuses one record (too large for
    │                               its format); nothing was used up, later appends go on
    └── LocalError                  our side failed; a client only learns the code
        └── LogUnavailable          the durable log cannot accept writes

Which code or close code a client sees for each is decided in one table,
`core.errors.ANSWERS` (looked up by `core.errors.answer_for`).
"""

from __future__ import annotations


class FerryError(Exception):
    """Root of every error ferry raises on purpose."""


class LocalError(FerryError):
    """Our side failed. The message is for logs only."""


class LogUnavailable(LocalError):
    """The log cannot accept writes (write/fsync error, disk full, closed)."""


class RecordRefused(FerryError):
    """`DurableLog.append` refuses this one record (e.g. too large for the log's format):
    nothing was assigned, and the log still takes other records."""
