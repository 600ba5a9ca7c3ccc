"""Three nodes, one MariaDB shared by their replayers (the machine's, a database of the
test's own): the rows are exactly the acked (channel, seq) set, none twice, each written
by its channel's owner, every channel's seqs contiguous. Publishes come over WebSocket and
over the HTTP API, both forwarded to the owners."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pymysql

from cluster.slots import SlotMap
from tests.cluster.support import Cluster, Load, require_nats
from tests.helpers import UNIT, Client, free_port, unavailable, wait_for
from tests.mariadb import require_mariadb

SECRET = "s" * 40


def _connect(db: str | None = None) -> pymysql.Connection:
    try:
        return pymysql.connect(host="127.0.0.1", port=3306, user="root", database=db)
    except pymysql.err.OperationalError as exc:
        unavailable(f"MariaDB at 127.0.0.1:3306 ({exc})")


async def test_the_database_holds_each_acked_message_once_written_by_its_owner(
    tmp_path: Path,
) -> None:
    require_nats()
    db = "ferry_cluster_" + secrets.token_hex(4)
    admin = _connect()
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    api_ports = {f"n{i}": free_port() for i in (1, 2, 3)}
    cluster = Cluster(
        tmp_path,
        FERRY_REPLAYER="true",
        FERRY_DB_URL=f"mysql://root@127.0.0.1:3306/{db}",
        FERRY_API_KEYS=f"backend:{SECRET}",
    )
    try:
        for node in cluster.ids:
            cluster.start(node, FERRY_API_PORT=str(api_ports[node]))
        for node in cluster.ids:
            cluster.wait_ready(node)
        slots = SlotMap(cluster.ids)
        names = [f"db.{i}" for i in range(200)]
        channels: list[str] = []
        for node in cluster.ids:  # two owned by each node
            channels += [ch for ch in names if slots.owner_of(ch) == node][:2]
        acked: set[tuple[str, int]] = set()

        async def over_websocket(node: str) -> None:
            client = await Client.connect(cluster.url(node))
            for i in range(60):
                await client.pub(channels[i % 6], {"n": node, "i": i}, msg_id=str(i))
            for _ in range(60):
                ack = await client.expect("ack")
                acked.add((ack["ch"], ack["seq"]))
            await client.close()

        async def over_http(node: str) -> None:
            url = f"http://127.0.0.1:{api_ports[node]}/api/v1/publish/batch"
            items = [{"ch": channels[i % 6], "data": {"n": node, "i": i}} for i in range(30)]
            async with httpx.AsyncClient(timeout=UNIT) as http:
                reply = await http.post(
                    url, json={"items": items}, headers={"Authorization": f"Bearer {SECRET}"}
                )
            assert reply.status_code == 200, reply.text
            for result in reply.json()["results"]:
                assert "seq" in result, result
                acked.add((result["ch"], result["seq"]))

        await asyncio.gather(
            *(over_websocket(node) for node in cluster.ids),
            *(over_http(node) for node in cluster.ids),
        )
        assert len(acked) == 3 * 90

        # the API's reads on a node that does not own the channel: through the owner
        channel = channels[0]
        reader = next(node for node in cluster.ids if node != slots.owner_of(channel))
        head = max(seq for ch, seq in acked if ch == channel)
        base = f"http://127.0.0.1:{api_ports[reader]}/api/v1/channels/{channel}"
        auth = {"Authorization": f"Bearer {SECRET}"}
        async with httpx.AsyncClient(timeout=UNIT) as http:
            state = (await http.get(base, headers=auth)).json()
            page = (await http.get(base + "/messages?since=0&limit=1000", headers=auth)).json()
        assert state["seq"] == head, state
        assert page["complete"] is True and page["head"] == head, page
        assert [m["seq"] for m in page["messages"]] == list(range(1, head + 1))

        conn = _connect(db)
        rows: list[tuple[str, str, int]] = []
        deadline = time.monotonic() + UNIT * 6
        while len(rows) < len(acked):
            assert time.monotonic() < deadline, f"{len(rows)} of {len(acked)} rows"
            await asyncio.sleep(0.1)  # polled: the replayers write on their own schedule
            conn.commit()  # a fresh snapshot
            with conn.cursor() as cur:
                cur.execute("SELECT node, channel, seq FROM ferry_messages")
                rows = [(str(n), str(c), int(s)) for n, c, s in cur.fetchall()]
        conn.close()
        assert len(rows) == len({(c, s) for _, c, s in rows})  # none twice
        assert {(c, s) for _, c, s in rows} == acked
        assert all(slots.owner_of(c) == n for n, c, _ in rows)  # a forwarded one: its owner's
        per_channel: dict[str, list[int]] = defaultdict(list)
        for _, c, s in rows:
            per_channel[c].append(s)
        for seqs in per_channel.values():
            assert sorted(seqs) == list(range(1, len(seqs) + 1))
    finally:
        cluster.stop_all()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db}")
        admin.close()


PAUSE_S = float(os.environ.get("FERRYTEST_CLUSTER_DB_PAUSE_S", "5"))  # issue 16 asks 60


async def test_the_database_paused_under_load_then_every_replayer_drains(
    tmp_path: Path,
) -> None:
    """A private MariaDB SIGSTOPped for PAUSE_S under load from all three nodes: acks go on
    (the WAL holds the backlog); after SIGCONT every replayer catches up, exactly once."""
    require_nats()
    db = require_mariadb(tmp_path / "mariadb")
    cluster = Cluster(tmp_path, FERRY_REPLAYER="true", FERRY_DB_URL=db.url)
    try:
        cluster.start_all()
        slots = SlotMap(cluster.ids)
        names = [f"pause.{i}" for i in range(100)]
        loads = [  # on each node, a channel another node owns: forwarded
            Load(
                cluster.url(node),
                next(ch for ch in names if slots.owner_of(ch) != node),
            )
            for node in cluster.ids
        ]
        stop = asyncio.Event()
        running = asyncio.gather(*(load.run(stop) for load in loads))
        await wait_for(lambda: all(len(x.acked) >= 50 for x in loads), UNIT * 2, "acks")
        db.pause()
        try:
            before = [len(x.acked) for x in loads]
            await asyncio.sleep(PAUSE_S)  # the outage's length
            assert all(len(x.acked) > b + 50 for x, b in zip(loads, before, strict=True))
        finally:
            db.resume()
        stop.set()
        await asyncio.wait_for(running, UNIT * 2)
        acked = {(x.channel, seq) for x in loads for seq in x.acked}
        conn = db.connect()
        rows: list[tuple[str, str, int]] = []
        deadline = time.monotonic() + UNIT * 6 + PAUSE_S
        while {(c, s) for _, c, s in rows} < acked:
            assert time.monotonic() < deadline, f"{len(rows)} rows for {len(acked)} acks"
            await asyncio.sleep(0.2)  # polled: the replayers write on their own schedule
            with conn.cursor() as cur:
                cur.execute("SELECT node, channel, seq FROM ferry_messages")
                rows = [(str(n), str(c), int(s)) for n, c, s in cur.fetchall()]
        conn.close()
        assert len(rows) == len({(c, s) for _, c, s in rows})  # none twice
        assert all(slots.owner_of(c) == n for n, c, _ in rows)
        for channel in {c for _, c, _ in rows}:
            seqs = sorted(s for _, c, s in rows if c == channel)
            assert seqs == list(range(1, len(seqs) + 1))
    finally:
        cluster.stop_all()
        db.stop()
