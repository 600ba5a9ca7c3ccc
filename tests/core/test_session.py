"""The session driven directly: no socket, no event loop, a hand-moved clock
(tests/core/world.py). Greeting, input checks, rate limits, token expiry, closing."""

from __future__ import annotations

from common.durability import Encoding
from core.errors import CloseCode
from core.memory_log import MemoryLog
from core.session import ABUSE_WINDOW_S
from tests.core.world import FakeLoop, World


def _codes(peer_errors: list[dict[str, object]]) -> list[object]:
    return [f["code"] for f in peer_errors]


def test_start_greets_and_subscribes_the_inbox() -> None:
    world = World()
    peer = world.connect("alice")
    world.tick()
    (welcome,) = peer.frames()
    assert (welcome["op"], welcome["client"], welcome["user"]) == ("welcome", "c1", "alice")
    assert peer.session.subscriptions == {"@alice"}


def test_a_binary_frame_on_a_json_session_is_a_bad_request() -> None:
    world = World()
    peer = world.connect("u")
    peer.session.receive(b'{"op":"ping"}', False)
    world.tick()
    (error,) = peer.ops("error")
    assert error["code"] == "bad_request" and "text frames only" in error["reason"]
    assert peer.session.is_open


def test_malformed_json_is_a_bad_request_not_a_close() -> None:
    world = World()
    peer = world.connect("u")
    peer.send(b'{"op":')
    world.tick()
    assert _codes(peer.ops("error")) == ["bad_request"] and not peer.closes


def test_the_protocol_ping_is_answered() -> None:
    world = World()
    peer = world.connect("u", Encoding.MSGPACK)
    peer.send({"op": "ping", "id": 3})
    world.tick()
    assert peer.ops("pong") == [{"op": "pong", "id": 3}]


def test_the_burst_is_spent_then_the_rate_refills_it() -> None:
    world = World(publish_rate=2.0, publish_burst=3, rate_abuse_limit=100)
    peer = world.connect("u")
    for _ in range(4):
        peer.send({"op": "pub", "ch": "r", "data": 1})
    assert len(world.log.pending) == 3  # the burst
    world.loop.advance(0.5)  # one token at 2/s
    peer.send({"op": "pub", "ch": "r", "data": 1})
    peer.send({"op": "pub", "ch": "r", "data": 1})
    world.settle()
    assert len(peer.ops("ack")) == 4
    assert _codes(peer.ops("error")) == ["rate_limited", "rate_limited"]


def test_rate_limited_strikes_past_the_abuse_limit_close_4429() -> None:
    world = World(publish_rate=1.0, publish_burst=2, rate_abuse_limit=3)
    peer = world.connect("u")
    for _ in range(6):
        peer.send({"op": "pub", "ch": "r", "data": 1})
    assert not peer.session.is_open
    world.settle()  # the close waits for the acks of the two accepted publishes
    assert peer.closes and peer.closes[0][0] == CloseCode.RATE_ABUSE
    assert len(peer.ops("ack")) == 2
    assert _codes(peer.ops("error")).count("rate_limited") == 4


def test_strikes_older_than_the_abuse_window_are_forgotten() -> None:
    world = World(publish_rate=0.001, publish_burst=1, rate_abuse_limit=3)
    peer = world.connect("u")
    peer.send({"op": "pub", "ch": "r", "data": 1})  # the burst
    world.settle()

    def strikes(n: int) -> None:
        for _ in range(n):
            peer.send({"op": "pub", "ch": "r", "data": 1})

    strikes(3)  # at the limit, not past it
    world.loop.advance(ABUSE_WINDOW_S + 1)
    strikes(3)  # the first three aged out: at the limit again
    assert peer.session.is_open
    strikes(1)
    assert not peer.session.is_open and peer.closes[0][0] == CloseCode.RATE_ABUSE


def test_the_token_expires_on_the_wall_clock_not_before() -> None:
    world = World()
    peer = world.connect("u", expires_at=world.loop.wall() + 10)
    world.loop.advance(9.9)
    assert not peer.closes and peer.session.is_open
    world.loop.advance(0.1)
    assert [code for code, _ in peer.closes] == [CloseCode.TOKEN_EXPIRED]


def test_closing_before_the_expiry_cancels_it() -> None:
    world = World()
    peer = world.connect("u", expires_at=world.loop.wall() + 10)
    peer.session.close(CloseCode.NORMAL, "")
    world.loop.advance(60)
    assert peer.closes == [(CloseCode.NORMAL, "")]


def test_close_is_idempotent_and_stops_reading() -> None:
    world = World()
    peer = world.connect("u")
    peer.session.close(CloseCode.PROTOCOL_ERROR, "bad")
    peer.session.close(CloseCode.NORMAL, "")
    peer.send({"op": "pub", "ch": "r", "data": 1})
    assert peer.closes == [(CloseCode.PROTOCOL_ERROR, "bad")]
    assert world.log.pending == [] and peer.session.subscriptions == set()


def test_a_memory_log_acks_on_the_next_turn_without_an_event_loop() -> None:
    loop = FakeLoop()
    world = World(log=MemoryLog(loop.call_soon), loop=loop)
    peer = world.connect("u")
    peer.send({"op": "pub", "ch": "r", "data": 1, "id": 1})
    assert peer.ops("ack") == []
    loop.run()
    assert peer.ops("ack") == [{"op": "ack", "ch": "r", "seq": 1, "id": 1}]
