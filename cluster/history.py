"""History across nodes: the owner answers `sync` and `history` requests; every node's
`sub … since` below its ring reads through `ClusterHistory` (docs/cluster.md).

`ClusterHistory` is the router's deep history store in a cluster: a remote channel's
older messages come from its owner (its ring, then its own database/WAL history); a local
channel's from the local store, as on a single node.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cluster import wire
from cluster.feed import entry_of, record_of
from cluster.slots import SlotMap
from common.durability import DurableLog, Entry, HistoryStore
from core.router import Router

log = logging.getLogger("ferry.cluster")

REPLY_BYTES = 512 * 1024


class Answers:
    """The owner's side of `<cid>.ctl.<node>`."""

    def __init__(
        self,
        router: Router,
        durable_log: DurableLog,
        counters: list[int],
        incarnation: str,
        local: HistoryStore | None,
        spawn: Callable[[Any], object],
    ) -> None:
        self._router = router
        self._log = durable_log
        self._counters = counters
        self._incarnation = incarnation
        self._local = local
        self._spawn = spawn

    def handle(self, payload: bytes, reply: Callable[[bytes], None] | None) -> None:
        if reply is None:
            return
        request = wire.CONTROL.decode(payload)
        if isinstance(request, wire.Sync):
            reply(wire.ENCODE(self.sync(request)))
        else:
            self._spawn(self._history(request, reply))

    def sync(self, request: wire.Sync) -> wire.SyncReply:
        """The slot's counter and its channels' durable heads, at one point of the loop."""
        router = self._router
        heads = []
        for name in request.channels:
            ch = router.get(name)
            heads.append(ch.durable_seq if ch is not None else self._log.head_of(name))
        return wire.SyncReply(router.epoch, self._incarnation, self._counters[request.slot], heads)

    async def _history(self, request: wire.HistoryRequest, reply: Callable[[bytes], None]) -> None:
        reply(wire.ENCODE(wire.HistoryReply(await self.history(request))))

    async def history(self, request: wire.HistoryRequest) -> list[wire.Record]:
        """after < seq < before, oldest first, at most `limit` and about REPLY_BYTES: the
        store below the ring first (when there is one), then the ring."""
        name, after, before = request.channel, request.after, request.before
        limit = max(1, min(request.limit, 1000))
        out: list[wire.Record] = []
        size = 0
        ch = self._router.get(name)
        ring_first = ch.history[0].seq if ch is not None and ch.history else before
        if after + 1 < ring_first and self._local is not None:
            try:
                older = await self._local.read(name, after, min(before, ring_first), limit)
            except Exception:
                log.warning("cluster: history of %s below the ring is unreadable now", name)
                older = []
            for entry in older:
                if size >= REPLY_BYTES or len(out) >= limit:
                    return out
                out.append(record_of(entry))
                size += len(entry.data)
            after = out[-1].seq if out else after
        ch = self._router.get(name)  # the read may have taken a while
        ring = ch.history if ch is not None else ()
        if not ring or ring[0].seq > after + 1:
            return out  # the caller sees where it ends
        assert ch is not None
        for entry in itertools.islice(ring, ch.first_index(after + 1), None):
            if entry.seq >= before or size >= REPLY_BYTES or len(out) >= limit:
                break
            out.append(record_of(entry))
            size += len(entry.data)
        return out


Fetch = Callable[[str, bytes], Awaitable[bytes]]  # (owner, request) -> reply


class ClusterHistory:
    """`HistoryStore` for the router of a cluster node."""

    def __init__(self, slots: SlotMap, node: str, local: HistoryStore | None, fetch: Fetch) -> None:
        self._slots = slots
        self._node = node
        self._local = local
        self._fetch = fetch
        self.remote_reads = 0

    async def read(self, channel: str, after: int, before: int, limit: int) -> list[Entry]:
        owner = self._slots.owner_of(channel)
        if owner == self._node:
            if self._local is None:
                return []
            return await self._local.read(channel, after, before, limit)
        self.remote_reads += 1
        request = wire.HistoryRequest(channel, after, before, limit)
        reply = wire.HISTORY_REPLY.decode(await self._fetch(owner, wire.ENCODE(request)))
        return [entry_of(record, 0) for record in reply.records]

    def stats(self) -> dict[str, int]:
        local = self._local.stats() if self._local is not None else {}
        return {**local, "remote_reads": self.remote_reads}

    async def close(self) -> None:
        if self._local is not None:
            await self._local.close()
