"""The client's sans-I/O core (clients/python/ferry_client/core.py) with a fake clock and a
scripted server: the state table, the close-code policy, backoff bounds, positions and
gaps, publishes (mid, order, deadlines, dup acks, pacing), the inbox, the bounded queue,
token refresh. No sockets, no sleeps: time is a number these tests move."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Sequence
from typing import Any

import pytest
from ferry_client import (
    Backoff,
    ClientClosed,
    Gap,
    Message,
    PayloadTooLarge,
    PublishQueueFull,
    PublishRejected,
    PublishTimeout,
    State,
    TerminalError,
    token_exp,
)
from ferry_client.core import (
    Abort,
    Config,
    Connect,
    Core,
    FetchToken,
    GapFound,
    PublishDone,
    Ready,
    Send,
    SubEnded,
    SubscribeDone,
    TokenBucket,
)
from ferry_client.machine import FINAL, TABLE, Event, TransitionError, transition
from ferry_client.policy import CLOSE_POLICY, Action, close_policy, http_policy

LIMITS = {
    "max_frame_bytes": 65536,
    "max_data_bytes": 1000,
    "publish_rate": 0.0,
    "publish_burst": 0,
    "idle_timeout_s": 60.0,
}


def jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


class Harness:
    """A core, a clock, and a scripted server speaking JSON."""

    def __init__(self, seed: int = 1, token: str | None = None, **config: Any) -> None:
        config.setdefault("backoff", Backoff(base=0.1, cap=2.0, restart_spread=3.0))
        config.setdefault("ping_interval", 1.0)
        config.setdefault("silence_timeout", 3.0)
        self.core = Core(Config(**config), random.Random(seed), token=token)
        self.now = 100.0
        self.wall = 1_800_000_000.0
        self.outputs: list[Any] = []

    # --- driving ---------------------------------------------------------------------

    def drain(self) -> list[Any]:
        out = list(self.core.out)
        self.core.out.clear()
        self.outputs.extend(out)
        return out

    def start(self) -> None:
        self.core.start(self.now, self.wall)

    def upgrade(self) -> None:
        assert state_of(self) is State.CONNECTING, self.core.state
        assert self.core.connected(self.core.conn, self.now)

    def server(self, **frame: Any) -> None:
        self.core.receive(self.core.conn, self.now, json.dumps(frame).encode())

    def welcome(
        self, epoch: str | None = "e1", inbox: tuple[str, int] | None = None, **limits: Any
    ) -> None:
        frame: dict[str, Any] = {
            "op": "welcome",
            "client": "c1",
            "user": "alice",
            "node": "n",
            "version": 1,
            "limits": {**LIMITS, **limits},
        }
        if epoch is not None:
            frame["epoch"] = epoch
        if inbox is not None:
            frame["inbox"] = {"ch": inbox[0], "seq": inbox[1]}
        self.server(**frame)

    def connect(self, **welcome: Any) -> None:
        """From IDLE/BACKOFF to the welcome (subscriptions still to be answered)."""
        if state_of(self) is State.IDLE:
            self.start()
        elif state_of(self) is State.BACKOFF:
            self.advance_to_retry()
        self.upgrade()
        self.welcome(**welcome)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds
        self.core.tick(self.now)

    def advance_to_retry(self) -> None:
        assert state_of(self) is State.BACKOFF
        at = self.core.retry_at
        assert at is not None
        self.advance(at - self.now)

    def lose(self, code: int = 1006) -> None:
        self.core.closed(self.core.conn, self.now, code, "")

    # --- reading outputs -------------------------------------------------------------

    def sent(self) -> list[dict[str, Any]]:
        return [json.loads(o.payload) for o in self.drain() if isinstance(o, Send)]

    def of(self, kind: type) -> list[Any]:
        self.drain()
        return [o for o in self.outputs if isinstance(o, kind)]

    def msg(self, ch: str, seq: int, data: Any = None) -> None:
        self.server(op="msg", ch=ch, seq=seq, ts=1, **{"from": "bob"}, data=data)

    def subscribed(self, ch: str, seq: int, **extra: Any) -> None:
        sub = self.core.subs[ch]
        self.server(op="subscribed", ch=ch, seq=seq, id=sub.req_id, **extra)

    def take_all(self, ch: str) -> list[Message | Gap]:
        items = []
        while (item := self.core.take(ch)) is not None:
            items.append(item)
        return items

    def done(self) -> dict[str, PublishDone]:
        return {d.id: d for d in self.of(PublishDone)}


def state_of(h: Harness) -> State:
    """The core's state, read afresh (mypy would keep an earlier assert's narrowing)."""
    return h.core.state


def seqs(items: Sequence[Message | Gap | None]) -> list[int]:
    return [i.seq for i in items if isinstance(i, Message)]


# --- the state table -------------------------------------------------------------------


def test_table_targets_and_final_states() -> None:
    for (state, _event), target in TABLE.items():
        assert state not in FINAL, "a final state has no way out"
        assert isinstance(target, State)
    for state in State:
        if state not in FINAL:
            assert transition(state, Event.CLOSE) is State.CLOSED
            assert transition(state, Event.FATAL) is State.FAILED
    with pytest.raises(TransitionError):
        transition(State.CLOSED, Event.CONNECT)
    with pytest.raises(TransitionError):
        transition(State.OPEN, Event.WELCOME)  # a second welcome is not a transition


def test_a_full_walk_through_the_states() -> None:
    h = Harness()
    h.start()
    assert state_of(h) is State.CONNECTING
    h.upgrade()
    assert state_of(h) is State.HANDSHAKE
    h.welcome()
    assert state_of(h) is State.OPEN  # nothing to resubscribe: synced at once
    h.lose(1006)
    assert state_of(h) is State.BACKOFF
    h.advance_to_retry()
    assert state_of(h) is State.CONNECTING
    h.drain()
    path = [(s.old, s.new) for s in h.outputs if type(s).__name__ == "StateChanged"]
    assert path == [
        (State.IDLE, State.CONNECTING),
        (State.CONNECTING, State.HANDSHAKE),
        (State.HANDSHAKE, State.SYNCING),
        (State.SYNCING, State.OPEN),
        (State.OPEN, State.BACKOFF),
        (State.BACKOFF, State.CONNECTING),
    ]


def test_syncing_waits_for_every_resubscription() -> None:
    h = Harness()
    h.core.subscribe("a")
    h.core.subscribe("b")
    h.connect()
    assert state_of(h) is State.SYNCING
    h.subscribed("a", 0)
    assert state_of(h) is State.SYNCING
    h.subscribed("b", 0)
    assert state_of(h) is State.OPEN


# --- the close-code policy -------------------------------------------------------------

RECONNECT = [1000, 1001, 1006, 1011, 1013, 4408, 4429, 3999]
TERMINAL = [4403, 1009, 1002, 1007]


@pytest.mark.parametrize("code", RECONNECT)
def test_codes_that_reconnect(code: int) -> None:
    h = Harness()
    h.connect()
    h.lose(code)
    assert state_of(h) is State.BACKOFF
    h.advance_to_retry()
    assert state_of(h) is State.CONNECTING
    assert len([o for o in h.drain() if isinstance(o, Connect)]) == 2


@pytest.mark.parametrize("code", TERMINAL)
def test_terminal_codes_are_never_retried(code: int) -> None:
    h = Harness()
    h.core.subscribe("a")
    h.connect()
    h.subscribed("a", 0)
    h.core.publish(h.now, "a", 1)
    h.lose(code)
    assert state_of(h) is State.FAILED
    assert isinstance(h.core.error, TerminalError) and h.core.error.code == code
    for _ in range(50):
        h.advance(60.0)
    assert len([o for o in h.drain() if isinstance(o, Connect)]) == 1
    assert h.core.next_deadline() is None
    errors = [d.error for d in h.of(PublishDone)]
    assert len(errors) == 1 and isinstance(errors[0], TerminalError)
    assert [e.ch for e in h.of(SubEnded)] == ["a"]
    with pytest.raises(TerminalError):
        h.core.publish(h.now, "a", 2)


def test_the_policy_table_covers_the_documented_codes() -> None:
    for code in (1000, 1001, 1006, 1011, 1013, 4408, 4429):
        assert CLOSE_POLICY[code].action is Action.RECONNECT
    assert CLOSE_POLICY[4401].action is Action.REAUTH
    for code in TERMINAL:
        assert CLOSE_POLICY[code].action is Action.TERMINAL
    assert close_policy(1001).spread and not close_policy(1006).spread
    assert http_policy(503).action is Action.RECONNECT
    assert http_policy(401).action is Action.REAUTH
    assert http_policy(403).action is Action.TERMINAL
    assert http_policy(None).action is Action.RECONNECT
    assert http_policy(502).action is Action.RECONNECT


def test_http_503_retries_401_fetches_a_token_403_stops() -> None:
    h = Harness(token="t0", token_source=True)
    h.start()
    h.core.connect_failed(h.core.conn, h.now, 503, "busy")
    assert state_of(h) is State.BACKOFF and not h.core.need_token
    h.advance_to_retry()
    h.core.connect_failed(h.core.conn, h.now, 401, "auth")
    assert state_of(h) is State.BACKOFF and h.core.need_token
    h.advance_to_retry()
    assert state_of(h) is State.TOKEN
    assert len(h.of(FetchToken)) == 1
    h.core.token_ready(h.now, h.wall, "t1")
    assert state_of(h) is State.CONNECTING
    assert [o.token for o in h.drain() if isinstance(o, Connect)] == ["t1"]
    h.core.connect_failed(h.core.conn, h.now, 403, "origin")
    assert state_of(h) is State.FAILED and h.core.error is not None
    assert h.core.error.status == 403


def test_4401_fetches_one_token_at_a_time_then_reconnects() -> None:
    calls = 0
    h = Harness(token=jwt({"exp": 1_800_000_010}), token_source=True, silence_timeout=1e9)
    h.connect()
    h.advance(8.5)  # the refresh is due before exp: one fetch starts
    calls += sum(isinstance(o, FetchToken) for o in h.drain())
    h.lose(4401)  # ... and the server closes meanwhile
    h.advance_to_retry()
    assert state_of(h) is State.TOKEN
    calls += sum(isinstance(o, FetchToken) for o in h.drain())
    assert calls == 1, "a get_token already in flight is awaited, not called again"
    h.core.token_ready(h.now, h.wall, "fresh")
    assert [o.token for o in h.drain() if isinstance(o, Connect)] == ["fresh"]


def test_4401_without_get_token_is_terminal() -> None:
    h = Harness(token="static")
    h.connect()
    h.lose(4401)
    assert state_of(h) is State.FAILED
    assert "no get_token" in str(h.core.error)


# --- backoff ---------------------------------------------------------------------------


def test_backoff_bounds_full_jitter() -> None:
    b = Backoff(base=0.1, cap=5.0, restart_spread=4.0)
    rng = random.Random(7)
    for attempt in range(40):
        ceiling = min(5.0, 0.1 * 2**attempt)
        samples = [b.delay(attempt, rng) for _ in range(300)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert min(samples) < ceiling * 0.1 and max(samples) > ceiling * 0.9  # full jitter
    spread = [b.delay(0, rng, spread=True) for _ in range(300)]
    assert all(0.0 <= s <= 4.0 for s in spread) and max(spread) > 3.5
    assert max(b.delay(0, rng) for _ in range(300)) <= 0.1  # without spread: the base


def test_reconnect_forever_with_growing_capped_delays() -> None:
    h = Harness()
    h.start()
    delays = []
    for _ in range(200):
        h.core.connect_failed(h.core.conn, h.now, None, "refused")
        assert state_of(h) is State.BACKOFF
        assert h.core.retry_at is not None
        delays.append(h.core.retry_at - h.now)
        h.advance_to_retry()
        assert state_of(h) is State.CONNECTING
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert max(delays[:3]) <= 0.4 and max(delays[10:]) > 1.0


def test_a_stable_connection_resets_the_backoff_a_flapping_one_does_not() -> None:
    h = Harness(stable_after=5.0, silence_timeout=1e9)
    h.start()
    for _ in range(6):
        h.core.connect_failed(h.core.conn, h.now, None, "refused")
        h.advance_to_retry()
    assert h.core.attempt == 6
    h.upgrade()
    h.welcome()
    h.lose()  # open for 0 s: not stable
    assert h.core.attempt == 7
    h.connect()
    h.advance(0.5)
    h.server(op="pong")
    h.advance(5.0)
    h.server(op="pong")
    h.lose()
    assert h.core.attempt == 1  # reset to 0, then this failure


def test_close_1001_spreads_the_first_attempt_over_the_restart_window() -> None:
    delays = []
    for seed in range(200):
        h = Harness(seed=seed, stable_after=0.0)
        h.connect()
        h.lose(1001)
        assert h.core.retry_at is not None
        delays.append(h.core.retry_at - h.now)
    assert all(0.0 <= d <= 3.0 for d in delays)
    assert max(delays) > 2.5 and min(delays) < 0.5  # wide, not all at once
    assert len({round(d, 3) for d in delays}) > 150
    h = Harness(stable_after=0.0)
    h.connect()
    h.lose(1006)
    assert h.core.retry_at is not None and h.core.retry_at - h.now <= 0.1


# --- keepalive -------------------------------------------------------------------------


def test_ping_when_idle_then_reconnect_on_silence() -> None:
    h = Harness(ping_interval=1.0, silence_timeout=3.0)
    h.connect()
    h.drain()
    h.advance(0.9)
    assert h.sent() == []
    h.advance(0.2)
    assert h.sent() == [{"op": "ping"}]
    h.server(op="pong")
    h.advance(0.5)
    assert h.sent() == []  # the pong was a frame: not idle
    h.advance(1.0)
    assert h.sent() == [{"op": "ping"}]
    h.advance(1.0)
    assert h.sent() == [{"op": "ping"}]
    conn = h.core.conn
    h.advance(1.1)  # 3 s without any frame
    out = h.drain()
    assert Abort(conn) in out
    assert state_of(h) is State.BACKOFF and h.core.stats["silences"] == 1


def test_ping_interval_follows_the_servers_idle_timeout() -> None:
    h = Harness(ping_interval=10.0, silence_timeout=30.0)
    h.connect(idle_timeout_s=4.0)
    assert h.core.ping_interval == 2.0


def test_stale_connections_are_ignored() -> None:
    h = Harness()
    h.connect()
    old = h.core.conn
    h.lose()
    h.advance_to_retry()
    h.upgrade()
    h.core.closed(old, h.now, 4403, "")  # the old transport's late close
    h.core.receive(old, h.now, b'{"op":"welcome"}')
    assert state_of(h) is State.HANDSHAKE
    assert not h.core.connected(old, h.now)


# --- positions, dedupe, gaps -----------------------------------------------------------


def test_dedupe_of_seq_at_or_below_the_position() -> None:
    h = Harness()
    sub = h.core.subscribe("a")
    h.connect()
    h.subscribed("a", 10, epoch="e1")
    for seq in (11, 12, 11, 12, 10, 13):
        h.msg("a", seq)
    assert sub.position == 13  # moved before the application took anything
    assert sub.consumed == 10
    items = h.take_all("a")
    assert seqs(items) == [11, 12, 13]
    assert sub.consumed == 13 and sub.dropped_dups == 3


def test_reconnect_resubscribes_with_since_and_epoch_and_drops_replayed_seqs() -> None:
    h = Harness()
    h.core.subscribe("a")
    h.connect()
    h.subscribed("a", 0, epoch="e1")
    for seq in (1, 2, 3):
        h.msg("a", seq)
    h.lose()
    h.drain()
    h.connect()
    assert h.sent() == [
        {"op": "sub", "ch": "a", "since": 3, "epoch": "e1", "id": h.core.subs["a"].req_id}
    ]
    h.subscribed("a", 5, epoch="e1", recovered=True)
    for seq in (3, 4, 5, 6):
        h.msg("a", seq)
    assert seqs(h.take_all("a")) == [1, 2, 3, 4, 5, 6]
    assert h.of(GapFound) == []


def test_a_live_gap_is_healed_by_resubscribing() -> None:
    h = Harness()
    sub = h.core.subscribe("a")
    h.connect()
    h.subscribed("a", 0, epoch="e1")
    h.drain()
    h.msg("a", 1)
    h.msg("a", 2)
    h.msg("a", 5)  # 3 and 4 went missing
    resub = h.sent()
    assert resub == [{"op": "sub", "ch": "a", "since": 2, "epoch": "e1", "id": sub.req_id}]
    h.msg("a", 6)  # still before the answer: dropped, not a second resubscribe
    assert h.sent() == []
    h.subscribed("a", 6, epoch="e1", recovered=True)
    for seq in (3, 4, 5, 6, 7):
        h.msg("a", seq)
    assert seqs(h.take_all("a")) == [1, 2, 3, 4, 5, 6, 7]
    assert sub.heals == 1 and h.of(GapFound) == []


def test_history_exceeded_is_one_gap_with_the_exact_range() -> None:
    h = Harness()
    h.core.subscribe("a")
    h.connect()
    h.subscribed("a", 0, epoch="e1")
    for seq in range(1, 6):
        h.msg("a", seq)
    h.lose()
    h.connect()
    h.subscribed("a", 40, epoch="e1", recovered=False)
    h.msg("a", 41)
    h.drain()
    gaps = [g.gap for g in h.of(GapFound)]
    assert gaps == [Gap("a", 6, 40, "history", "e1", None, 5)]
    items = h.take_all("a")
    assert seqs(items) == [1, 2, 3, 4, 5, 41]
    assert items[5] == gaps[0]  # the Gap item sits in the stream where the loss is


def test_an_epoch_change_is_a_gap_not_a_silent_continuation() -> None:
    h = Harness()
    sub = h.core.subscribe("$sys.stats")
    h.connect()
    h.subscribed("$sys.stats", 0, epoch="boot1")
    for seq in range(1, 9):
        h.msg("$sys.stats", seq)
    h.lose(1001)
    h.connect()
    assert h.sent()[-1]["epoch"] == "boot1"
    h.subscribed("$sys.stats", 2, epoch="boot2", recovered=False)
    h.msg("$sys.stats", 3)
    h.drain()
    assert [g.gap for g in h.of(GapFound)] == [
        Gap("$sys.stats", 1, 2, "epoch", "boot2", "boot1", 8)
    ]
    assert seqs(h.take_all("$sys.stats")) == [*range(1, 9), 3]
    assert sub.epoch == "boot2"


def test_seq_going_backwards_without_epochs_is_a_gap() -> None:
    h = Harness()
    h.core.subscribe("a")
    h.connect(epoch=None)
    h.subscribed("a", 0)
    for seq in (1, 2, 3):
        h.msg("a", seq)
    h.lose()
    h.connect(epoch=None)
    h.subscribed("a", 1, recovered=False)  # a memory-mode server came back with less
    h.drain()
    assert [(g.gap.reason, g.gap.first, g.gap.last) for g in h.of(GapFound)] == [("ahead", 1, 1)]


def test_gaps_go_to_the_callback_only_when_asked() -> None:
    h = Harness()
    h.core.subscribe("a", since=0, gaps_in_stream=False)
    h.connect()
    h.subscribed("a", 9, recovered=False)
    h.drain()
    assert len(h.of(GapFound)) == 1
    assert h.take_all("a") == []


def test_the_first_answer_resolves_subscribe_errors_end_it() -> None:
    h = Harness()
    h.core.subscribe("ok")
    h.core.subscribe("no")
    h.connect()
    h.subscribed("ok", 3)
    h.server(op="error", code="forbidden", reason="nope", id=h.core.subs["no"].req_id)
    assert state_of(h) is State.OPEN
    h.drain()
    done = {d.ch: d.error for d in h.of(SubscribeDone)}
    assert done["ok"] is None and done["no"] is not None and "forbidden" in str(done["no"])
    assert "no" not in h.core.subs


def test_unknown_ops_and_fields_are_ignored() -> None:
    h = Harness()
    h.core.subscribe("a")
    h.connect()
    h.server(op="subscribed", ch="a", seq=0, id=h.core.subs["a"].req_id, future="x")
    h.server(op="something_new", x=1)
    h.core.receive(h.core.conn, h.now, b"not json")
    h.msg("a", 1, {"k": [1, 2]})
    assert h.take_all("a") == [Message("a", 1, 1, "bob", {"k": [1, 2]})]
    assert h.core.stats["bad_frames"] == 1


# --- the bounded queue -----------------------------------------------------------------


def test_overflow_drops_the_tail_and_resubscribes_from_the_last_consumed_seq() -> None:
    h = Harness(queue_size=3)
    sub = h.core.subscribe("a")
    h.connect()
    h.subscribed("a", 0, epoch="e1")
    h.drain()
    for seq in range(1, 8):
        h.msg("a", seq)
    assert sub.position == 3 and sub.overflow and sub.dropped_overflow == 4
    assert h.sent() == []  # nothing yet: the application has not drained the queue
    assert seqs([h.core.take("a"), h.core.take("a")]) == [1, 2]
    assert h.sent() == []
    assert seqs([h.core.take("a")]) == [3]
    assert h.sent() == [{"op": "sub", "ch": "a", "since": 3, "epoch": "e1", "id": sub.req_id}]
    h.subscribed("a", 7, epoch="e1", recovered=True)
    for seq in range(4, 8):
        h.msg("a", seq)
    assert seqs(h.take_all("a")) == [4, 5, 6]  # 7 overflowed again...
    assert h.sent() == [{"op": "sub", "ch": "a", "since": 6, "epoch": "e1", "id": sub.req_id}]
    h.subscribed("a", 7, epoch="e1", recovered=True)
    h.msg("a", 7)  # ...and came with the next replay
    assert seqs(h.take_all("a")) == [7]
    assert h.of(GapFound) == []


# --- publishing ------------------------------------------------------------------------


def test_each_publish_has_a_mid_and_its_own_id() -> None:
    h = Harness()
    h.connect()
    h.drain()
    a = h.core.publish(h.now, "a", {"n": 1})
    b = h.core.publish(h.now, "a", {"n": 2})
    frames = h.sent()
    assert [f["op"] for f in frames] == ["pub", "pub"]
    assert [f["id"] for f in frames] == [a[0], b[0]] and a[0] != b[0]
    assert [f["mid"] for f in frames] == [a[1], b[1]] and a[1] != b[1]
    assert all(len(f["mid"]) == 32 for f in frames)
    assert [f["data"] for f in frames] == [{"n": 1}, {"n": 2}]


def test_offline_publishes_keep_order_and_are_resent_with_the_same_mid_after_resubscribing() -> (
    None
):
    h = Harness()
    h.core.subscribe("a")
    h.connect()
    h.subscribed("a", 0)
    h.drain()
    first = [h.core.publish(h.now, "a", i) for i in range(3)]
    sent_first = h.sent()
    h.lose()
    later = [h.core.publish(h.now, "a", i) for i in range(3, 5)]  # while disconnected
    h.connect()
    assert [f["op"] for f in h.sent()] == ["sub"]  # publishes wait for the resubscription
    h.subscribed("a", 0, recovered=True)
    resent = h.sent()
    assert [f["mid"] for f in resent] == [m for _, m in first + later]
    assert [f["data"] for f in resent] == [0, 1, 2, 3, 4]
    assert [f["mid"] for f in resent[:3]] == [f["mid"] for f in sent_first]
    assert h.core.stats["resent"] == 3


def test_a_dup_ack_resolves_with_the_original_seq() -> None:
    h = Harness()
    h.connect()
    pid, mid = h.core.publish(h.now, "a", 1)
    h.lose()  # the ack was lost
    h.connect()
    assert h.sent()[-1]["mid"] == mid
    h.server(op="ack", ch="a", seq=41, id=pid, dup=True)
    h.server(op="ack", ch="a", seq=41, id=pid, dup=True)  # a stray second ack: ignored
    h.drain()
    done = h.of(PublishDone)
    assert len(done) == 1
    assert done[0].ack.seq == 41 and done[0].ack.dup and done[0].ack.mid == mid


def test_publish_deadlines_and_the_bounded_queue() -> None:
    h = Harness(publish_timeout=5.0, max_pending=3)
    h.connect()
    sent_pid, sent_mid = h.core.publish(h.now, "a", 1)
    h.lose()
    queued_pid, _ = h.core.publish(h.now, "a", 2, timeout=1.0)
    no_deadline_pid, _ = h.core.publish(h.now, "a", 3, timeout=None)
    with pytest.raises(PublishQueueFull):
        h.core.publish(h.now, "a", 4)
    h.core.connect_failed(h.core.conn, h.now, None, "refused")
    h.advance(1.0)
    error = h.done()[queued_pid].error
    assert isinstance(error, PublishTimeout)
    assert error.sent is False
    h.advance(4.0)
    err = h.done()[sent_pid].error
    assert isinstance(err, PublishTimeout) and err.sent and err.mid == sent_mid
    h.advance(1000.0)
    assert no_deadline_pid not in h.done()
    h.core.publish(h.now, "a", 5)  # room again


def test_too_large_is_raised_before_sending() -> None:
    h = Harness()
    pid, _ = h.core.publish(h.now, "a", "x" * 5000)  # limits unknown yet: queued
    h.connect(max_data_bytes=1000)
    assert isinstance(h.done()[pid].error, PayloadTooLarge)
    h.drain()
    with pytest.raises(PayloadTooLarge):
        h.core.publish(h.now, "a", "x" * 1000)  # 1002 bytes encoded
    h.core.publish(h.now, "a", "x" * 990)
    assert [f["op"] for f in h.sent()] == ["pub"]


def test_server_errors_reject_the_publish() -> None:
    h = Harness()
    h.connect()
    pid, _ = h.core.publish(h.now, "a", 1)
    h.server(op="error", code="forbidden", reason="no", id=pid)
    err = h.done()[pid].error
    assert isinstance(err, PublishRejected) and err.code == "forbidden"


def test_pacing_never_outruns_the_servers_bucket() -> None:
    """1000 publishes against welcome.limits (rate 50/s, burst 20): replaying the sends
    through the server's own token bucket (it starts full, refills continuously) never
    finds it empty, and the client still gets them all out."""
    h = Harness(max_pending=2000, publish_timeout=None, silence_timeout=1e9, ping_interval=1e9)
    h.connect(publish_rate=50.0, publish_burst=20)
    h.drain()
    for i in range(1000):
        h.core.publish(h.now, "a", i)
    start = h.now
    send_times: list[float] = []
    while len(send_times) < 1000:
        send_times += [h.now] * len(h.sent())
        at = h.core.next_deadline()
        assert at is not None
        h.advance(max(at - h.now, 0.0))
    server = TokenBucket(50.0, 20.0, start)
    for t in send_times:
        assert server.take(t), f"the server's bucket would be empty at {t - start:.3f}s"
    assert send_times[-1] - start < 1000 / 50 / 0.8  # it does not crawl either


# --- the inbox -------------------------------------------------------------------------


def test_dms_sent_while_offline_arrive_once() -> None:
    h = Harness()
    h.connect(inbox=("@alice", 3))
    box = h.core.subs["@alice"]
    assert box.inbox and box.position == 3
    h.msg("@alice", 4, "live")
    h.lose()
    h.drain()
    h.connect(inbox=("@alice", 7))  # 5, 6, 7 came while offline
    assert state_of(h) is State.SYNCING
    assert h.sent() == [{"op": "sub", "ch": "@alice", "since": 4, "epoch": "e1", "id": box.req_id}]
    h.msg("@alice", 8, "live, before the answer")  # dropped: the replay brings it
    h.subscribed("@alice", 8, epoch="e1", recovered=True)
    assert state_of(h) is State.OPEN
    for seq in (5, 6, 7, 8, 9):
        h.msg("@alice", seq)
    assert seqs(h.take_all("@alice")) == [4, 5, 6, 7, 8, 9]


def test_no_inbox_resubscribe_when_nothing_arrived() -> None:
    h = Harness()
    h.connect(inbox=("@alice", 3))
    h.lose()
    h.drain()
    h.connect(inbox=("@alice", 3))
    assert h.sent() == [] and state_of(h) is State.OPEN


# --- tokens ----------------------------------------------------------------------------


def test_token_exp_is_read_without_verifying() -> None:
    assert token_exp(jwt({"sub": "a", "exp": 1234})) == 1234.0
    assert token_exp("not-a-jwt") is None
    assert token_exp(jwt({"sub": "a"})) is None
    assert token_exp("a.!!!.c") is None


def test_refresh_before_exp_on_the_open_connection() -> None:
    h = Harness(
        token=jwt({"exp": 1_800_000_100}),
        token_source=True,
        auth="frame",
        ping_interval=1e9,
        silence_timeout=1e9,
    )
    h.start()
    h.upgrade()
    first = h.sent()
    assert first[0]["op"] == "auth"  # first-frame auth
    h.welcome()
    h.drain()
    h.advance(75.0)
    h.server(op="pong")
    assert not any(isinstance(o, FetchToken) for o in h.drain())
    h.advance(6.0)  # 81 s of 100: refresh due (a fifth of the lifetime ahead)
    assert any(isinstance(o, FetchToken) for o in h.drain())
    new = jwt({"exp": 1_800_000_300})
    h.core.token_ready(h.now, h.wall, new)
    sent = h.sent()
    assert [(f["op"], f["token"]) for f in sent] == [("auth", new)]
    assert state_of(h) is State.OPEN


# --- close -----------------------------------------------------------------------------


def test_close_ends_everything_and_never_reconnects() -> None:
    h = Harness()
    h.core.subscribe("a")
    h.connect()
    h.subscribed("a", 0)
    pid, _ = h.core.publish(h.now, "a", 1)
    h.core.close(h.now)
    assert state_of(h) is State.CLOSED
    assert isinstance(h.done()[pid].error, ClientClosed)
    h.lose(1006)
    for _ in range(10):
        h.advance(100.0)
    assert len([o for o in h.outputs if isinstance(o, Connect)]) == 1
    assert h.core.next_deadline() is None
    with pytest.raises(ClientClosed):
        h.core.subscribe("b")


def test_ready_is_emitted_when_a_queue_becomes_non_empty() -> None:
    h = Harness()
    h.core.subscribe("a")
    h.connect()
    h.subscribed("a", 0)
    h.drain()
    h.msg("a", 1)
    h.msg("a", 2)
    assert [o for o in h.drain() if isinstance(o, Ready)] == [Ready("a")]
