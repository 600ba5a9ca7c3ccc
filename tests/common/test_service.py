"""common.service.Loop: a failed round is logged and counted, and the loop goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.service import Loop, StopLoop
from tests.helpers import wait_for


async def test_a_failing_round_is_counted_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def body() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("round two breaks")

    loop = Loop("test-loop", body, 0.001, log_every=3600)
    with caplog.at_level(logging.ERROR, logger="ferry.service"):
        await loop.start()
        await wait_for(lambda: len(calls) >= 5, what="rounds after the failure")
        await loop.stop()
    stats = loop.stats()
    assert stats["failures"] == 1 and stats["running"] is False
    assert stats["last_error"] == "RuntimeError: round two breaks"
    assert [r.message for r in caplog.records if "round failed" in r.message] == [
        "test-loop round failed (1 failures so far, 0 not logged since the last line)"
    ]


async def test_repeated_failures_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def body() -> None:
        raise ValueError("always")

    loop = Loop("noisy", body, 0.001, log_every=3600)
    with caplog.at_level(logging.ERROR, logger="ferry.service"):
        await loop.start()
        await wait_for(lambda: loop.failures >= 20, what="twenty failures")
        await loop.stop()
    assert len([r for r in caplog.records if "round failed" in r.message]) == 1


async def test_stop_loop_ends_it_and_an_async_body_is_awaited() -> None:
    rounds: list[str] = []

    async def body() -> None:
        await asyncio.sleep(0)
        rounds.append("x")
        if len(rounds) == 3:
            raise StopLoop("done")

    loop = Loop("finite", body, 0.001)
    await loop.start()
    await wait_for(lambda: not loop.running, what="the loop to end by itself")
    assert rounds == ["x", "x", "x"] and loop.failures == 0
    await loop.stop()  # idempotent after the end
