"""The cluster seam: what the relay asks about channels owned by another node.

core knows nothing of NATS; `cluster.node.ClusterNode` implements `Remote` and the
composition root (core/compose.py) sets it as `Router.remote`. Unset (one node), every
check below is one attribute test.

    Router.publish ──elsewhere(ch)?──▶ Remote.publish  (forwarded to the owner; the
                                                        publisher gets ack / unavailable)
    Session._sub   ──ready(ch)?─────▶ Remote.follow    (learn the owner's head first; then
                                                        the `sub` runs as usual)
    Router.subscribe ─ready(ch)?────▶ Remote.follow    (no wait: the `@user` inbox at the
                                                        connection's start)

Delivery on a following node goes the other way, through `Router.apply_remote` and
`Router.reset_remote` (docs/cluster.md, "Feeds").

The flow view (core/flow.py) asks `Remote.owner_of` for each channel it shows and is told
of the hops through `Hops` (`Router.hops`): a publish forwarded to its owner, one that came
in from another node's forward, messages delivered from an owner's feed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from common.durability import Encoding
from core.dedupe import MsgId, Publisher

# Told when a channel is ready (None) or cannot be (the error to answer the `sub` with).
Ready = Callable[[BaseException | None], None]


class Forwarded(NamedTuple):
    """A publish for a channel owned elsewhere, as the router was given it."""

    channel: str
    data: bytes
    encoding: Encoding
    msg_id: MsgId
    sender: str
    owner: str | None  # the user a new channel counts against (None: exempt)
    mid: str | None


class Remote(Protocol):
    def elsewhere(self, channel: str) -> bool:
        """The channel is owned by another node (its publishes are forwarded)."""
        ...

    def publish(self, publisher: Publisher | None, request: Forwarded) -> None:
        """Forward a publish to the channel's owner; `publisher` gets its answer later."""
        ...

    def ready(self, channel: str) -> bool:
        """A `sub` of the channel may be answered now: it is local, or followed and in sync."""
        ...

    def epoch_of(self, channel: str) -> str | None:
        """The owner's epoch for a remote channel it has told us (None: local, unknown)."""
        ...

    def follow(self, channel: str, then: Ready | None) -> None:
        """Start following the channel's slot and sync its head; `then` is told once."""
        ...

    def owner_of(self, channel: str) -> str:
        """The node that owns the channel (this node's id for `$sys.*` and its own)."""
        ...


class Hops(Protocol):
    """Told of the traffic that crosses nodes (core/flow.py counts it while watched)."""

    def forwarded(self, sender: str, channel: str) -> None:
        """A publish of `sender` was forwarded to the channel's owner."""
        ...

    def received(self, sender: str, channel: str) -> None:
        """On the owner: a publish of `sender` came in from another node's forward."""
        ...

    def fed(self, channel: str, count: int) -> None:
        """`count` messages of a channel owned elsewhere came in over its owner's feed."""
        ...
