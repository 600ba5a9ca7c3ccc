"""Properties of the publish path over arbitrary values (Hypothesis):

* any bytes as `data`, in either encoding, is either refused at `pub` or reaches every
  subscriber of both encodings (same value in the publisher's encoding);
* a batch with any mix of values delivers every acked message, in seq order, to every
  subscriber, and nothing that was refused.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.durability import Encoding
from tests.core.test_poison_values import json_pub, msgpack_pub
from tests.core.world import World

J, M = Encoding.JSON, Encoding.MSGPACK
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-5, 5)), inner, max_size=4),
    ),
    max_leaves=12,
)
ext = st.builds(
    lambda code, data: msgspec.msgpack.encode(msgspec.msgpack.Ext(code, data)),
    st.integers(-128, 127),
    st.binary(max_size=12),
)


def _msgpack_bytes(value: Any) -> bytes:
    try:
        return msgspec.msgpack.encode(value)
    except (OverflowError, TypeError):
        return b"\xc0"


def _json_bytes(value: Any) -> bytes:
    import json

    def clean(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.decode("latin-1")
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        return v

    return json.dumps(clean(value)).encode()  # NaN/Infinity: not JSON, must be refused


json_data = st.one_of(
    values.map(_json_bytes),
    st.sampled_from([b"1E400", b"-1e400", b"1" * 400, b'"\\ud800"', b"[[[[[[" * 10]),
    st.binary(max_size=24),
)
msgpack_data = st.one_of(
    values.map(_msgpack_bytes),
    ext,
    st.binary(max_size=24),
    st.lists(st.binary(min_size=1, max_size=3), min_size=1, max_size=4).map(
        lambda parts: b"\x94" + b"".join(parts)  # arrays holding arbitrary bytes
    ),
)
published = st.one_of(
    st.tuples(st.just(J), json_data),
    st.tuples(st.just(M), msgpack_data),
)


def _frame(encoding: Encoding, data: bytes, msg_id: str, ch: str = "r") -> bytes:
    return json_pub(ch, data, msg_id) if encoding == J else msgpack_pub(ch, data, msg_id)


def _decode(encoding: Encoding, data: bytes) -> Any:
    return (msgspec.json.decode if encoding == J else msgspec.msgpack.decode)(data)


@SETTINGS
@given(published)
def test_any_value_is_refused_or_reaches_both_encodings(item: tuple[Encoding, bytes]) -> None:
    encoding, data = item
    world = World()
    publisher = world.connect("p", encoding)
    readers = {J: world.connect("j", J), M: world.connect("m", M)}
    for reader in readers.values():
        reader.send({"op": "sub", "ch": "r"})
    publisher.session.receive(_frame(encoding, data, "x"), encoding == J)
    world.settle()
    acks = publisher.ops("ack")
    errors = publisher.ops("error")
    assert len(acks) + len(errors) == 1, (acks, errors)
    for reader in readers.values():
        msgs = reader.ops("msg")
        if errors:
            assert errors[0]["code"] in ("bad_request", "too_large") and not msgs
            continue
        assert [m["seq"] for m in msgs] == [acks[0]["seq"]] and "error" not in msgs[0]
    if acks:
        same = readers[encoding].ops("msg")[0]["data"]
        # compared as canonical bytes: NaN is not equal to itself
        enc = msgspec.json.encode if encoding == J else msgspec.msgpack.encode
        assert enc(_decode(encoding, data)) == enc(same)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), published), min_size=1, max_size=25))
def test_a_batch_of_any_values_delivers_every_acked_message(
    items: list[tuple[str, tuple[Encoding, bytes]]],
) -> None:
    world = World(publish_burst=1000)
    publishers = {J: world.connect("pj", J), M: world.connect("pm", M)}
    readers = [world.connect("rj", J), world.connect("rm", M)]
    for reader in readers:
        for ch in "abc":
            reader.send({"op": "sub", "ch": ch})
    for index, (ch, (encoding, data)) in enumerate(items):
        publishers[encoding].session.receive(_frame(encoding, data, str(index), ch), encoding == J)
    world.log.release()  # everything in one durable batch
    world.tick()
    acked: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for publisher in publishers.values():
        for ack in publisher.ops("ack"):
            acked[ack["ch"]].append(ack["seq"])
    for ch, seqs in acked.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))  # gapless, from 1
        for reader in readers:
            got = [m["seq"] for m in reader.ops("msg") if m["ch"] == ch]
            assert got == sorted(seqs)
        channel = world.router.get(ch)
        assert channel is not None and [e.seq for e in channel.history] == sorted(seqs)
