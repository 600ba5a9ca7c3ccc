"""The HTTP API for backends (docs/api.md, docs/openapi.json): publish, batches,
broadcasts, channel state, history, disconnects.

Requests come from `core.api_server` (the HTTP/1.1 transport) as `Request`s; each is
answered with a `Response`, or with a `Pending` one for publishes, which answer after
the fsync. Publishing goes through the same router as a WebSocket `pub`: the same channel
and value checks, the same seqs, the same dedupe index (`mid`, or the `Idempotency-Key`
header), the same durable ack. The key's name is the message's `from`.

Errors are `{"error":{"code","reason"}}` with the WebSocket protocol's code strings, and
a status per code (`core.errors.HTTP_STATUS`). Nothing here does I/O of its own.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, unquote

import msgspec

from common.durability import Encoding, Entry, LogUnavailable
from common.errors import RecordRefused
from core import presence
from core.auth import ADMIN_USER
from core.dedupe import MsgId
from core.errors import (
    HTTP_STATUS,
    BadRequest,
    Forbidden,
    LocalError,
    PeerError,
    RateLimited,
    TooLarge,
    answer_for,
)
from core.protocol import (
    MAX_CHANNEL_CHARS,
    MAX_PRESENCE_PAGE,
    PRESENCE_PAGE,
    SERVER_CHANNELS,
    SYS_PREFIX,
    Mid,
    check_value,
    transcode,
    valid_channel,
)

if TYPE_CHECKING:
    from core.outbox import Outbox
    from core.relay_state import RelayState

_JSON = Encoding.JSON  # bound once: an IntEnum attribute lookup costs ~0.1 us
MAX_ITEMS = 1000  # per batch, per broadcast
DEFAULT_PAGE = 100
MAX_PAGE = 1000
RETRY_AFTER_S = "5"  # when the WAL cannot take writes


class Request(msgspec.Struct):
    method: str
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes


class Response(msgspec.Struct):
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class ApiError(Exception):
    """An HTTP-level refusal with one of the API's own codes (core.errors.HTTP_STATUS);
    the protocol's refusals are raised as its exceptions (BadRequest, Forbidden, ...)."""

    def __init__(self, code: str, reason: str, *headers: tuple[str, str]) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.headers = headers


class Throttled(RateLimited):
    """Over the key's `FERRY_API_RATE`: a `rate_limited` with a `Retry-After`."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


# --- bodies ---------------------------------------------------------------------------


class PublishItem(msgspec.Struct):
    ch: str
    data: msgspec.Raw
    mid: Mid = None
    exclude_client: str | None = None


class PublishBatch(msgspec.Struct):
    items: Annotated[list[PublishItem], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]


class Broadcast(msgspec.Struct):
    channels: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]
    data: msgspec.Raw
    mid: Mid = None
    exclude_client: str | None = None


class Disconnect(msgspec.Struct):
    user: str | None = None
    client: str | None = None
    code: Annotated[int, msgspec.Meta(ge=4000, le=4999)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=120)] = "disconnected by the server"


class Published(msgspec.Struct):
    ch: str
    seq: int
    ts: int
    epoch: str
    dup: bool


class ErrorBody(msgspec.Struct):
    code: str
    reason: str


class Failed(msgspec.Struct):
    ch: str
    error: ErrorBody


_decoders: dict[type, msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(kind) for kind in (PublishItem, PublishBatch, Broadcast, Disconnect)
}
_encode = msgspec.json.Encoder().encode


def json_response(status: int, doc: object, *headers: tuple[str, str]) -> Response:
    return Response(status, _encode(doc), headers)


def error_response(code: str, reason: str, *headers: tuple[str, str]) -> Response:
    status = HTTP_STATUS.get(code, 400)
    if status == 503 and not headers:
        headers = (("Retry-After", RETRY_AFTER_S),)
    return json_response(status, {"error": {"code": code, "reason": reason}}, *headers)


def refusal(exc: BaseException) -> tuple[str, str]:
    """The code and reason a refused item answers with (core.errors.ANSWERS decides)."""
    code, reason = answer_for(exc)
    return str(code), reason


class Pending:
    """An answer that comes later: a publish's, after its fsync. `resolve` hands it to the
    listener (the connection) at once, inside the completion that made it, where a
    Future would schedule its callback for another loop iteration."""

    __slots__ = ("_listener", "response")

    def __init__(self) -> None:
        self.response: Response | None = None
        self._listener: Callable[[], None] | None = None

    def resolve(self, response: Response) -> None:
        if self.response is None:
            self.response = response
            if self._listener is not None:
                self._listener()

    def listen(self, listener: Callable[[], None]) -> None:
        self._listener = listener


class Waiting:
    """The `core.dedupe.Publisher` of one request's items: `msg_id` is the item's index.
    Resolves `pending` with the response once every item is answered."""

    __slots__ = ("build", "channels", "left", "pending", "results")

    def __init__(
        self,
        channels: list[str],
        pending: Pending,
        build: Callable[[list[Published | Failed | None]], Response],
    ) -> None:
        self.channels = channels
        results: list[Published | Failed | None] = [None] * len(channels)
        self.results = results
        self.left = len(channels)
        self.pending = pending
        self.build = build

    def ack(self, channel: str, seq: int, ts_ms: int, msg_id: MsgId, dup: bool = False) -> None:
        assert isinstance(msg_id, int)
        self.results[msg_id] = Published(channel, seq, ts_ms, "", dup)
        self._answered()

    def unavailable(self, msg_id: MsgId, error: BaseException | None = None) -> None:
        assert isinstance(msg_id, int)
        refused = refusal(error if error is not None else LogUnavailable())
        self.results[msg_id] = Failed(self.channels[msg_id], ErrorBody(*refused))
        self._answered()

    def _answered(self) -> None:
        self.left -= 1
        if not self.left:
            self.pending.resolve(self.build(self.results))


class Key(msgspec.Struct):
    name: str
    admin: bool
    tokens: float
    at: float


class Api:
    """Routes and handlers over the relay state; `handle` never raises."""

    def __init__(self, hub: RelayState, clock: Callable[[], float] = time.monotonic) -> None:
        self.hub = hub
        self.config = hub.config
        self._clock = clock
        # sha256(secret) -> key: a dict lookup reveals nothing about a secret's bytes
        self._keys: dict[bytes, Key] = {}
        for item in self.config.api_keys:
            name, _, secret = item.partition(":")
            self._keys[_digest(secret)] = Key(name, False, 0.0, 0.0)
        if self.config.admin_token:
            self._keys[_digest(self.config.admin_token)] = Key(ADMIN_USER, True, 0.0, 0.0)
        self.requests = 0
        self.by_status: dict[int, int] = {}

    # --- entry ---------------------------------------------------------------------------

    def handle(self, request: Request) -> Response | Pending:
        self.requests += 1
        try:
            return self._route(request)
        except ApiError as exc:
            return error_response(exc.code, exc.reason, *exc.headers)
        except Throttled as exc:
            return error_response(*refusal(exc), ("Retry-After", str(exc.retry_after)))
        except (PeerError, LocalError) as exc:
            return error_response(*refusal(exc))

    def _route(self, request: Request) -> Response | Pending:
        path = request.path
        if not path.startswith("/api/v1/"):
            raise ApiError("not_found", "no such endpoint")
        key = self._authenticate(request)
        parts = path[len("/api/v1/") :].split("/")
        method = request.method
        if parts == ["publish"]:
            _method(method, "POST")
            return self._publish(key, request)
        if parts == ["publish", "batch"]:
            _method(method, "POST")
            return self._batch(key, request)
        if parts == ["broadcast"]:
            _method(method, "POST")
            return self._broadcast(key, request)
        if parts == ["disconnect"]:
            _method(method, "POST")
            return self._disconnect(key, request)
        if parts == ["channels"]:
            _method(method, "GET")
            return self._channels(key, request)
        if len(parts) == 2 and parts[0] == "channels":
            _method(method, "GET")
            name = unquote(parts[1])
            return self._followed(key, name, lambda: self._channel(key, name))
        if len(parts) == 3 and parts[0] == "channels" and parts[2] == "messages":
            _method(method, "GET")
            name = unquote(parts[1])
            return self._followed(key, name, lambda: self._messages(key, name, request))
        if len(parts) == 3 and parts[0] == "channels" and parts[2] == "presence":
            _method(method, "GET")
            return self._presence(key, unquote(parts[1]), request)
        raise ApiError("not_found", "no such endpoint")

    def _followed(
        self, key: Key, name: str, answer: Callable[[], Response | Pending]
    ) -> Response | Pending:
        """A read of a channel another node of a cluster owns (core/remote.py) waits until
        this node follows it: its head comes from the owner, its history through it."""
        remote = self.hub.router.remote
        if remote is None or remote.ready(name):
            return answer()
        self._readable(key, name)
        pending = Pending()

        def settle(result: Response | Pending) -> None:
            if isinstance(result, Pending):
                if result.response is not None:
                    pending.resolve(result.response)
                else:
                    result.listen(lambda: settle(result))
            else:
                pending.resolve(result)

        def ready(error: BaseException | None) -> None:
            try:
                if error is not None:
                    raise error
                settle(answer())
            except ApiError as exc:
                settle(error_response(exc.code, exc.reason, *exc.headers))
            except (PeerError, LocalError) as exc:
                settle(error_response(*refusal(exc)))

        remote.follow(name, ready)
        return pending

    def _authenticate(self, request: Request) -> Key:
        header = request.headers.get("authorization", "")
        if header[:7].lower() != "bearer ":
            raise ApiError("unauthorized", "missing API key (Authorization: Bearer <secret>)")
        secret = header[7:].strip()
        key = self._keys.get(_digest(secret))
        if key is None:
            raise ApiError("unauthorized", "unknown API key")
        return key

    # --- publishing ----------------------------------------------------------------------

    def _writable(self) -> None:
        if not self.hub.log.writable:
            raise LogUnavailable()

    def _take(self, key: Key, n: int) -> None:
        rate = self.config.api_rate
        if not rate:
            return
        now = self._clock()
        burst = 2.0 * rate
        key.tokens = min(burst, key.tokens + (now - key.at) * rate) if key.at else burst
        key.at = now
        if key.tokens < n:
            wait = max(1, int((n - key.tokens) / rate + 0.999))
            raise Throttled(f"over this key's rate of {rate:g} messages/s", wait)
        key.tokens -= n

    def _publish(self, key: Key, request: Request) -> Response | Pending:
        item = _decode(PublishItem, request.body)
        idempotency = request.headers.get("idempotency-key")
        if idempotency is not None:
            if not 0 < len(idempotency) <= 128:
                raise BadRequest("Idempotency-Key must be 1-128 characters")
            item.mid = idempotency
        self._writable()
        self._take(key, 1)
        epoch = self.hub.router.epoch_of(item.ch)

        def build(done: list[Published | Failed | None]) -> Response:
            result = done[0]
            if isinstance(result, Failed):
                return error_response(result.error.code, result.error.reason)
            assert result is not None
            result.epoch = epoch
            return json_response(200, result)

        pending = Pending()
        waiting = Waiting([item.ch], pending, build)
        self._one(key, waiting, 0, item.ch, item.data, item.mid, item.exclude_client, single=True)
        return pending

    def _batch(self, key: Key, request: Request) -> Pending:
        batch = _decode(PublishBatch, request.body)
        self._writable()
        self._take(key, len(batch.items))
        return self._many(key, [(i.ch, i.data, i.mid, i.exclude_client) for i in batch.items])

    def _broadcast(self, key: Key, request: Request) -> Pending:
        doc = _decode(Broadcast, request.body)
        self._writable()
        self._take(key, len(doc.channels))
        return self._many(key, [(ch, doc.data, doc.mid, doc.exclude_client) for ch in doc.channels])

    def _many(
        self, key: Key, items: list[tuple[str, msgspec.Raw, str | None, str | None]]
    ) -> Pending:
        """Publish each item on its own (one that fails fails alone), all in this loop
        iteration: one WAL batch, one fsync; per channel in item order."""
        router = self.hub.router

        def build(done: list[Published | Failed | None]) -> Response:
            for result in done:
                if isinstance(result, Published):
                    result.epoch = router.epoch_of(result.ch)
            return json_response(200, {"results": done})

        pending = Pending()
        waiting = Waiting([item[0] for item in items], pending, build)
        results = waiting.results
        for index, (ch, data, mid, exclude) in enumerate(items):
            self._one(key, waiting, index, ch, data, mid, exclude)
        if not waiting.left:  # every item failed at once
            pending.resolve(build(results))
        return pending

    def _one(
        self,
        key: Key,
        waiting: Waiting,
        index: int,
        ch: str,
        raw: msgspec.Raw,
        mid: str | None,
        exclude_client: str | None,
        single: bool = False,
    ) -> None:
        """Hand one item to the router; a refusal is its result (raised for `single`).
        On the batch path for every item: the names it needs are looked up once."""
        limits = self.hub.limits
        try:
            # a known channel's name was checked when it was made; `$` ones need the admin
            if not ch or ch[0] == "$" or ch not in self.hub.router.channels:
                self._check(key, ch)
            data = bytes(raw)
            if len(data) > limits.max_data_bytes:
                raise TooLarge(f"data is larger than {limits.max_data_bytes} bytes")
            check_value(data, _JSON, limits.max_data_depth)
            exclude = self._outbox_of(exclude_client)
            owner = None if key.admin or ch[0] in "@$" else key.name
            self.hub.router.publish(waiting, ch, data, _JSON, index, key.name, owner, mid, exclude)
        except (PeerError, LocalError, RecordRefused) as exc:
            if single:
                raise
            waiting.results[index] = Failed(ch, ErrorBody(*refusal(exc)))
            waiting.left -= 1

    def _check(self, key: Key, ch: str) -> None:
        if not valid_channel(ch):
            raise BadRequest("channel must be 1-200 characters of A-Z a-z 0-9 _ . : @ $ -")
        if ch in SERVER_CHANNELS:
            raise Forbidden(f"{ch} is written by the server only")
        if ch.startswith(SYS_PREFIX) and not key.admin:
            raise Forbidden(f"{ch} needs the admin token")

    def _outbox_of(self, client: str | None) -> Outbox | None:
        if client is None:
            return None
        conn = self.hub.connection(client)
        return conn.outbox if conn is not None else None

    # --- reading ---------------------------------------------------------------------------

    def _channel(self, key: Key, name: str) -> Response:
        self._readable(key, name)
        router = self.hub.router
        ch = router.get(name)
        if ch is None:
            head = self.hub.log.head_of(name)
            if not head:
                raise ApiError("not_found", f"no channel {name}")
            return json_response(
                200,
                {
                    "ch": name, "seq": head, "epoch": router.epoch_of(name),
                    "subscribers": 0, "users": 0, "history": None,
                },
            )  # fmt: skip
        users = {s.user for subs in ch.subs for s in subs.values()}
        history = ch.history
        return json_response(
            200,
            {
                "ch": name,
                "seq": ch.durable_seq,
                "epoch": router.epoch_of(name),
                "subscribers": ch.subscriber_count,
                "users": len(users),
                "history": {"first": history[0].seq, "last": history[-1].seq} if history else None,
            },
        )

    def _channels(self, key: Key, request: Request) -> Response:
        prefix = request.query.get("prefix", "")
        after = request.query.get("after", "")
        limit = _int(request.query, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        names = sorted(
            name
            for name in self.hub.router.channels
            if name.startswith(prefix)
            and name > after
            and (key.admin or not name.startswith(SYS_PREFIX))
        )
        page = names[:limit]
        router = self.hub.router
        out = []
        for name in page:
            ch = router.channels[name]
            out.append({"ch": name, "seq": ch.durable_seq, "subscribers": ch.subscriber_count})
        more = len(names) > limit
        return json_response(200, {"channels": out, "next": page[-1] if more and page else None})

    def _messages(self, key: Key, name: str, request: Request) -> Response | Pending:
        """A page after `since`: from the ring, or below it from the deep history store
        (the database, then the WAL); `complete` says whether it starts right after
        `since` (false: the messages in between are gone)."""
        self._readable(key, name)
        since = _int(request.query, "since", 0, 0, 2**63)
        limit = _int(request.query, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        router = self.hub.router
        ch = router.get(name)
        head = ch.durable_seq if ch is not None else self.hub.log.head_of(name)
        ring: list[Entry] = []
        if ch is not None and ch.history and since < head:
            start = max(since + 1, ch.history[0].seq)
            index = ch.first_index(start)
            ring = list(itertools.islice(ch.history, index, index + limit))
        first = ring[0].seq if ring else head + 1
        page = _Page(name, router.epoch_of(name), head, since, limit)
        deep = router.deep
        if since + 1 >= first or since >= head or deep is None:
            return page.response(ring)
        pending = Pending()

        async def below_the_ring() -> None:
            try:
                older = await deep.read(name, since, first, limit)
            except Exception:
                older = []  # the database is down: the ring's part, marked incomplete
            pending.resolve(page.response(older + ring))

        self.hub.spawn(below_the_ring())
        return pending

    def _presence(self, key: Key, name: str, request: Request) -> Response:
        """Who is subscribed now: the totals and one page of users (core/presence.py)."""
        self._readable(key, name)
        after = request.query.get("after") or None
        if after is not None and len(after) > MAX_CHANNEL_CHARS:
            raise BadRequest(f"after must be at most {MAX_CHANNEL_CHARS} characters")
        limit = _int(request.query, "limit", PRESENCE_PAGE, 1, MAX_PRESENCE_PAGE)
        answer = presence.page(name, self.hub.router.get(name), after, limit)
        return json_response(
            200,
            {
                "ch": answer.ch,
                "users": answer.users,
                "connections": answer.connections,
                "members": answer.members,
                "next": answer.next,
            },
        )

    def _readable(self, key: Key, name: str) -> None:
        if not valid_channel(name):
            raise BadRequest("not a channel name")
        if name.startswith(SYS_PREFIX) and not key.admin:
            raise Forbidden(f"{name} needs the admin token")

    # --- connections ---------------------------------------------------------------------

    def _disconnect(self, key: Key, request: Request) -> Response:
        if not key.admin:
            raise Forbidden("disconnect needs the admin token")
        doc = _decode(Disconnect, request.body)
        if doc.user is None and doc.client is None:
            raise BadRequest("give a user or a client")
        code = doc.code if doc.code is not None else 4000
        closed = 0
        for conn in list(self.hub.connections):
            session = conn.session
            if session is None or not session.is_open:
                continue
            if conn.conn_id == doc.client or (doc.user is not None and session.user == doc.user):
                session.close(code, doc.reason)
                closed += 1
        return json_response(200, {"closed": closed})


class _Page(msgspec.Struct):
    ch: str
    epoch: str
    head: int
    since: int
    limit: int

    def response(self, entries: list[Entry]) -> Response:
        entries = entries[: self.limit]
        messages = [
            {
                "seq": e.seq,
                "ts": e.ts_ms,
                "from": e.sender,
                "data": _as_json(e.data, e.encoding),
            }
            for e in entries
        ]
        last = entries[-1].seq if entries else self.since
        return json_response(
            200,
            {
                "ch": self.ch,
                "epoch": self.epoch,
                "head": self.head,
                "messages": messages,
                "complete": self.since >= self.head
                or (bool(entries) and entries[0].seq == self.since + 1),
                "next": last if entries and last < self.head else None,
            },
        )


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _method(method: str, allowed: str) -> None:
    if method != allowed:
        raise ApiError("method_not_allowed", f"use {allowed}", ("Allow", allowed))


def _decode(kind: type[Any], body: bytes) -> Any:
    try:
        return _decoders[kind].decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid body: {exc}") from None
    except msgspec.DecodeError:
        raise BadRequest("body is not valid JSON") from None


def _int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be {low}..{high}")
    return value


def _as_json(data: bytes, encoding: int) -> msgspec.Raw | None:
    if encoding == Encoding.JSON:
        return msgspec.Raw(data)
    try:
        return msgspec.Raw(transcode(data, Encoding.MSGPACK, Encoding.JSON))
    except (msgspec.MsgspecError, TypeError, ValueError, UnicodeError):
        return None


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    path, _, query = target.partition("?")
    if not query:
        return path, {}
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    return path, params
