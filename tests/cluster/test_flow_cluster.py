"""`$sys.flow` in a cluster (issue 17; docs/cluster.md, "Metrics"): two
`ferry serve` nodes; pat publishes on n1 to a channel n2 owns, sam subscribes to it on
n1. n1's document shows the channel owned by n2, pat's edge forwarded and sam's fed over
n2's feed; n2's shows the same channel as its own with pat's edge come in by a forward."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cluster.slots import SlotMap
from tests.cluster.support import Cluster, require_nats
from tests.helpers import UNIT, Client

ADMIN = "admin-token-that-is-long-enough-0123456789"

Doc = dict[str, Any]


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_nats()
    nodes = Cluster(
        tmp_path_factory.mktemp("flow"),
        n=2,
        FERRY_ADMIN_TOKEN=ADMIN,
        FERRY_STATS_INTERVAL="0.2",
    )
    try:
        yield nodes.start_all()
    finally:
        nodes.stop_all()


def _hops(doc: Doc) -> dict[tuple[str, str], str | None]:
    return {(e["src"], e["dst"]): e.get("hop") for e in doc["edges"]}


async def _until(
    watcher: Client, publish: Callable[[], Any], good: Callable[[Doc], bool], what: str
) -> Doc:
    """Publish and read `$sys.flow` documents until one is `good` (deadline: 10 units)."""
    deadline = time.monotonic() + 10 * UNIT
    seen: Doc | None = None
    while time.monotonic() < deadline:
        await publish()
        try:
            frame = await watcher.recv(timeout=UNIT)
        except TimeoutError:
            continue
        if frame["op"] != "msg" or frame["ch"] != "$sys.flow":
            continue
        seen = frame["data"]
        if good(seen):
            return seen
    raise AssertionError(f"no $sys.flow document with {what}; the last: {seen}")


async def test_channels_say_their_owner_and_the_edges_that_cross_nodes(pair: Cluster) -> None:
    ch = next(f"room.{i}" for i in range(1000) if SlotMap(pair.ids).owner_of(f"room.{i}") == "n2")
    sam = await Client.connect(pair.url("n1"), user="sam")
    await sam.sub(ch)  # n1 follows n2's feed of it
    pat = await Client.connect(pair.url("n1"), user="pat")
    watch1 = await Client.connect(pair.url("n1"), token=ADMIN)
    watch2 = await Client.connect(pair.url("n2"), token=ADMIN)
    await watch1.sub("$sys.flow")
    await watch2.sub("$sys.flow")
    sent = 0

    async def publish() -> None:
        nonlocal sent
        await pat.pub(ch, sent)
        sent += 1
        assert (await pat.expect("ack"))["seq"] == sent  # forwarded, acked by n2

    sub_edge = ("c:" + ch, "s:" + sam.welcome["client"])
    pub_edge = ("p:pat", "c:" + ch)

    def on_n1(doc: Doc) -> bool:
        hops = _hops(doc)
        return pub_edge in hops and sub_edge in hops

    doc1 = await _until(watch1, publish, on_n1, f"pat -> {ch} -> sam on n1")
    assert doc1["node"] == "n1"
    (channel,) = [c for c in doc1["channels"] if c["ch"] == ch]
    assert channel["owner"] == "n2"
    hops = _hops(doc1)
    assert hops[pub_edge] == "forward"  # n1 forwarded pat's publishes to n2
    assert hops[sub_edge] == "feed"  # and n2's feed brought them to sam

    doc2 = await _until(watch2, publish, lambda d: pub_edge in _hops(d), f"pat -> {ch} on n2")
    assert doc2["node"] == "n2"
    (owned,) = [c for c in doc2["channels"] if c["ch"] == ch]
    assert owned["owner"] == "n2"
    assert _hops(doc2)[pub_edge] == "forward"  # come in from n1's forward
    await asyncio.gather(*(c.close() for c in (sam, pat, watch1, watch2)))
