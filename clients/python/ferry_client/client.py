"""The asyncio client: the sans-I/O core (ferry_client.core) driven by the event loop's
clock and picows connections (ferry_client.transport).

Every input to the core is followed by `_pump()`, which performs the core's outputs in
order (send a frame, start a connection or a get_token call, resolve a publish, wake a
subscription) and re-arms the one timer at `core.next_deadline()`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from ferry_client import core as c
from ferry_client.frames import Encoding, Welcome
from ferry_client.machine import State
from ferry_client.policy import Backoff
from ferry_client.transport import ConnectFailed, Link, connect
from ferry_client.types import (
    Ack,
    FerryError,
    Gap,
    Message,
    TerminalError,
)

log = logging.getLogger("ferry_client")

TokenSource = Callable[[], Awaitable[str] | str]
GapCallback = Callable[[Gap], Any]
Handler = Callable[[Message], Any]
_DEFAULT: Any = object()


class Subscription:
    """An async iterator of the channel's messages, in seq order, each once. A `Gap` item
    appears where messages were lost for good (unless an `on_gap` callback takes them)."""

    def __init__(self, client: Client, state: c.Subscription) -> None:
        self._client = client
        self._state = state
        self._wake = asyncio.Event()
        self.handler_errors = 0

    @property
    def ch(self) -> str:
        return self._state.ch

    @property
    def position(self) -> int | None:
        """The last seq received (queued); it moves before the message is handed out."""
        return self._state.position

    @property
    def consumed(self) -> int | None:
        """The last seq handed to the application."""
        return self._state.consumed

    @property
    def epoch(self) -> str | None:
        return self._state.epoch

    @property
    def head(self) -> int | None:
        """The channel's last seq when the server last answered this subscription."""
        return self._state.head

    @property
    def ended(self) -> bool:
        return self._state.status == c.SubStatus.ENDED

    @property
    def stats(self) -> dict[str, int]:
        s = self._state
        return {
            "dropped_dups": s.dropped_dups,
            "dropped_overflow": s.dropped_overflow,
            "heals": s.heals,
            "queued": len(s.queue),
            "handler_errors": self.handler_errors,
        }

    def get_nowait(self) -> Message | Gap | None:
        item = self._client._core.take(self.ch, self._state)
        self._client._pump()
        return item

    def __aiter__(self) -> AsyncIterator[Message | Gap]:
        return self

    async def __anext__(self) -> Message | Gap:
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            if self.ended:
                if self._state.ended_error is not None:
                    raise self._state.ended_error
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    async def get(self, timeout: float | None = None) -> Message | Gap:
        """The next item, waiting at most `timeout` seconds (TimeoutError)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def unsubscribe(self) -> None:
        self._client._core.unsubscribe(self.ch, self._client._now())
        self._client._pump()


class Client:
    """A ferry client. Use as `async with Client(url, token) as client: ...`.

    Reconnects forever (full-jitter exponential backoff) unless a close code or status
    says retrying cannot help (then every call raises TerminalError), resumes every
    subscription with `since`, and resends unacked publishes with their `mid`.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        get_token: TokenSource | None = None,
        encoding: str = "json",
        auth: str = "header",
        on_gap: GapCallback | None = None,
        on_state: Callable[[State, State, str], Any] | None = None,
        publish_timeout: float | None = 30.0,
        queue_size: int = 1000,
        max_pending: int = 10_000,
        max_inflight: int = 1000,
        backoff_base: float = 0.25,
        backoff_cap: float = 30.0,
        restart_spread: float = 5.0,
        ping_interval: float = 10.0,
        silence_timeout: float = 25.0,
        connect_timeout: float = 10.0,
        stable_after: float = 5.0,
        headers: dict[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if auth not in ("header", "query", "frame"):
            raise ValueError(f"auth must be 'header', 'query' or 'frame', not {auth!r}")
        self.url = url
        self.get_token = get_token
        self.on_gap = on_gap
        self.on_state = on_state
        self.headers = dict(headers or {})
        config = c.Config(
            encoding=Encoding(encoding),
            auth=auth,
            token_source=get_token is not None,
            backoff=Backoff(backoff_base, backoff_cap, restart_spread),
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            silence_timeout=silence_timeout,
            stable_after=stable_after,
            publish_timeout=publish_timeout,
            max_pending=max_pending,
            max_inflight=max_inflight,
            queue_size=queue_size,
        )
        self._core = c.Core(config, rng, token)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[int, Link] = {}
        self._connecting: dict[int, asyncio.Task[None]] = {}
        self._token_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._pub_futures: dict[str, asyncio.Future[Ack]] = {}
        self._sub_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._subs: dict[str, Subscription] = {}
        self._sub_gap_callbacks: dict[str, GapCallback] = {}
        self._changed = asyncio.Event()
        self._closing: list[Link] = []

    # --- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start connecting (returns at once: publishes and subscriptions queue)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._core.start(self._now(), time.time())
        self._pump()

    async def close(self) -> None:
        """Close for good: no reconnect afterwards; pending publishes fail with
        ClientClosed, iterators end, every task of the client is finished."""
        if self._loop is None:
            return
        self._core.close(self._now())
        self._pump()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [*self._connecting.values(), *self._tasks]
        if self._token_task is not None:
            tasks.append(self._token_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        links = [*self._links.values(), *self._closing]
        await asyncio.gather(*(link.wait_disconnected(2.0) for link in links))
        self._links.clear()
        self._closing.clear()

    # --- state -----------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._core.state

    @property
    def error(self) -> FerryError | None:
        """Why the client stopped (state FAILED)."""
        return self._core.error

    @property
    def welcome(self) -> Welcome | None:
        return self._core.welcome

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._core.stats)

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float | None = None, what: str = ""
    ) -> None:
        """Wait until `predicate()` holds; it is checked after every change of state."""

        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what or 'a condition'} "
                f"(state {self.state.value}: {self._core.state_reason})"
            ) from None

    async def wait_open(self, timeout: float | None = None) -> None:
        """Wait until connected and resynchronised (raises if the client stopped)."""
        await self.wait_for(
            lambda: self.state in (State.OPEN, State.FAILED, State.CLOSED), timeout, "open"
        )
        self._core._check_usable()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every publish made so far is resolved."""
        await self.wait_for(lambda: not self._pub_futures, timeout, "publishes to resolve")

    # --- publish / subscribe ---------------------------------------------------------

    async def publish(self, ch: str, data: Any, *, timeout: float | None = _DEFAULT) -> Ack:
        """Publish `data` to `ch`; resolves on the durable ack (`Ack.seq`, `Ack.dup`).

        Raises PayloadTooLarge / PublishQueueFull at once, PublishTimeout past the
        deadline (`publish_timeout` unless given), PublishRejected if the server refused it.
        """
        self._require_started()
        pid, _mid = self._core.publish(
            self._now(), ch, data, -1.0 if timeout is _DEFAULT else timeout
        )
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pub_futures[pid] = future
        self._pump()
        return await future

    async def subscribe(
        self,
        ch: str,
        since: int | None = None,
        *,
        handler: Handler | None = None,
        on_gap: GapCallback | None = None,
        queue_size: int | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """Subscribe to `ch` (from now, or replaying after `since`). Returns once the
        server answered. With `handler`, each message is passed to it (exceptions are
        logged and counted; delivery goes on) instead of being iterated."""
        self._require_started()
        gap_cb = on_gap or self.on_gap
        state = self._core.subscribe(ch, since, queue_size, gaps_in_stream=gap_cb is None)
        if on_gap is not None:
            self._sub_gap_callbacks[ch] = on_gap
        sub = self._wrapper(state)
        if not state.answered:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._sub_waiters.setdefault(ch, []).append(future)
            self._pump()
            await asyncio.wait_for(future, timeout)
        if handler is not None:
            self._spawn(self._run_handler(sub, handler))
        return sub

    async def inbox(self, timeout: float | None = None) -> Subscription:
        """The user's inbox (`@user`), tracked across reconnects."""
        self._require_started()
        await self.wait_for(
            lambda: self._core.inbox_ch is not None or self._core.final, timeout, "the inbox"
        )
        self._core._check_usable()
        ch = self._core.inbox_ch
        assert ch is not None
        return self._wrapper(self._core.subs[ch])

    def _wrapper(self, state: c.Subscription) -> Subscription:
        sub = self._subs.get(state.ch)
        if sub is None or sub._state is not state:
            sub = self._subs[state.ch] = Subscription(self, state)
        return sub

    async def _run_handler(self, sub: Subscription, handler: Handler) -> None:
        async for item in sub:
            if isinstance(item, Gap):
                continue  # delivered to on_gap, or only iterated
            try:
                result = handler(item)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                sub.handler_errors += 1
                log.exception("ferry_client: handler for %s failed on seq %d", sub.ch, item.seq)

    def _require_started(self) -> None:
        if self._loop is None:
            raise FerryError("the client is not started: use `async with Client(...)`")

    # --- the pump --------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _pump(self) -> None:
        if self._pumping or self._loop is None:
            return
        self._pumping = True
        try:
            out = self._core.out
            while out:
                try:
                    self._do(out.popleft())
                except Exception:
                    log.exception("ferry_client: an output could not be performed")
        finally:
            self._pumping = False
        self._rearm()
        self._changed.set()

    def _rearm(self) -> None:
        assert self._loop is not None
        at = self._core.next_deadline()
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_at(at, self._on_timer, at)

    def _on_timer(self, at: float) -> None:
        self._timer = None
        self._timer_at = None
        self._core.tick(max(self._now(), at))
        self._pump()

    def _do(self, action: c.Output) -> None:
        if isinstance(action, c.Send):
            link = self._links.get(action.conn)
            if link is not None:
                link.send(action.payload)
        elif isinstance(action, c.Ready):
            sub = self._subs.get(action.ch)
            if sub is not None:
                sub._wake.set()
        elif isinstance(action, c.PublishDone):
            future = self._pub_futures.pop(action.id, None)
            if future is not None and not future.done():
                if action.error is not None:
                    future.set_exception(action.error)
                else:
                    assert action.ack is not None
                    future.set_result(action.ack)
        elif isinstance(action, c.Connect):
            self._connecting[action.conn] = self._spawn(self._connect(action.conn, action.token))
        elif isinstance(action, c.Close):
            self._drop(action.conn, graceful=True, code=action.code)
        elif isinstance(action, c.Abort):
            self._drop(action.conn, graceful=False)
        elif isinstance(action, c.FetchToken):
            if self._token_task is None or self._token_task.done():
                self._token_task = self._spawn(self._fetch_token())
        elif isinstance(action, c.SubscribeDone):
            for waiter in self._sub_waiters.pop(action.ch, []):
                if not waiter.done():
                    if action.error is not None:
                        waiter.set_exception(action.error)
                    else:
                        waiter.set_result(None)
        elif isinstance(action, c.SubEnded):
            sub = self._subs.get(action.ch)
            if sub is not None:
                sub._wake.set()
        elif isinstance(action, c.GapFound):
            self._report_gap(action.gap)
        elif isinstance(action, c.StateChanged):
            log.debug(
                "ferry_client: %s -> %s (%s)", action.old.value, action.new.value, action.reason
            )
            if self.on_state is not None:
                self._callback(self.on_state, action.old, action.new, action.reason)
        elif isinstance(action, c.Terminal):
            log.warning("ferry_client: stopped for good: %s", action.error)

    def _report_gap(self, gap: Gap) -> None:
        log.warning(
            "ferry_client: gap in %s: seqs %d..%d will not be delivered (%s)",
            gap.ch,
            gap.first,
            gap.last,
            gap.reason,
        )
        callback = self._sub_gap_callbacks.get(gap.ch) or self.on_gap
        if callback is not None:
            self._callback(callback, gap)

    def _callback(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                self._spawn(result)
        except Exception:
            log.exception("ferry_client: callback %r failed", fn)

    def _drop(self, conn: int, graceful: bool, code: int = 1000) -> None:
        task = self._connecting.pop(conn, None)
        if task is not None and not task.done():
            task.cancel()
        link = self._links.pop(conn, None)
        if link is not None:
            if graceful:
                link.close(code)
                self._closing = [x for x in self._closing if not x.gone]
                self._closing.append(link)
            else:
                link.abort()

    # --- I/O tasks -------------------------------------------------------------------

    async def _connect(self, conn: int, token: str | None) -> None:
        core = self._core
        url = self.url
        headers = {"Sec-WebSocket-Protocol": core.codec.subprotocol, **self.headers}
        if token is not None:
            if core.config.auth == "query":
                url += ("&" if "?" in url else "?") + "token=" + quote(token, safe="")
            elif core.config.auth == "header":
                headers["Authorization"] = f"Bearer {token}"
        try:
            await connect(
                url,
                self,
                conn,
                binary=core.codec.binary,
                headers=headers,
                timeout=core.config.connect_timeout,
            )
        except ConnectFailed as exc:
            core.connect_failed(conn, self._now(), exc.status, str(exc))
            self._pump()
        except Exception as exc:  # anything picows raises: a failed attempt, retried
            log.warning("ferry_client: connect failed unexpectedly: %r", exc)
            core.connect_failed(conn, self._now(), None, repr(exc))
            self._pump()
        finally:
            self._connecting.pop(conn, None)

    async def _fetch_token(self) -> None:
        assert self.get_token is not None
        try:
            result = self.get_token()
            token = await result if inspect.isawaitable(result) else result
            if not isinstance(token, str) or not token:
                raise FerryError(f"get_token returned {type(token).__name__}, not a token")
        except asyncio.CancelledError:
            raise
        except TerminalError as exc:
            self._core.token_failed(self._now(), exc, terminal=True)
        except Exception as exc:
            log.warning("ferry_client: get_token failed: %r", exc)
            self._core.token_failed(self._now(), exc)
        else:
            self._core.token_ready(self._now(), time.time(), token)
        self._pump()

    # --- transport sink --------------------------------------------------------------

    def on_connected(self, conn: int, link: Link) -> bool:
        if self._core.final:
            return False
        self._links[conn] = link
        ok = self._core.connected(conn, self._now())
        if not ok:
            self._links.pop(conn, None)
        self._pump()
        return ok

    def on_payload(self, conn: int, payload: bytes) -> None:
        self._core.receive(conn, self._now(), payload)
        self._pump()

    def on_disconnected(self, conn: int, code: int, reason: str) -> None:
        self._links.pop(conn, None)
        self._core.closed(conn, self._now(), code, reason)
        self._pump()
