"""The outbox and its flusher, under a hand-run scheduler (no event loop): one write per
outbox per tick, pause/resume, the overflow that leads to 4408, refills, fault isolation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.outbox import Flusher, Outbox
from tests.core.world import FakeLoop, FakeWriter


class Box:
    """One outbox over a fake writer, its flusher on a `FakeLoop`."""

    def __init__(self, limit: int = 1000) -> None:
        self.loop = FakeLoop()
        self.flusher = Flusher(self.loop.call_soon)
        self.writer = FakeWriter()
        self.overflows = 0
        self.faults = 0
        self.outbox = Outbox(self.writer, self.flusher, limit, self._overflow, self._fault)

    def _overflow(self) -> None:
        self.overflows += 1

    def _fault(self, exc: BaseException) -> None:
        self.faults += 1


def test_pushes_in_one_tick_become_one_write() -> None:
    box = Box()
    for i in range(10):
        box.outbox.push(b"m%d" % i)
    assert box.writer.writes == []  # nothing before the loop turns
    box.loop.run()
    assert box.writer.writes == [b"".join(b"m%d" % i for i in range(10))]
    assert box.flusher.writes == 1 and box.flusher.bytes_out == 20


def test_one_flush_is_scheduled_per_tick_for_all_outboxes() -> None:
    loop = FakeLoop()
    scheduled: list[Callable[[], None]] = []

    def call_soon(callback: Callable[[], None]) -> None:
        scheduled.append(callback)
        loop.call_soon(callback)

    flusher = Flusher(call_soon)
    writers = [FakeWriter() for _ in range(3)]
    boxes = [Outbox(w, flusher, 1000, lambda: None) for w in writers]
    for box in boxes:
        box.push(b"a")
        box.push(b"b")
    assert len(scheduled) == 1
    loop.run()
    assert [w.writes for w in writers] == [[b"ab"]] * 3
    boxes[0].push(b"c")
    assert len(scheduled) == 2  # the next tick gets its own flush


def test_a_paused_outbox_holds_its_frames_until_resumed() -> None:
    box = Box()
    box.outbox.pause()
    box.outbox.push(b"later")
    box.loop.run()
    assert box.writer.writes == []
    box.outbox.resume()
    assert box.writer.writes == []  # resume schedules; the write is next tick's
    box.loop.run()
    assert box.writer.writes == [b"later"]


def test_passing_the_limit_drops_everything_and_reports_once() -> None:
    box = Box(limit=1000)
    box.outbox.pause()
    box.outbox.push(b"x" * 600)
    box.outbox.push(b"x" * 401)
    assert box.overflows == 1 and box.outbox.discarding and box.outbox.size == 0
    box.outbox.push(b"more")  # discarding: ignored, no second report
    assert box.outbox.size == 0 and box.overflows == 1


def test_accept_again_lets_the_closing_sessions_acks_through() -> None:
    box = Box(limit=10)
    box.outbox.push(b"x" * 11)
    box.outbox.accept_again()
    box.outbox.push(b"ack")
    box.loop.run()
    assert box.writer.writes == [b"ack"]


def test_refill_runs_after_each_flush_until_cleared() -> None:
    box = Box()
    pages = [b"p1", b"p2"]

    def refill() -> None:
        if pages:
            box.outbox.push(pages.pop(0))
        else:
            box.outbox.refill = None

    box.outbox.refill = refill
    box.outbox.push(b"sub")
    box.loop.run()
    assert box.writer.writes == [b"sub", b"p1", b"p2"] and box.outbox.refill is None


def test_flush_now_writes_even_when_paused() -> None:
    box = Box()
    box.outbox.pause()
    box.outbox.push(b"last")
    assert box.outbox.flush_now() == 4
    assert box.writer.writes == [b"last"] and not box.outbox.paused


def test_a_closed_outbox_takes_nothing() -> None:
    box = Box()
    box.outbox.push(b"queued")
    box.outbox.close()
    box.outbox.push(b"after")
    box.loop.run()
    assert box.writer.writes == [] and box.outbox.size == 0


def test_the_default_scheduler_needs_a_running_loop() -> None:
    box = Outbox(FakeWriter(), Flusher(), 1000, lambda: None)
    with pytest.raises(RuntimeError, match="no running event loop"):
        box.push(b"x")
