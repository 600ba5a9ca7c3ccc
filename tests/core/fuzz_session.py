"""Fuzz target: bytes -> a script of client frames, log batches and clock steps run through
the sans-I/O relay (sessions, router, outboxes over a held log), with the relay's
invariants checked after every step.

    python -m tests.core.fuzz_session [atheris/libFuzzer flags, e.g. -runs=1000000]

runs it under atheris (coverage-guided; `make fuzz`); tests/core/test_fuzz.py runs the same
target briefly under Hypothesis in every test run. A failing input is a bug: an exception
escaping the relay, or a broken invariant (gapless rings, seqs in order per subscriber,
counts that match, every accepted publish answered exactly once).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from common.durability import Encoding, HistoryLimits
from core.auth import Grant, Principal
from tests.core.world import Peer, World

CHANNELS = ("a", "b", "@u0", "@u1", "$sys.stats", "c.d", "x" * 201, "")
USERS = ("u0", "u1", "u2")
# Values the publish path must take or refuse cleanly, whatever the encoding.
VALUES: tuple[bytes, ...] = (
    b"1",
    b'"text"',
    b"1E400",
    b"123456789012345678901234567890",
    b"[" * 40 + b"]" * 40,
    b'{"k":[1,2,{"z":null}]}',
    b"\xd4\x05\x01",
    b"\x81\x91\x01\x01",
    b"\xa2\xff\xfe",
    b"\xd7\xff" + b"\xff" * 8,
    b"\xc4\x03abc",
    b"\x93\x01\x02\x03",
)
T = TypeVar("T")
_enc_json = msgspec.json.encode
_enc_msgpack = msgspec.msgpack.encode


class Bytes:
    """Reads small integers and slices off the fuzz input; zeros once it runs out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def pick(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


class Run:
    def __init__(self, data: bytes) -> None:
        self.input = Bytes(data)
        self.world = World(
            history=HistoryLimits(size=8, channel_bytes=4096, total_bytes=16_384, max_channels=6),
            max_channels_per_user=4,
            outbox_limit=8192,
            max_subscriptions=4,
            publish_rate=50.0,
            publish_burst=20,
            rate_abuse_limit=5,
            max_data_depth=8,
            max_data_bytes=1024,
        )
        self.peers: list[Peer] = []
        self.seen: dict[tuple[int, str], int] = {}  # (peer, channel) -> last msg seq seen

    def frame(self, peer: Peer) -> bytes:
        b = self.input
        json = peer.session.encoding == Encoding.JSON
        enc: Callable[[object], bytes] = _enc_json if json else _enc_msgpack
        kind = b.byte() % 9
        ch = str(b.pick(CHANNELS))
        if kind == 0:  # raw bytes: whatever the decoder makes of them
            return b.take(b.byte() % 48)
        if kind in (1, 2):
            data = bytes(b.pick(VALUES)) if b.byte() % 2 else enc(b.byte())
            head = {"op": "pub", "ch": ch, "id": b.byte()}
            body = enc(head)
            if json:
                return body[:-1] + b',"data":' + data + b"}"
            return bytes([body[0] + 1]) + body[1:] + enc("data") + data
        if kind == 3:
            frame: dict[str, object] = {"op": "sub", "ch": ch}
            if b.byte() % 2:
                frame["since"] = b.byte() - 8
            return enc(frame)
        if kind == 4:
            return enc({"op": "unsub", "ch": ch})
        if kind == 5:
            return enc({"op": "ping", "id": [1] * (b.byte() % 3)})
        if kind == 6:
            return enc({"op": "auth", "token": str(b.pick(("t-same", "t-other", "bad")))})
        if kind == 7:
            return enc({"op": str(b.pick(("pub", "sub", "nope", ""))), "ch": b.byte()})
        return b"[" * (b.byte() * 8) + b"]"

    def step(self) -> None:
        b = self.input
        world = self.world
        action = b.byte() % 10
        if action == 0 or not self.peers:
            user = str(b.pick(USERS))
            encoding = Encoding.MSGPACK if b.byte() % 2 else Encoding.JSON
            self.peers.append(world.connect(user, encoding, sub=("*", "@u1")))
            world.grants["t-same"] = Grant(Principal(user=user), world.loop.time + 5)
            world.grants["t-other"] = Grant(Principal(user="zz"), None)
            return
        peer = self.peers[b.byte() % len(self.peers)]
        if action <= 4:
            peer.session.receive(self.frame(peer), peer.session.encoding == Encoding.JSON)
        elif action == 5:
            world.log.release(b.byte() % 5 or None)
        elif action == 6:
            if b.byte() % 8 == 0:
                world.log.fail()
            else:
                world.log.release()
        elif action == 7:
            if b.byte() % 2:
                peer.outbox.pause()
            else:
                peer.outbox.resume()
        elif action == 8:
            world.loop.advance(b.byte() / 10)
        else:
            peer.session.closed()
        world.tick()

    def check(self) -> None:
        router = self.world.router
        subs = 0
        for name, ch in router.channels.items():
            assert ch.name == name and not ch.forgotten
            subs += ch.subscriber_count
            seqs = [e.seq for e in ch.history]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True, seqs
            if seqs:
                assert seqs[-1] == ch.durable_seq, (name, seqs, ch.durable_seq)
            assert ch.durable_seq <= ch.last_seq and ch.replayers >= 0
        assert subs == router.subscription_count
        internal = sum(1 for name in router.channels if name[0] in "$@")
        assert internal == router.internal_channels
        limits = router.history
        assert router.history_bytes <= limits.total_bytes
        assert router.history_bytes == sum(c.history_bytes for c in router.channels.values())
        for index, peer in enumerate(self.peers):
            assert peer.session.inflight >= 0
            for frame in peer.new_frames():
                if frame["op"] == "msg":
                    key = (index, frame["ch"])
                    last = self.seen.get(key, 0)
                    assert frame["seq"] > last, (key, frame["seq"], last)
                    self.seen[key] = frame["seq"]
                elif frame["op"] == "subscribed":
                    self.seen.pop((index, frame["ch"]), None)  # a new start for that channel

    def run(self) -> None:
        steps = 0
        while not self.input.done and steps < 400:
            self.step()
            self.check()
            steps += 1
        self.world.settle()
        self.check()


def target(data: bytes) -> None:
    Run(data).run()


def main() -> None:
    import atheris  # the fuzz extra: `make fuzz` installs it
    from atheris.instrument_bytecode import instrument_all  # what atheris.instrument_all is

    instrument_all()  # core.* is imported already (through tests.core.world)
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
