"""Fragmentation (RFC 6455 §5.4) at the adapter: a new data frame inside an unfinished
fragmented message closes 1002, a reassembled message over the frame limit closes 1009,
control frames may come between fragments."""

from __future__ import annotations

import json

import pytest

from tests.core.adapter_raw import OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS
from tests.helpers import Client, Relay, StartRelay

START = b'{"op":"pub","ch":"frag",'


@pytest.mark.parametrize(
    ("opcode", "fin"),
    [(OP_TEXT, False), (OP_BINARY, False), (OP_TEXT, True), (OP_BINARY, True)],
    ids=["text-start", "binary-start", "text-final", "binary-final"],
)
async def test_new_data_frame_inside_a_fragmented_message_closes_1002(
    relay: Relay, opcode: int, fin: bool
) -> None:
    bystander = await Client.connect(relay.url, user="bystander")
    ws = await RawWS.connect(relay.port)
    await ws.recv_until(OP_TEXT)  # welcome
    await ws.send(OP_TEXT, START, fin=False)
    # Used to replace the unfinished message silently when fin was 0.
    await ws.send(opcode, b'{"op":"ping"}', fin=fin)
    assert await ws.expect_close() == 1002
    assert await ws.closed_by_server()
    await bystander.send({"op": "ping"})
    await bystander.expect("pong")


async def test_fragmented_message_over_the_frame_limit_closes_1009(start_relay: StartRelay) -> None:
    """Each fragment is under max_frame_bytes (picows checks frames), the message is not:
    only the reassembly check in core/listener.py stops it."""
    relay = await start_relay(max_frame_bytes=4096)
    ws = await RawWS.connect(relay.port)
    await ws.recv_until(OP_TEXT)
    body = START + b'"data":"' + b"x" * 5000 + b'","id":"big"}'
    await ws.send(OP_TEXT, body[:3000], fin=False)
    await ws.send(OP_CONT, body[3000:], fin=True)
    assert await ws.expect_close() == 1009
    # the same message in one connection, under the limit, is accepted
    ok = await RawWS.connect(relay.port)
    await ok.recv_until(OP_TEXT)
    small = START + b'"data":"' + b"x" * 3000 + b'","id":"small"}'
    await ok.send(OP_TEXT, small[:2000], fin=False)
    await ok.send(OP_CONT, small[2000:], fin=True)
    ack = json.loads((await ok.recv_until(OP_TEXT))[2])
    assert ack == {"op": "ack", "ch": "frag", "seq": 1, "id": "small"}


async def test_control_frames_between_fragments_are_fine(relay: Relay) -> None:
    ws = await RawWS.connect(relay.port)
    await ws.recv_until(OP_TEXT)
    await ws.send(OP_TEXT, START, fin=False)
    await ws.send(OP_PING, b"mid")
    await ws.send(OP_CONT, b'"data":1,"id":"f"}', fin=True)
    assert await ws.recv_until(OP_PONG) == (OP_PONG, True, b"mid")
    ack = json.loads((await ws.recv_until(OP_TEXT))[2])
    assert ack["op"] == "ack" and ack["id"] == "f"
