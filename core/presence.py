"""Presence: who is subscribed to a channel right now (docs/protocol.md, "Presence").

The router keeps, per channel, the number of attached subscribers of each user
(`Channel.users`), changed by one dict update per attach and detach: O(1) per change,
nothing on the publish path. A user *joins* a channel when its count goes 0 -> 1 and
*leaves* when it goes 1 -> 0; a second connection of the same user is no transition.
A subscriber counts once it is attached to the live fan-out (after any `since` replay),
like `subscribers` in the HTTP API.

Subscribers that asked (`sub … presence: true`) are the channel's *watchers*: each
transition is encoded once per wire encoding and pushed into their outboxes in the order
it happened, so `join`/`leave` arrive once per transition, in order, interleaved with
the channel's messages as they happened. A watcher does not hear about its own join (it
is registered after it is attached) nor its own leave (it is removed first). The cost of
a transition is O(watchers): presence events are meant for rooms, not for a channel of
100k subscribers who all watch (they can ask `presence` for a count instead).

`page()` answers `presence` and the HTTP API: the totals, and one page of users in order
of user id after a cursor, O(users · log limit); never one entry per subscriber.
`@user` inboxes keep no counts (one per connection would cost every idle connection a
dict): their page is computed from the subscribers, who are all that one user.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from common.durability import Encoding
from core.protocol import ENCODE, Join, Leave, Member, PresencePage, ws_frame

if TYPE_CHECKING:
    from core.outbox import Outbox
    from core.router import Channel


def joined(ch: Channel, user: str) -> None:
    users = ch.users
    if users is None:
        users = ch.users = {}
    n = users.get(user, 0)
    users[user] = n + 1
    if not n and ch.watchers:
        _tell(ch, Join(ch.name, user))


def left(ch: Channel, user: str) -> None:
    users = ch.users
    assert users is not None
    n = users.get(user, 0)
    if n > 1:
        users[user] = n - 1
        return
    users.pop(user, None)
    if not users:
        ch.users = None
    if n and ch.watchers:
        _tell(ch, Leave(ch.name, user))


def watch(ch: Channel, outbox: Outbox, encoding: Encoding) -> None:
    if ch.watchers is None:
        ch.watchers = {}
    ch.watchers[outbox] = encoding


def unwatch(ch: Channel, outbox: Outbox) -> None:
    watchers = ch.watchers
    if watchers is not None:
        watchers.pop(outbox, None)
        if not watchers:
            ch.watchers = None


def _tell(ch: Channel, event: Join | Leave) -> None:
    watchers = ch.watchers
    assert watchers is not None
    frames: dict[Encoding, bytes] = {}
    for outbox, encoding in list(watchers.items()):
        frame = frames.get(encoding)
        if frame is None:
            frame = frames[encoding] = ws_frame(encoding, ENCODE[encoding](event))
        outbox.push(frame)


def counts(ch: Channel | None) -> dict[str, int]:
    """Attached subscribers per user (a copy is never made: do not change it)."""
    if ch is None:
        return {}
    if ch.users is not None:
        return ch.users
    if ch.name[0] != "@" or not ch.subscriber_count:
        return {}
    out: dict[str, int] = {}
    for subs in ch.subs:
        for session in subs.values():
            out[session.user] = out.get(session.user, 0) + 1
    return out


def page(name: str, ch: Channel | None, after: str | None, limit: int) -> PresencePage:
    """The totals and the first `limit` users (by user id) after `after`."""
    users = counts(ch)
    if after is None:
        chosen = heapq.nsmallest(limit + 1, users)
    else:
        chosen = heapq.nsmallest(limit + 1, (u for u in users if u > after))
    more = len(chosen) > limit
    chosen = chosen[:limit]
    return PresencePage(
        ch=name,
        users=len(users),
        connections=ch.subscriber_count if ch is not None else 0,
        members=[Member(user, users[user]) for user in chosen],
        next=chosen[-1] if more else None,
    )
