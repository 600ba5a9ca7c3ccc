"""RFC 6455 rules without a socket or an event loop: `WebSocket` over a real session
(tests/core/world.py), fed frames by hand the way websockets' test_protocol.py does."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from common.durability import Encoding
from core.errors import CloseCode
from core.websocket import PONG_CHUNK, WebSocket
from tests.core.world import Peer, World, decode_frames

OP_PING, OP_PONG = 0x9, 0xA
LIMIT = 1024
PUB = b'{"op":"pub","ch":"r","data":"caf\xc3\xa9","id":1}'


@dataclass
class Frame:
    """What picows hands over: `fin`, the size, and a copy of the payload on request."""

    payload: bytes
    fin: bool = True
    copies: int = 0

    @property
    def payload_size(self) -> int:
        return len(self.payload)

    def get_payload_as_bytes(self) -> bytes:
        self.copies += 1
        return self.payload


@dataclass
class Totals:
    bytes_in: int = 0


@dataclass
class Wire:
    world: World = field(default_factory=World)
    totals: Totals = field(default_factory=Totals)

    def connect(self, encoding: Encoding = Encoding.JSON) -> tuple[Peer, WebSocket]:
        peer = self.world.connect("u", encoding)
        self.world.tick()
        peer.new_frames()  # the welcome
        return peer, WebSocket(peer.session, peer.outbox, LIMIT, self.totals)

    def control_frames(self, peer: Peer, opcode: int) -> list[bytes]:
        self.world.tick()
        return [p for op, p in decode_frames(peer.writer.data) if op == opcode]


def test_a_whole_text_message_reaches_the_session() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_data(Frame(PUB), True)
    (entry,) = wire.world.log.pending
    assert entry.data == '"café"'.encode() and wire.totals.bytes_in == len(PUB)
    assert not peer.closes


def test_fragments_are_reassembled_into_one_message() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_data(Frame(PUB[:10], fin=False), True)
    ws.receive_continuation(Frame(PUB[10:30], fin=False))
    assert wire.world.log.pending == [] and wire.totals.bytes_in == 0
    ws.receive_continuation(Frame(PUB[30:]))
    assert len(wire.world.log.pending) == 1 and wire.totals.bytes_in == len(PUB)
    assert not peer.closes


def test_a_ping_between_fragments_is_answered_and_the_message_completes() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_data(Frame(PUB[:10], fin=False), True)
    ws.receive_ping(b"mid")
    ws.receive_continuation(Frame(PUB[10:]))
    assert len(wire.world.log.pending) == 1
    assert wire.control_frames(peer, OP_PONG) == [b"mid"]


def test_a_data_frame_inside_a_fragmented_message_closes_1002() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_data(Frame(PUB[:10], fin=False), True)
    ws.receive_data(Frame(PUB), True)
    assert peer.closes == [(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")]
    assert wire.world.log.pending == []


def test_a_continuation_without_a_message_closes_1002() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_continuation(Frame(PUB))
    assert [code for code, _ in peer.closes] == [CloseCode.PROTOCOL_ERROR]


def test_a_frame_over_the_limit_closes_1009_without_copying_it() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    big = Frame(b"x" * (LIMIT + 1))
    ws.receive_data(big, False)
    assert peer.closes == [(CloseCode.MESSAGE_TOO_BIG, "message too big")]
    assert big.copies == 0


def test_a_fragmented_message_over_the_limit_in_total_closes_1009() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_data(Frame(b"x" * (LIMIT // 2), fin=False), False)
    ws.receive_continuation(Frame(b"x" * (LIMIT // 2), fin=False))  # exactly the limit
    assert not peer.closes
    ws.receive_continuation(Frame(b"x"))
    assert [code for code, _ in peer.closes] == [CloseCode.MESSAGE_TOO_BIG]


def test_a_text_message_that_is_not_utf8_closes_1007() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_data(Frame(b'{"op":"ping","id":"\xff"}'), True)
    assert peer.closes == [(CloseCode.INVALID_TEXT, "text frame is not valid UTF-8")]
    assert wire.totals.bytes_in == 0


def test_utf8_is_checked_on_the_whole_message_not_per_fragment() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    split = PUB.index(b"\xa9")  # between the two bytes of "é"
    ws.receive_data(Frame(PUB[:split], fin=False), True)
    ws.receive_continuation(Frame(PUB[split:]))
    assert not peer.closes and len(wire.world.log.pending) == 1


def test_a_fragmented_text_message_that_is_not_utf8_closes_1007() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_data(Frame(PUB[:10], fin=False), True)
    ws.receive_continuation(Frame(b"\xc3("))
    assert [code for code, _ in peer.closes] == [CloseCode.INVALID_TEXT]


def test_binary_messages_are_not_utf8_checked() -> None:
    wire = Wire()
    peer, ws = wire.connect(Encoding.MSGPACK)
    payload = msgspec.msgpack.encode({"op": "pub", "ch": "r", "data": b"\xff\xfe"})
    ws.receive_data(Frame(payload), False)
    assert not peer.closes and len(wire.world.log.pending) == 1


def test_the_clients_close_is_echoed_with_1000() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    assert ws.receive_close(close_sent=False) is False
    assert ws.close_rcvd and peer.closes == [(CloseCode.NORMAL, "")]


def test_the_close_echo_waits_for_the_acks_the_client_is_owed() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_data(Frame(PUB), True)
    ws.receive_close(close_sent=False)
    wire.world.tick()
    assert ws.close_rcvd and peer.closes == []
    wire.world.log.release()
    wire.world.tick()
    assert peer.closes == [(CloseCode.NORMAL, "")] and len(peer.ops("ack")) == 1


def test_a_close_that_answers_ours_completes_the_handshake() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    peer.session.close(CloseCode.SLOW_CONSUMER, "slow")
    assert ws.receive_close(close_sent=True) is True
    assert not ws.close_rcvd and peer.closes == [(CloseCode.SLOW_CONSUMER, "slow")]


def test_a_ping_is_answered_through_the_outbox() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.receive_ping(b"hello")
    assert len(peer.writer.writes) == 1 and peer.outbox.size == 7  # the welcome; pong queued
    assert wire.control_frames(peer, OP_PONG) == [b"hello"]


def test_pongs_for_a_paused_outbox_go_in_chunks() -> None:
    """A client that pings and never reads: its pongs are bytes in a few chunks of the
    outbox (which counts them toward its limit), not one small object per ping."""
    wire = Wire()
    peer, ws = wire.connect()
    outbox = peer.outbox
    outbox.limit = 64 * 1024
    outbox.pause()
    for i in range(10_000):
        ws.receive_ping(b"%d" % (i % 10))  # 3-byte pongs
    assert all(PONG_CHUNK <= len(chunk) < PONG_CHUNK + 127 for chunk in outbox.chunks)
    assert ws.held_pongs is not None
    assert outbox.size + len(ws.held_pongs) == 10_000 * 3  # every pong, counted
    assert len(outbox.chunks) == 10_000 * 3 // (PONG_CHUNK + 2)
    for _ in range(20_000):
        ws.receive_ping(b"x")
    assert outbox.discarding  # the 64 KiB limit: 4408 follows
    wire.world.tick()
    assert peer.closes and peer.closes[0][0] == CloseCode.SLOW_CONSUMER
    held = ws.held_pongs
    ws.receive_ping(b"x")  # a closed outbox takes nothing more
    assert ws.held_pongs is held and outbox.size == 0


def test_held_pongs_go_out_first_when_writing_resumes() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    peer.outbox.pause()
    ws.receive_ping(b"a")
    ws.receive_ping(b"b")
    assert peer.outbox.size == 0 and ws.held_pongs == bytearray(b"\x8a\x01a\x8a\x01b")
    ws.release_pongs()
    peer.outbox.resume()
    assert ws.held_pongs is None
    assert wire.control_frames(peer, OP_PONG) == [b"a", b"b"]


def _ping(wire: Wire, peer: Peer, ws: WebSocket, now: float) -> bytes:
    """Run the two sweeps that make an idle connection get a ping; its payload."""
    assert ws.keepalive(now, period_over=True, ping_timeout=5) is False  # was active
    assert wire.control_frames(peer, OP_PING) == []
    assert ws.keepalive(now + 10, period_over=True, ping_timeout=5) is False
    (payload,) = wire.control_frames(peer, OP_PING)
    assert len(payload) == 8 and ws.pinged_at == now + 10
    return payload


def test_an_idle_connection_is_pinged_and_dropped_1011_without_an_answer() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    _ping(wire, peer, ws, 100.0)
    assert ws.keepalive(114.9, period_over=False, ping_timeout=5) is False
    assert ws.keepalive(115.0, period_over=False, ping_timeout=5) is True
    assert peer.closes == [(CloseCode.INTERNAL_ERROR, "no answer to ping")]
    assert ws.keepalive(200.0, period_over=True, ping_timeout=5) is False  # closed: done


def test_the_pong_with_our_payload_answers_the_ping() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    payload = _ping(wire, peer, ws, 100.0)
    ws.receive_pong(bytes(b ^ 1 for b in payload))  # not ours
    assert ws.pinged_at
    ws.receive_pong(payload)
    assert ws.pinged_at == 0.0 and ws.active
    assert ws.keepalive(200.0, period_over=True, ping_timeout=5) is False
    assert not peer.closes and len(wire.control_frames(peer, OP_PING)) == 1  # active: no ping


def test_the_clients_own_pings_are_not_activity() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.keepalive(100.0, period_over=True, ping_timeout=5)
    ws.receive_ping(b"x")
    ws.receive_pong(b"unsolicited")
    ws.keepalive(110.0, period_over=True, ping_timeout=5)
    assert len(wire.control_frames(peer, OP_PING)) == 1


def test_a_data_frame_is_activity() -> None:
    wire = Wire()
    peer, ws = wire.connect()
    ws.keepalive(100.0, period_over=True, ping_timeout=5)
    ws.receive_data(Frame(b'{"op":"ping"}'), True)
    ws.keepalive(110.0, period_over=True, ping_timeout=5)
    assert wire.control_frames(peer, OP_PING) == [] and ws.pinged_at == 0.0
