"""The client against one real `ferry serve` (shared by this module, a channel per test),
through the fault proxy where a test breaks the network: a lost ack, a half-open link,
offline publishing, inbox catch-up, the bounded queue, handlers, encodings, close()."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ferry_client import (
    Ack,
    Client,
    ClientClosed,
    Gap,
    Message,
    PublishQueueFull,
    PublishTimeout,
    State,
)
from ferry_client.client import Subscription

from tests.clients.faultproxy import C2S, S2C, FaultProxy
from tests.clients.support import client, eventually, serve_env
from tests.helpers import UNIT, ServeProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    tmp: Path = tmp_path_factory.mktemp("serve")
    proc = ServeProcess(serve_env(tmp)).start(tmp / "serve.log")
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.kill()


@pytest.fixture
async def proxy(server: ServeProcess) -> AsyncIterator[FaultProxy]:
    p = await FaultProxy("127.0.0.1", server.port).start()
    yield p
    await p.stop()


async def items(sub: Subscription, n: int) -> list[Message]:
    """The next `n` messages of `sub` (a gap among them fails the test)."""
    got: list[Message] = []
    for _ in range(n):
        item = await sub.get(UNIT)
        assert isinstance(item, Message), item
        got.append(item)
    return got


async def offline(c: Client, proxy: FaultProxy) -> None:
    """Take the client's link down and keep it down (refused) until refuse(False)."""
    proxy.refuse(True)
    proxy.cut()
    await c.wait_for(lambda: c.state is not State.OPEN, UNIT, "the link to drop")


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_lost_ack_resolves_dup_with_the_original_seq(
    server: ServeProcess, proxy: FaultProxy, encoding: str
) -> None:
    ch = f"lost.{encoding}"
    async with client(proxy.url(), encoding=encoding) as c:
        first = await c.publish(ch, {"k": 1})
        dropped = proxy.drop_ack(lambda f: f.get("ch") == ch and f.get("seq") == 2)
        ack = await c.publish(ch, {"k": 2})
        assert (await dropped)["seq"] == 2  # the server logged it; the client never heard
        assert ack == Ack(ch, 2, True, ack.mid), ack  # resolved by the retry's dup ack
        pubs = [f for f in proxy.frames(C2S, "pub") if f["ch"] == ch]
        assert [p["mid"] for p in pubs] == [first.mid, ack.mid, ack.mid]  # resent, same mid
        assert pubs[1]["id"] != pubs[0]["id"]
        assert proxy.accepted == 2
        after = await c.publish(ch, {"k": 3})
        assert (after.seq, after.dup) == (3, False)
    async with client(server.url, encoding=encoding) as fresh:
        sub = await fresh.subscribe(ch, since=0)
        assert sub.head == 3  # one message for k=2, not two
        got = await items(sub, 3)
        assert [(m.seq, m.data) for m in got] == [(1, {"k": 1}), (2, {"k": 2}), (3, {"k": 3})]


async def test_half_open_link_is_detected_by_silence_and_replaced(
    server: ServeProcess, proxy: FaultProxy
) -> None:
    ch = "halfopen"
    c = client(proxy.url(), ping_interval=0.2, silence_timeout=1.0)
    async with c, client(server.url) as publisher:
        sub = await c.subscribe(ch)
        assert proxy.blackhole() == 1  # the socket stays open, nothing flows
        for i in range(3):
            await publisher.publish(ch, i)
        await c.wait_for(
            lambda: c.stats["silences"] == 1 and c.state is State.OPEN, UNIT * 2, "a new link"
        )
        got = await items(sub, 3)
        assert [(m.seq, m.data) for m in got] == [(1, 0), (2, 1), (3, 2)]
        assert proxy.accepted == 2
        assert c.stats["pings"] >= 1  # it pinged into the silence before giving up


async def test_offline_publishes_keep_their_order_and_deadlines(
    server: ServeProcess, proxy: FaultProxy
) -> None:
    ch = "offline.order"
    async with client(proxy.url(), max_pending=21) as c:
        await c.wait_open(UNIT)
        await offline(c, proxy)
        queued = [asyncio.create_task(c.publish(ch, i)) for i in range(20)]
        late = asyncio.create_task(c.publish(ch, "late", timeout=0.3))
        await asyncio.sleep(0)
        with pytest.raises(PublishQueueFull):
            await c.publish(ch, "one too many")
        with pytest.raises(PublishTimeout) as info:
            await late
        assert info.value.sent is False
        proxy.refuse(False)
        acks = await asyncio.wait_for(asyncio.gather(*queued), UNIT * 2)
        assert [a.seq for a in acks] == list(range(1, 21))
        assert not any(a.dup for a in acks)
    async with client(server.url) as fresh:
        sub = await fresh.subscribe(ch, since=0)
        assert sub.head == 20  # "late" was never sent
        assert [m.data for m in await items(sub, 20)] == list(range(20))


async def test_inbox_dms_sent_while_offline_arrive_once(
    server: ServeProcess, proxy: FaultProxy
) -> None:
    async with (
        client(proxy.url("/ws?user=bob")) as bob,
        client(server.url + "?user=alice") as alice,
    ):
        box = await bob.inbox(UNIT)
        assert box.ch == "@bob"
        await alice.publish("@bob", "d1")
        assert [m.data for m in await items(box, 1)] == ["d1"]
        await offline(bob, proxy)
        for i in (2, 3, 4):
            await alice.publish("@bob", f"d{i}")  # bob is offline
        proxy.refuse(False)
        await bob.wait_open(UNIT * 2)
        await alice.publish("@bob", "d5")
        got = await items(box, 4)
        assert [m.data for m in got] == ["d2", "d3", "d4", "d5"]
        assert [m.sender for m in got] == ["alice"] * 4
        await alice.publish("@bob", "d6")
        assert [m.data for m in await items(box, 1)] == ["d6"]  # nothing twice in between
        sub_frames = [f for f in proxy.frames(C2S, "sub") if f["ch"] == "@bob"]
        assert [f["since"] for f in sub_frames] == [1]  # caught up with since=last read


async def test_a_throwing_handler_never_breaks_delivery(server: ServeProcess) -> None:
    ch = "handler"
    seen: list[int] = []

    def handler(msg: Message) -> None:
        seen.append(msg.seq)
        if msg.seq % 2:
            raise RuntimeError(f"boom {msg.seq}")

    async with client(server.url) as c:
        sub = await c.subscribe(ch, handler=handler)
        for i in range(10):
            await c.publish(ch, i)
        await eventually(lambda: len(seen) == 10, "10 deliveries")
        assert seen == list(range(1, 11))
        assert sub.stats["handler_errors"] == 5


async def test_a_consumer_that_publishes_cannot_deadlock_on_a_full_queue(
    server: ServeProcess,
) -> None:
    ch = "overflow"
    n = 60
    gaps: list[Gap] = []
    async with client(server.url, queue_size=4, on_gap=gaps.append) as c, client(server.url) as p:
        sub = await c.subscribe(ch)
        await asyncio.gather(*(p.publish(ch, i) for i in range(n)))  # all out before reading
        got: list[int] = []
        async for item in sub:
            assert isinstance(item, Message)
            got.append(item.data)
            await c.publish(ch + ".echo", item.seq)  # awaits its ack inside the consumer
            if len(got) == n:
                break
        assert got == list(range(n))
        assert sub.stats["dropped_overflow"] > 0  # the queue did overflow, and healed
        assert gaps == []


async def test_msgpack_and_json_clients_see_the_same_values(server: ServeProcess) -> None:
    ch = "mix"
    async with client(server.url, encoding="msgpack") as mp, client(server.url) as js:
        sub_mp = await mp.subscribe(ch)
        sub_js = await js.subscribe(ch)
        await mp.publish(ch, {"bin": b"\x00\x01", "f": 1.5, "s": "é"})
        await js.publish(ch, {"list": [1, None, True], "s": "ü"})
        mp_got = [m.data for m in await items(sub_mp, 2)]
        js_got = [m.data for m in await items(sub_js, 2)]
        assert mp_got == [
            {"bin": b"\x00\x01", "f": 1.5, "s": "é"},
            {"list": [1, None, True], "s": "ü"},
        ]
        assert js_got == [{"bin": "AAE=", "f": 1.5, "s": "é"}, {"list": [1, None, True], "s": "ü"}]


async def test_close_ends_everything_and_never_reconnects(
    server: ServeProcess, proxy: FaultProxy
) -> None:
    c = client(proxy.url())
    await c.start()
    sub = await c.subscribe("closing")
    await offline(c, proxy)
    pending = asyncio.create_task(c.publish("closing", 1))
    await asyncio.sleep(0)
    await c.close()
    with pytest.raises(ClientClosed):
        await pending
    assert [x async for x in sub] == []  # the iterator ends
    assert c.state is State.CLOSED
    assert not c._tasks and not c._connecting and c._timer is None
    assert c._core.next_deadline() is None  # nothing left that could reconnect
    proxy.refuse(False)
    attempts = proxy.accepted + proxy.refused
    with pytest.raises(ClientClosed):
        await c.publish("closing", 2)
    assert proxy.accepted + proxy.refused == attempts
    assert S2C  # (the proxy recorded both directions)
