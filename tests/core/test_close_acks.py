"""When the server closes a connection, every publish it already accepted is answered
first: acks (or `unavailable`) go out before the close frame (sans-I/O + real sockets)."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from common.durability import Encoding
from core.errors import CloseCode
from tests.core.world import World
from tests.helpers import UNIT, Client, StartRelay


@pytest.mark.parametrize(
    ("code", "trigger"),
    [
        (CloseCode.RATE_ABUSE, "rate"),
        (CloseCode.SLOW_CONSUMER, "overflow"),
        (CloseCode.MESSAGE_TOO_BIG, "close"),
        (CloseCode.PROTOCOL_ERROR, "close"),
        (CloseCode.INVALID_TEXT, "close"),
    ],
)
def test_close_waits_for_the_acks_it_owes(code: int, trigger: str) -> None:
    world = World(publish_rate=1.0, publish_burst=5, rate_abuse_limit=2, outbox_limit=64 * 1024)
    peer = world.connect("p")
    for i in range(5):
        peer.send({"op": "pub", "ch": "r", "data": i, "id": i})
    assert peer.session.inflight == 5
    if trigger == "rate":
        for _ in range(5):
            peer.send({"op": "pub", "ch": "r", "data": "too fast"})
    elif trigger == "overflow":
        peer.outbox.pause()
        peer.outbox.push(b"x" * (65 * 1024))  # past the limit: 4408 on the next turn
        world.tick()
    else:
        peer.session.close(code, "adapter closes")
    world.tick()
    assert not peer.closes  # the five publishes are still in the log's batch
    world.log.release()
    world.tick()
    assert peer.closes and peer.closes[0][0] == code
    acks = [f["id"] for f in peer.ops("ack")]
    assert acks == [0, 1, 2, 3, 4]


def test_a_failed_batch_answers_unavailable_before_the_close() -> None:
    world = World()
    peer = world.connect("p", Encoding.JSON)
    peer.send({"op": "pub", "ch": "r", "data": 1, "id": "a"})
    peer.session.close(CloseCode.RATE_ABUSE, "x")
    world.log.fail()
    world.tick()
    assert peer.closes[0][0] == CloseCode.RATE_ABUSE
    assert [(e["code"], e["id"]) for e in peer.ops("error")] == [("unavailable", "a")]


def test_a_log_that_never_answers_does_not_hold_the_close() -> None:
    world = World()
    peer = world.connect("p")
    peer.send({"op": "pub", "ch": "r", "data": 1})
    peer.session.close(CloseCode.RATE_ABUSE, "x")
    world.loop.advance(4.9)
    assert not peer.closes
    world.loop.advance(0.2)
    assert peer.closes[0][0] == CloseCode.RATE_ABUSE


@pytest.mark.parametrize("fragmented", [True, False])
async def test_ack_then_close_frame_on_a_real_socket(
    start_relay: StartRelay, fragmented: bool
) -> None:
    """A client whose message is refused with 1009 after its publishes: it receives their
    acks first, then the close frame (a fragmented message over the limit, or one frame
    between the limit and twice it)."""
    relay = await start_relay(durability="wal", max_frame_bytes=1024)
    async with websockets.connect(relay.url, max_size=None) as ws:
        json.loads(await ws.recv())  # welcome
        for i in range(20):
            await ws.send(json.dumps({"op": "pub", "ch": "r", "data": i, "id": i}))
        if fragmented:
            await ws.send(iter(["[" * 600, "]" * 600]))  # the total passes the limit
        else:
            await ws.send("[" * 700 + "]" * 700)
        acks = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
                if frame["op"] == "ack":
                    acks.append(frame["id"])
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
    assert acks == list(range(20))
    bystander = await Client.connect(relay.url)
    await bystander.sub("r")
    await bystander.close()
