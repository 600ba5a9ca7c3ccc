"""What the client hands to the application: messages, acks, gaps, and its exceptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Message:
    """One `msg`: its channel, per-channel seq, server receive time (Unix ms), the
    publisher's user name and the decoded value."""

    ch: str
    seq: int
    ts: int
    sender: str
    data: Any
    error: str | None = None  # "untranscodable": `data` could not be delivered in this encoding

    is_gap = False


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of `ch` that will never be delivered: seqs `first`..`last` (inclusive) of
    the stream `epoch`. `reason`:

    * "history": the server's history no longer reaches back that far;
    * "epoch": the stream itself was replaced (a wiped WAL, `$sys.*` after a restart):
      `previous_epoch` was left at seq `previous_seq`; `first`..`last` are the new stream's
      messages sent before this subscription (empty when `last` < `first`);
    * "ahead": the server's stream is behind what this client saw (same epoch, or none
      known): treated like "epoch".
    """

    ch: str
    first: int
    last: int
    reason: str
    epoch: str | None = None
    previous_epoch: str | None = None
    previous_seq: int | None = None

    is_gap = True

    @property
    def count(self) -> int:
        return max(0, self.last - self.first + 1)


@dataclass(frozen=True, slots=True)
class Ack:
    """A durable publish: the seq it has in `ch`. `dup` means this publish was a retry of
    a `mid` the server had already logged: `seq` is the original's."""

    ch: str
    seq: int
    dup: bool
    mid: str


class FerryError(Exception):
    """Every error this client raises."""


class TerminalError(FerryError):
    """The client stopped for good (a close code or HTTP status that retrying cannot fix,
    e.g. 4403, 1009, HTTP 403). `code` is the close code, `status` the HTTP status."""

    def __init__(self, reason: str, code: int | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.status = status


class ClientClosed(FerryError):
    """The client was closed by the application."""


class PublishTimeout(FerryError, TimeoutError):
    """No durable ack within the publish's deadline. If `sent`, the server may have logged
    it: a retry with the same `mid` (within the server's dedupe window) is safe."""

    def __init__(self, reason: str, mid: str, sent: bool) -> None:
        super().__init__(reason)
        self.mid = mid
        self.sent = sent


class PublishQueueFull(FerryError):
    """Too many publishes waiting (`max_pending`)."""


class PayloadTooLarge(FerryError, ValueError):
    """The encoded value is larger than the server's `max_data_bytes` (raised before
    anything is sent)."""


class PublishRejected(FerryError):
    """The server refused the publish (`code`: forbidden, too_large, rate_limited,
    unavailable, bad_request, limit_exceeded); nothing was logged."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SubscribeError(FerryError):
    """The server refused the subscription (`code`, e.g. forbidden)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SubscriptionEnded(FerryError):
    """The server ended the subscription (a refreshed token no longer allows it)."""
