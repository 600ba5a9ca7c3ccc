"""Values that cannot cross encodings, failures inside fan-out, and gapless history:
no value, and no fault inside one channel or one connection, may stop delivery to others
(sans-I/O: tests/core/world.py)."""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest

from common.durability import Encoding, Entry, RecoveredState
from core import router as router_mod
from core.protocol import UnportableValue, check_value
from core.router import Channel
from tests.core.world import World

J, M = Encoding.JSON, Encoding.MSGPACK


def msgpack_pub(ch: str, data: bytes, msg_id: str = "p") -> bytes:
    """A msgpack `pub` frame with `data` spliced in raw (any bytes, valid or not)."""
    enc = msgspec.msgpack.encode
    return (
        b"\x84"
        + enc("op")
        + enc("pub")
        + enc("ch")
        + enc(ch)
        + enc("id")
        + enc(msg_id)
        + enc("data")
        + data
    )


def json_pub(ch: str, data: bytes, msg_id: str = "p") -> bytes:
    return b'{"op":"pub","ch":"%s","id":"%s","data":%s}' % (ch.encode(), msg_id.encode(), data)


POISON: list[tuple[Encoding, bytes, str]] = [
    (J, b"1E400", "number"),
    (J, b"-1e400", "number"),
    (J, b"1" * 5000, "number"),
    (J, b"[" * 40 + b"]" * 40, "nests deeper"),
    (J, b'{"a":' * 40 + b"1" + b"}" * 40, "nests deeper"),
    (M, b"\xd4\x05\x01", "extension"),  # fixext1
    (M, b"\x81\x91\x01\x01", "map key"),  # {[1]: 1}
    (M, b"\x81\xc0\x01", "map key"),  # {nil: 1}
    (M, b"\xa2\xff\xfe", "UTF-8"),  # str with invalid UTF-8
    (M, b"\xd7\xff" + b"\xff" * 8, "timestamp"),  # nanoseconds out of range
    (M, b"\xc7\x0d\xff" + b"\0" * 13, "timestamp"),  # timestamp ext of a bad length
    (M, b"\x91" * 40 + b"\xc0", "nests deeper"),
]


@pytest.mark.parametrize(("encoding", "data", "why"), POISON)
def test_untranscodable_value_is_refused_at_pub(encoding: Encoding, data: bytes, why: str) -> None:
    world = World()
    publisher = world.connect("p", encoding)
    json_sub, msgpack_sub = world.connect("j", J), world.connect("m", M)
    for peer in (json_sub, msgpack_sub):
        peer.send({"op": "sub", "ch": "r"})
    frame = json_pub("r", data) if encoding == J else msgpack_pub("r", data)
    publisher.send(frame)
    publisher.send({"op": "pub", "ch": "r", "data": 7, "id": "ok"})
    world.settle()
    errors = publisher.ops("error")
    assert len(errors) == 1 and errors[0]["code"] == "bad_request" and errors[0]["id"] == "p"
    assert why in errors[0]["reason"]
    assert [a["id"] for a in publisher.ops("ack")] == ["ok"]
    for peer in (json_sub, msgpack_sub):
        assert [(m["seq"], m["data"]) for m in peer.ops("msg")] == [(1, 7)]


@pytest.mark.parametrize(
    ("encoding", "data", "other"),
    [
        (J, b'{"big":123456789012345678901234567890}', None),  # JSON text in a msgpack str
        (J, b"[" * 32 + b"]" * 32, None),  # exactly the nesting limit
        (M, b"\xd6\xff\x00\x00\x00\x01", "1970-01-01T00:00:01Z"),  # a valid timestamp
        (M, b"\xc4\x03abc", "YWJj"),  # bin: base64 in JSON
        (M, b"\x81\x01\x02", {"1": 2}),  # an integer map key
    ],
)
def test_transcodable_edge_values_reach_both_encodings(
    encoding: Encoding, data: bytes, other: Any
) -> None:
    world = World()
    publisher = world.connect("p", encoding)
    same, cross = world.connect("s", encoding), world.connect("x", M if encoding == J else J)
    for peer in (same, cross):
        peer.send({"op": "sub", "ch": "r"})
    publisher.send(json_pub("r", data) if encoding == J else msgpack_pub("r", data))
    world.settle()
    assert publisher.ops("ack")
    (same_msg,) = same.ops("msg")
    (cross_msg,) = cross.ops("msg")
    dec = msgspec.json.decode if encoding == J else msgspec.msgpack.decode
    assert same_msg["data"] == dec(data)
    if other is not None:
        assert cross_msg["data"] == other


def test_one_failing_channel_group_does_not_cost_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault while fanning out one channel of a WAL batch: every other channel of the
    batch is delivered, its seq moves and it is in the history ring."""
    world = World()
    publisher = world.connect("p")
    readers = {ch: world.connect(f"r-{ch}") for ch in ("a", "bad", "c")}
    for ch, peer in readers.items():
        peer.send({"op": "sub", "ch": ch})
    for ch in ("a", "bad", "c", "a", "c"):
        publisher.send({"op": "pub", "ch": ch, "data": ch, "id": ch})
    real = router_mod.frame_for

    def frame_for(entry: Entry, encoding: Encoding) -> bytes:
        if entry.channel == "bad":
            raise RuntimeError("boom")
        return real(entry, encoding)

    monkeypatch.setattr(router_mod, "frame_for", frame_for)
    world.settle()
    assert len(publisher.ops("ack")) == 5  # every publish acked
    assert [m["seq"] for m in readers["a"].ops("msg")] == [1, 2]
    assert [m["seq"] for m in readers["c"].ops("msg")] == [1, 2]
    assert world.router.counters.fanout_faults == 1
    for ch in ("a", "c"):
        channel = world.router.channels[ch]
        assert channel.durable_seq == 2 and [e.seq for e in channel.history] == [1, 2]
    monkeypatch.setattr(router_mod, "frame_for", real)
    publisher.send({"op": "pub", "ch": "bad", "data": 2})
    world.settle()
    assert [m["seq"] for m in readers["bad"].ops("msg")] == [2]  # the channel goes on


def test_a_failing_tap_does_not_stop_delivery() -> None:
    world = World()
    calls = []

    def tap(entries: list[Entry]) -> None:
        calls.append(len(entries))
        raise ValueError("tap broke")

    world.router.add_tap(tap)
    reader = world.connect("r")
    reader.send({"op": "sub", "ch": "t"})
    publisher = world.connect("p")
    for i in range(3):
        publisher.send({"op": "pub", "ch": "t", "data": i})
        world.settle()
    assert calls == [1, 1, 1] and [m["data"] for m in reader.ops("msg")] == [0, 1, 2]


def test_flusher_isolates_an_outbox_that_raises() -> None:
    """One connection whose write raises is closed with 1011; the others keep flushing."""
    world = World()
    peers = [world.connect(f"u{i}") for i in range(3)]
    for peer in peers:
        peer.send({"op": "sub", "ch": "r"})
    world.tick()
    bad = peers[1]
    bad.writer.raise_on_write = RuntimeError("socket object exploded")
    publisher = world.connect("p")
    for i in range(3):
        publisher.send({"op": "pub", "ch": "r", "data": i})
        world.settle()
    for peer in (peers[0], peers[2]):
        assert [m["data"] for m in peer.ops("msg")] == [0, 1, 2]
    assert bad.closes and bad.closes[0][0] == 1011


def test_legacy_untranscodable_entry_replays_as_untranscodable_msg() -> None:
    """A poisoned value in a WAL written before `pub` checked values: a `since` replay to
    the other encoding gets the seq without data, and the replay goes on past it."""
    world = World()
    ext = b"\xd4\x05\x01"
    entries = [
        Entry("old", seq, 1, "x", None, M, b"\x01" if seq != 2 else ext, lsn=seq)
        for seq in (1, 2, 3)
    ]
    world.router.restore(RecoveredState(next_lsn=4, heads={"old": 3}, history={"old": entries}))
    world.log.heads["old"] = 3
    reader = world.connect("r", J)
    bystander = world.connect("b", J)
    bystander.send({"op": "sub", "ch": "live"})
    reader.send({"op": "sub", "ch": "old", "since": 0})
    world.tick()
    msgs = reader.ops("msg")
    assert [m["seq"] for m in msgs] == [1, 2, 3]
    assert msgs[1]["data"] is None and msgs[1]["error"] == "untranscodable"
    assert msgs[0]["data"] == 1 and "error" not in msgs[0]
    publisher = world.connect("p")
    publisher.send({"op": "pub", "ch": "live", "data": "still here"})
    world.settle()
    assert [m["data"] for m in bystander.ops("msg")] == ["still here"]
    assert not reader.closes


def test_replay_looks_up_by_seq_even_across_a_gap() -> None:
    """`first_index` finds a seq by its value: with ring seqs [1,3,4,5,6,7] (a state the
    router never makes), since=3 starts at 4, not at 5."""
    ch = Channel("g", 7)
    from collections import deque

    ch.history = deque(Entry("g", s, 0, "u", None, J, b"1", lsn=s) for s in (1, 3, 4, 5, 6, 7))
    assert ch.history[ch.first_index(4)].seq == 4
    assert ch.history[ch.first_index(3)].seq == 3


def test_remember_never_keeps_a_gap() -> None:
    world = World()
    ch = world.router.open_channel("g", None)
    world.router._remember(ch, [Entry("g", s, 0, "u", None, J, b"1", lsn=s) for s in (1, 2)])
    world.router._remember(ch, [Entry("g", s, 0, "u", None, J, b"1", lsn=s) for s in (4, 5)])
    assert [e.seq for e in ch.history] == [4, 5]


@pytest.mark.parametrize("depth", [200, 990, 5000])
def test_deep_nesting_is_bad_request_not_a_close(depth: int) -> None:
    world = World()
    peer = world.connect()
    peer.send(json_pub("r", b"[" * depth + b"]" * depth))
    peer.send({"op": "ping", "id": "alive"})
    world.tick()
    (error,) = peer.ops("error")
    assert error["code"] == "bad_request" and "nests deeper" in error["reason"]
    assert peer.ops("pong") == [{"op": "pong", "id": "alive"}] and not peer.closes


def test_check_value_nesting_counts_only_containers() -> None:
    # 100 flat brackets inside strings don't count: the walk looks at real nesting.
    check_value(b'["' + b"[" * 100 + b'"]', J, 4)
    check_value(struct.pack(">B", 0x91) * 4 + b"\xc0", M, 4)
    with pytest.raises(UnportableValue, match="nests deeper than 4"):
        check_value(struct.pack(">B", 0x91) * 5 + b"\xc0", M, 4)
