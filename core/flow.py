"""`$sys.flow`: who publishes where and who receives it, aggregated per interval.

The dashboard's flow view draws it as a graph: publishers (users, the messages' `from`)
-> channels -> subscribing connections, each edge weighted by messages per second, the
busiest `TOP_CHANNELS` channels and `TOP_PUBLISHERS` publishers shown and the rest folded
into "others" nodes, at most `SUBSCRIBERS_SHOWN` subscribers per channel. It is an
admin-only ephemeral channel like `$sys.stats` (common/stats_doc.py `Flow` is the shape):
one bounded message per interval, never a per-message stream to the browser.

Cost, and why it stays flat as idle channels grow:

* per durable batch, while someone is subscribed to `$sys.flow` (one dict lookup
  otherwise): one counter per (publisher, channel) pair of its messages (`observe`);
* in a cluster, per publish or feed message that crosses nodes (`core.remote.Hops`), one
  counter more: publishes forwarded to their owner (`forwarded`), those that came in from
  another node's forward (`received`, a part of what `observe` counts), messages of a
  channel owned elsewhere delivered over its owner's feed (`fed`);
* per interval (`build`): O(pairs seen + shown subscribers + shown connections'
  subscriptions). Channels that got no message in the interval are never visited: the
  builder starts from the pairs, not from the router's channels (`visited` counts the
  channels it looked up, which the tests check against 100k idle ones).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from common.durability import Encoding, Entry
from common.service import Loop
from common.stats_doc import (
    Flow,
    FlowChannel,
    FlowClosed,
    FlowConnection,
    FlowEdge,
    FlowHop,
    FlowOthers,
    FlowPublisher,
    FlowSubscriber,
    OutboxState,
    WireEncoding,
)
from core import presence
from core.protocol import FLOW_CHANNEL

if TYPE_CHECKING:
    from core.listener import Connection
    from core.relay_state import RelayState
    from core.router import Channel, Router
    from core.session import Session

TOP_CHANNELS = 12
TOP_PUBLISHERS = 12
SUBSCRIBERS_SHOWN = 8
CHANNELS_LISTED = 10  # per connection: its first subscriptions, by name
CLOSED_KEPT = 20  # connections closed in one interval, newest kept

ENCODING_NAMES: dict[Encoding, WireEncoding] = {Encoding.JSON: "json", Encoding.MSGPACK: "msgpack"}
OTHERS = "*"

_json = msgspec.json.Encoder()


def outbox_state(session: Session) -> OutboxState:
    outbox = session.outbox
    if outbox.discarding:
        return "overflowed"
    if not session.is_open:
        return "closing"
    return "paused" if outbox.paused else "ok"


class FlowBuilder:
    """One interval's traffic in, one `Flow` out. Pure: time and the database's
    checkpoint come in as arguments, so tests drive it with a bare router."""

    def __init__(self, router: Router, node: str) -> None:
        self.router = router
        self.node = node
        self._pairs: dict[tuple[str, str], int] = {}  # (sender, channel) -> messages
        # the hops of a cluster (core/remote.py `Hops`), keyed like `_pairs`
        self._out: dict[tuple[str, str], int] = {}  # forwarded to the owner
        self._in: dict[tuple[str, str], int] = {}  # come in from another node (in `_pairs`)
        self._in_late: dict[tuple[str, str], int] = {}  # received, not durable at the build
        self._fed: dict[str, int] = {}  # channel owned elsewhere -> messages over its feed
        self._closed: deque[FlowClosed] = deque(maxlen=CLOSED_KEPT)
        self._published: dict[str, int] = {}  # shown connection -> `published` at last build
        self.visited = 0  # channels the last build looked up in the router

    def observe(self, entries: Iterable[Entry]) -> None:
        pairs = self._pairs
        for entry in entries:
            name = entry.channel
            if name[0] == "$":
                continue
            key = (entry.sender, name)
            pairs[key] = pairs.get(key, 0) + 1

    def forwarded(self, sender: str, channel: str) -> None:
        key = (sender, channel)
        self._out[key] = self._out.get(key, 0) + 1

    def received(self, sender: str, channel: str) -> None:
        key = (sender, channel)
        self._in[key] = self._in.get(key, 0) + 1

    def fed(self, channel: str, count: int) -> None:
        self._fed[channel] = self._fed.get(channel, 0) + count

    def _hops(
        self, pairs: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str, FlowHop | None], int]:
        """The interval's (sender, channel) pairs split by how they reached the channel:
        on this node (None) or over a forward. `received` ones are also in `pairs` (the
        owner logged them) once durable: those received but not durable yet at a build
        are kept for the next one (once: a duplicate `mid` is received, never logged)."""
        out, self._out = self._out, {}
        inbound, self._in = self._in, {}
        late, self._in_late = self._in_late, {}
        for key, n in late.items():
            inbound[key] = inbound.get(key, 0) + n
        split: dict[tuple[str, str, FlowHop | None], int] = {}
        for key, n in pairs.items():
            crossed = min(inbound.pop(key, 0), n)
            if crossed:
                split[(*key, "forward")] = crossed
            if n > crossed:
                split[(*key, None)] = n - crossed
        for key, n in inbound.items():  # what is left: not durable yet (or a duplicate)
            if n > late.get(key, 0):
                self._in_late[key] = n - late.get(key, 0)
        for (user, name), n in out.items():
            hop: tuple[str, str, FlowHop | None] = (user, name, "forward")
            split[hop] = split.get(hop, 0) + n
        return split

    def _owner(self, name: str) -> str:
        remote = self.router.remote
        return self.node if remote is None else remote.owner_of(name)

    def closed(self, client: str, user: str, code: int, ts_ms: int) -> None:
        self._closed.append(FlowClosed(client, user, code, ts_ms))

    def build(self, elapsed: float, checkpoint_lsn: int | None, ts_ms: int) -> Flow:
        elapsed = max(elapsed, 1e-6)
        pairs, self._pairs = self._pairs, {}
        split = self._hops(pairs)
        fed, self._fed = self._fed, {}
        per_channel: dict[str, int] = {}
        per_user: dict[str, int] = {}
        for (user, name, _), n in split.items():
            per_channel[name] = per_channel.get(name, 0) + n
            per_user[user] = per_user.get(user, 0) + n
        # A channel owned elsewhere: its feed brings every publisher's messages, the ones
        # forwarded from here among them (a little later): the larger count is its rate.
        for name, n in fed.items():
            if n > per_channel.get(name, 0):
                per_channel[name] = n
        top = heapq.nlargest(TOP_CHANNELS, per_channel.items(), key=lambda kv: kv[1])
        shown_names = {name for name, _ in top}
        top_users = {u for u, _ in heapq.nlargest(TOP_PUBLISHERS, per_user.items(), key=_count)}

        def rate(n: int) -> float:
            return round(n / elapsed, 1)

        # (src, dst, hop) -> [messages, count]
        folded: dict[tuple[str, str, FlowHop | None], list[int]] = {}
        for (user, name, hop), n in split.items():
            src = "p:" + (user if user in top_users else OTHERS)
            dst = "c:" + (name if name in shown_names else OTHERS)
            edge = folded.get((src, dst, hop))
            if edge is None:
                folded[(src, dst, hop)] = [n, 1]
            else:
                edge[0] += n
                edge[1] += 1
        edges = [
            FlowEdge(src, dst, rate(n), count, hop)
            for (src, dst, hop), (n, count) in sorted(folded.items(), key=lambda kv: -kv[1][0])
        ]
        channels: list[FlowChannel] = []
        sessions: dict[str, Session] = {}
        self.visited = 0
        router = self.router
        for name, n in top:
            ch = router.get(name)
            self.visited += 1
            owner = self._owner(name)
            if ch is None:
                if owner != self.node:  # only forwarded from here: nobody here follows it
                    channels.append(_unheld(name, rate(n), owner))
                continue  # else forgotten since (idle and over the channel bound)
            via: FlowHop | None = None if owner == self.node else "feed"
            shown = []
            for session in itertools.islice(_subscribers(ch), SUBSCRIBERS_SHOWN):
                shown.append(
                    FlowSubscriber(
                        session.conn_id,
                        session.user,
                        ENCODING_NAMES[session.encoding],
                        session.outbox.size,
                        outbox_state(session),
                    )
                )
                sessions[session.conn_id] = session
                edges.append(FlowEdge("c:" + name, "s:" + session.conn_id, rate(n), 1, via))
            hidden = ch.subscriber_count - len(shown)
            if hidden > 0:
                edges.append(FlowEdge("c:" + name, "s:*" + name, rate(n), hidden, via))
            history = ch.history
            channels.append(
                FlowChannel(
                    ch=name,
                    rate=rate(n),
                    head=ch.durable_seq,
                    subscribers=ch.subscriber_count,
                    users=len(presence.counts(ch)),
                    shown=shown,
                    history_first=history[0].seq if history else None,
                    history_last=history[-1].seq if history else None,
                    logged_seq=_logged_seq(ch, checkpoint_lsn),
                    owner=owner,
                )
            )
        connections = self._connections(sessions, per_channel, elapsed)
        closed = list(self._closed)
        self._closed.clear()
        total = sum(per_channel.values())
        return Flow(
            node=self.node,
            ts_ms=ts_ms,
            interval_s=round(elapsed, 3),
            msgs_per_s=rate(total),
            active_channels=len(per_channel),
            publishers=[
                FlowPublisher(u, rate(n))
                for u, n in sorted(per_user.items(), key=lambda kv: -kv[1])
                if u in top_users
            ],
            channels=channels,
            edges=edges,
            connections=connections,
            closed=closed,
            others=FlowOthers(
                publishers=len(per_user) - len(top_users),
                channels=len(per_channel) - len(shown_names),
                rate=rate(total - sum(n for _, n in top)),
            ),
        )

    def _connections(
        self, sessions: dict[str, Session], per_channel: dict[str, int], elapsed: float
    ) -> list[FlowConnection]:
        out = []
        before, self._published = self._published, {}
        for client, session in sessions.items():
            subs = session.subscriptions
            delivered = sum(per_channel.get(name, 0) for name in subs)
            published = session.published
            self._published[client] = published
            out.append(
                FlowConnection(
                    client=client,
                    user=session.user,
                    encoding=ENCODING_NAMES[session.encoding],
                    subscriptions=len(subs),
                    channels=heapq.nsmallest(CHANNELS_LISTED, subs),
                    published=published,
                    publish_rate=round((published - before.get(client, published)) / elapsed, 1),
                    delivery_rate=round(delivered / elapsed, 1),
                    errors=session.errors_sent,
                    outbox_bytes=session.outbox.size,
                    state=outbox_state(session),
                )
            )
        return out


def _unheld(name: str, rate: float, owner: str) -> FlowChannel:
    """A channel owned elsewhere that this node only forwards to: its owner has the rest."""
    return FlowChannel(name, rate, 0, 0, 0, [], None, None, None, owner)


def _count(kv: tuple[str, int]) -> int:
    return kv[1]


def _subscribers(ch: Channel) -> Iterable[Session]:
    return itertools.chain(ch.subs[0].values(), ch.subs[1].values())


def _logged_seq(ch: Channel, checkpoint_lsn: int | None) -> int | None:
    """The channel's last seq at or below the database's checkpoint, from its ring (whose
    entries are in LSN order): O(log ring)."""
    history = ch.history
    if checkpoint_lsn is None or not history:
        return None
    if history[-1].lsn <= checkpoint_lsn:
        return history[-1].seq
    if history[0].lsn > checkpoint_lsn:
        return None  # below the ring: some older seq, not known here
    index = _bisect_lsn(history, checkpoint_lsn)
    return history[index - 1].seq


def _bisect_lsn(history: Any, lsn: int) -> int:
    lo, hi = 0, len(history)
    while lo < hi:
        mid = (lo + hi) // 2
        if history[mid].lsn <= lsn:
            lo = mid + 1
        else:
            hi = mid
    return lo


class FlowService:
    """Publishes the builder's document on `$sys.flow` every `stats_interval` while an
    admin is subscribed (the counting tap and the disconnect hook idle otherwise).
    `loop` is the `Service` the server starts and stops (next to the stats)."""

    def __init__(self, hub: RelayState) -> None:
        self.hub = hub
        self.builder = FlowBuilder(hub.router, hub.config.node_id)
        self.loop = Loop("flow", self._round, hub.config.stats_interval)
        self._at = time.monotonic()
        hub.router.add_tap(self._observe)
        hub.router.hops = self
        hub.on_disconnect.append(self._disconnected)

    def _watched(self) -> bool:
        ch = self.hub.router.get(FLOW_CHANNEL)
        return ch is not None and ch.subscriber_count > 0

    def _observe(self, entries: list[Entry]) -> None:
        if self._watched():
            self.builder.observe(entries)

    # core.remote.Hops: a cluster's crossings, counted while watched
    def forwarded(self, sender: str, channel: str) -> None:
        if self._watched():
            self.builder.forwarded(sender, channel)

    def received(self, sender: str, channel: str) -> None:
        if self._watched():
            self.builder.received(sender, channel)

    def fed(self, channel: str, count: int) -> None:
        if self._watched():
            self.builder.fed(channel, count)

    def _disconnected(self, conn: Connection) -> None:
        session = conn.session
        if session is not None and self._watched():
            code = session.close_code or 1006
            self.builder.closed(conn.conn_id, session.user, code, time.time_ns() // 1_000_000)

    def _checkpoint(self) -> int | None:
        status = self.hub.db_status
        return status().checkpoint_lsn if status is not None else None

    def _round(self) -> None:
        now = time.monotonic()
        elapsed, self._at = now - self._at, now
        if not self._watched():
            return
        doc = self.builder.build(elapsed, self._checkpoint(), time.time_ns() // 1_000_000)
        self.hub.router.publish_ephemeral(FLOW_CHANNEL, _json.encode(doc))
