"""Deep history (wal/history.py): a channel's messages below its ring come back from the
database and, for what the replayer has not written yet, from the WAL; and a relay's
`sub … since` older than the ring recovers them, in order, then goes live."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from common.durability import Entry
from core.api_server import ApiServer
from tests.helpers import UNIT, Client, Relay, StartRelay, wait_for
from tests.wal.conftest import LogFactory, message
from wal.history import DeepHistory
from wal.sinks.base import MessageRow, RowBatch
from wal.sinks.sqlite import SqliteSink

NODE = "node-a"


async def test_rows_from_the_database_then_the_wal_past_its_checkpoint(
    logs: LogFactory, tmp_path: Path
) -> None:
    log, _, handlers = await logs.open(tmp_path / "wal", node_id=NODE)
    entries = [message("room", seq) for seq in range(1, 21)] + [message("other", 1)]
    for entry in entries:
        log.append(entry)
    await handlers.until_durable(entries[-1].lsn)
    url = f"sqlite:///{tmp_path / 'ferry.db'}"
    store = DeepHistory(url, NODE, str(tmp_path / "wal"), lambda: log.durable_lsn)
    try:
        # no database yet: everything from the WAL
        got = await store.read("room", 4, 10, 100)
        assert [e.seq for e in got] == [5, 6, 7, 8, 9] and store.stats()["wal_reads"] == 1
        assert got[0].data == entries[4].data and got[0].sender == "alice"
        # the replayer wrote the first 12 records: those come from the database
        sink = SqliteSink(url)
        await sink.open()
        rows = [
            MessageRow(NODE, e.lsn, e.channel, e.seq, e.ts_ms, e.sender, e.client_msg_id, 0, e.data)
            for e in entries[:12]
        ]
        await sink.write(RowBatch(NODE, rows, last_lsn=entries[11].lsn))
        await sink.close()
        before = store.stats()["wal_reads"]
        assert [e.seq for e in await store.read("room", 0, 13, 100)] == list(range(1, 13))
        assert store.stats()["wal_reads"] == before  # all in the database
        mixed = await store.read("room", 8, 100, 100)  # 9..12 from the database, 13.. the WAL
        assert [e.seq for e in mixed] == list(range(9, 21))
        assert [e.seq for e in await store.read("room", 0, 100, 5)] == [1, 2, 3, 4, 5]
        assert await store.read("room", 20, 100, 10) == []
    finally:
        await store.close()


async def test_sub_since_below_the_ring_recovers_from_the_database(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    key = "svc-secret-that-is-long-enough-0123456789"
    relay: Relay = await start_relay(
        durability="wal", replayer=True, history_size=5, api_keys=(f"svc:{key}",), api_port=0
    )
    writer = await Client.connect(relay.url)
    for i in range(1, 31):
        await writer.pub("room.deep", {"i": i}, str(i))
        assert (await writer.expect("ack"))["seq"] == i
    channel = relay.hub.router.get("room.deep")
    assert channel is not None and channel.history
    assert channel.history[0].seq == 26  # the ring holds 26..30 only
    reader = await Client.connect(relay.url)
    subscribed = await reader.sub("room.deep", since=2, epoch=reader.welcome["epoch"])
    assert subscribed["recovered"] is True and subscribed["seq"] == 30
    got = [(await reader.expect("msg"))["data"]["i"] for _ in range(28)]
    assert got == list(range(3, 31))
    await writer.pub("room.deep", {"i": 31})
    assert (await reader.expect("msg"))["seq"] == 31  # live after the replay, no gap
    # the API's pages reach below the ring too
    service = next(s for s in relay.server.services if isinstance(s, ApiServer))
    reader_r, writer_w = await asyncio.open_connection("127.0.0.1", service.port)
    try:
        writer_w.write(
            b"GET /api/v1/channels/room.deep/messages?since=0&limit=50 HTTP/1.1\r\n"
            b"Host: x\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n"
        )
        head = await asyncio.wait_for(reader_r.readuntil(b"\r\n\r\n"), UNIT)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        page = json.loads(await reader_r.readexactly(length))
    finally:
        writer_w.close()
    assert page["complete"] is True
    assert [m["seq"] for m in page["messages"]] == list(range(1, 32))


async def test_since_whose_messages_are_gone_is_not_recovered(
    start_relay: StartRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay: Relay = await start_relay(durability="wal", replayer=True, history_size=5)
    writer = await Client.connect(relay.url)
    for i in range(1, 21):
        await writer.pub("room.gone", i)
        await writer.expect("ack")
    store = relay.hub.router.deep
    assert store is not None

    async def nothing(channel: str, after: int, before: int, limit: int) -> list[Entry]:
        return []  # as if the database had been emptied and the WAL retained nothing

    monkeypatch.setattr(store, "read", nothing)
    reader = await Client.connect(relay.url)
    subscribed = await reader.sub("room.gone", since=3)
    assert subscribed["recovered"] is False and subscribed["seq"] == 20
    await writer.pub("room.gone", 21)
    assert (await reader.expect("msg"))["seq"] == 21  # live from the head, nothing replayed
    gone = relay.hub.router.get("room.gone")
    assert gone is not None
    await wait_for(lambda: gone.replayers == 0, UNIT)
