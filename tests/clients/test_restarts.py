"""The Python client across what servers do to it: a graceful restart under 200 clients,
history that no longer reaches back, `$sys.stats` starting over, token expiry and
refresh, a terminal refusal, and pacing under a low publish rate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ferry_client import Gap, Message, PublishRejected, State, TerminalError

from tests.clients.faultproxy import FaultProxy
from tests.clients.support import ADMIN, SECRET, Server, client, eventually, serve_env, token
from tests.helpers import UNIT


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    s = Server(tmp_path, serve_env(tmp_path, FERRY_ADMIN_TOKEN=ADMIN))
    yield s
    s.cleanup()


async def test_a_graceful_restart_under_200_clients_loses_and_repeats_nothing(
    server: Server,
) -> None:
    await server.start()
    readers = [client(server.url) for _ in range(200)]
    writer = client(server.url)
    for c in readers:
        await c.start()
    await writer.start()
    try:
        subs = [await c.subscribe("restart.room", timeout=UNIT * 2) for c in readers]
        assert (await writer.publish("restart.room", "before")).seq == 1
        assert await server.stop() == 0  # SIGTERM: every client gets 1001
        await server.start()  # same port, same WAL
        await asyncio.gather(*(c.wait_open(UNIT * 4) for c in readers))
        await writer.wait_open(UNIT * 4)
        assert (await writer.publish("restart.room", "after")).seq == 2
        for sub in subs:
            got = [await sub.get(UNIT * 2), await sub.get(UNIT * 2)]
            assert [(m.seq, m.data) for m in got if isinstance(m, Message)] == [
                (1, "before"),
                (2, "after"),
            ]
            assert sub.get_nowait() is None  # nothing twice, no gap
    finally:
        await asyncio.gather(*(c.close() for c in [*readers, writer]))


async def test_history_exceeded_is_one_gap_with_the_exact_range(tmp_path: Path) -> None:
    # no replayer: past the ring of 10 the messages are gone (no deep history)
    server = Server(tmp_path, serve_env(tmp_path, FERRY_HISTORY_SIZE="10"))
    await server.start()
    try:
        async with FaultProxy("127.0.0.1", server.port or 0) as proxy:
            gaps: list[Gap] = []
            async with (
                client(proxy.url(), on_gap=gaps.append) as reader,
                client(server.url) as writer,
            ):
                sub = await reader.subscribe("gap.py", timeout=UNIT)
                for i in range(1, 6):
                    await writer.publish("gap.py", i)
                first = [await sub.get(UNIT) for _ in range(5)]
                assert [m.seq for m in first if isinstance(m, Message)] == [1, 2, 3, 4, 5]
                proxy.refuse(True)
                proxy.cut()
                await reader.wait_for(lambda: reader.state is not State.OPEN, UNIT, "offline")
                for i in range(6, 36):
                    await writer.publish("gap.py", i)
                proxy.refuse(False)
                await reader.wait_open(UNIT * 2)
                await writer.publish("gap.py", 36)
                after = await sub.get(UNIT)
                while isinstance(after, Gap):  # a gap may be queued too, besides on_gap
                    after = await sub.get(UNIT)
                await eventually(lambda: len(gaps) == 1, "the gap report")
                gap = gaps[0]
                assert (gap.first, gap.last, gap.reason) == (6, 35, "history")
                assert after.seq == 36 and sub.get_nowait() is None
                assert len(gaps) == 1 and reader.stats["gaps"] == 1
    finally:
        server.cleanup()


async def test_sys_stats_across_a_restart_is_a_new_epoch_not_a_silent_continuation(
    server: Server,
) -> None:
    await server.start()
    gaps: list[Gap] = []
    async with client(server.url, token=ADMIN, on_gap=gaps.append) as admin:
        sub = await admin.subscribe("$sys.stats", timeout=UNIT)
        first = await sub.get(UNIT * 2)
        assert isinstance(first, Message) and first.seq >= 1
        before = admin.welcome
        assert before is not None
        assert await server.stop() == 0
        await server.start()
        await admin.wait_open(UNIT * 4)
        await eventually(lambda: bool(gaps), "the epoch change to be reported")
        assert gaps[0].ch == "$sys.stats" and gaps[0].reason in ("epoch", "ahead")
        after = await sub.get(UNIT * 2)
        while isinstance(after, Gap):
            after = await sub.get(UNIT * 2)
        assert isinstance(after, Message)  # the new stream flows after the report


async def test_a_token_is_refreshed_before_it_expires_and_a_4403_is_never_retried(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path, serve_env(tmp_path, FERRY_AUTH="jwt", FERRY_JWT_SECRET=SECRET))
    await server.start()
    try:
        fetched: list[str] = []

        async def get_token() -> str:
            fetched.append("alice")
            return token("alice", ttl=3)

        async with client(server.url, get_token=get_token) as alice:
            sub = await alice.subscribe("tok.room", timeout=UNIT)
            await eventually(lambda: len(fetched) >= 3, "two refreshes", timeout=UNIT * 3)
            assert alice.state is State.OPEN  # refreshed in place: never closed with 4401
            assert alice.stats["refreshes"] >= 1 and alice.stats["connects"] == 1
            ack = await alice.publish("tok.room", "still here")
            got = await sub.get(UNIT)
            assert isinstance(got, Message) and got.seq == ack.seq
        reserved = client(server.url, token=token("admin"), auth="frame")  # nobody is admin: 4403
        await reserved.start()
        try:
            await reserved.wait_for(lambda: reserved.state is State.FAILED, UNIT * 2, "failed")
            assert isinstance(reserved.error, TerminalError) and reserved.error.code == 4403
            connects = reserved.stats.get("connects", 0)
            # an absence needs a window: a retry would come within the 0.05-0.5 s backoff
            await asyncio.sleep(1.0)
            assert reserved.state is State.FAILED
            assert reserved.stats.get("connects", 0) == connects
        finally:
            await reserved.close()
    finally:
        server.cleanup()


async def test_pacing_under_a_low_publish_rate_never_sees_rate_limited(tmp_path: Path) -> None:
    server = Server(tmp_path, serve_env(tmp_path, FERRY_PUBLISH_RATE="40", FERRY_PUBLISH_BURST="5"))
    await server.start()
    try:
        async with client(server.url) as c:
            await c.wait_open(UNIT)
            welcome = c.welcome
            assert welcome is not None and welcome.limits is not None
            results = await asyncio.gather(
                *(c.publish("paced", i) for i in range(60)), return_exceptions=True
            )
            rejected = [r for r in results if isinstance(r, PublishRejected)]
            assert rejected == []
            assert sorted(r.seq for r in results if not isinstance(r, BaseException)) == list(
                range(1, 61)
            )
    finally:
        server.cleanup()
