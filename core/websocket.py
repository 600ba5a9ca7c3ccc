"""RFC 6455 for one server connection, without I/O: what a client's frames mean.

picows parses the frames; core/listener.py hands each one here and carries out what comes
back (a write through the outbox, a hang-up). The rules a server owes on top of the parse
live here, as in websockets' sans-I/O `Protocol` (src/websockets/protocol.py):

- Fragmented messages are reassembled up to `max_message_bytes` (1009 beyond: a
  fragmented message counts in total). A new data frame inside an unfinished message, or
  a continuation without one, closes with 1002 (§5.4: only control frames may come
  between a message's fragments).
- A text message must be UTF-8 (1007, §8.1).
- A ping is answered through the outbox like any other frame (picows' auto-pong would
  write past its limit): a client that pings and never reads reaches its limit (4408)
  like one that subscribes and never reads. Pongs made while the outbox is paused are
  held and pushed in chunks: the outbox counts the bytes, and a flood of tiny pongs must
  not become a flood of tiny objects.
- A close frame is echoed (§5.5.1) after the acks the client is owed (`Session.close`);
  a close that answers ours completes the closing handshake.
- Keepalive (§5.5.2, driven by core/keepalive.py's sweep): a data frame, or the pong that
  carries our ping's payload, marks the connection active; the client's own pings and
  unsolicited pongs do not (they show that it writes, not that it reads). A ping left
  unanswered for `ping_timeout` closes with 1011, as websockets does: 1001 means the
  server is going away.

Every failure goes through `Session.close`, so its close frame follows whatever the
session still owes. A frame's payload is copied (`get_payload_as_bytes`) only once its
size is known to fit.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from core.errors import InvalidText, MessageTooBig, PeerClosed, PingTimeout, ProtocolViolation
from core.protocol import ping_frame, pong_frame

if TYPE_CHECKING:
    from core.outbox import Outbox
    from core.session import Session

# Pongs made while the outbox is paused are pushed to it in chunks of this size.
PONG_CHUNK = 4096


class Frame(Protocol):
    """The part of a received frame this module reads (picows' `WSFrame` has it)."""

    @property
    def fin(self) -> bool: ...

    @property
    def payload_size(self) -> int: ...

    def get_payload_as_bytes(self) -> bytes: ...


class Totals(Protocol):
    """Where the payload bytes received are counted (the relay's `RelayState`)."""

    bytes_in: int


class WebSocket:
    """One connection's WebSocket state: reassembly, close handshake, keepalive."""

    # slots: one of these per connection (docs/benchmarks.md, memory per connection)
    __slots__ = (
        "_fragments", "_fragments_size", "_fragments_text", "_max", "_outbox", "_session",
        "_totals", "active", "close_rcvd", "held_pongs", "ping_payload", "pinged_at",
    )  # fmt: skip

    def __init__(
        self, session: Session, outbox: Outbox, max_message_bytes: int, totals: Totals
    ) -> None:
        self._session = session
        self._outbox = outbox
        self._max = max_message_bytes
        self._totals = totals
        self._fragments: list[bytes] | None = None  # an unfinished message's frames
        self._fragments_text = False
        self._fragments_size = 0
        self.close_rcvd = False  # the client's close came first: ours is the answer
        self.active = True  # a data frame or our pong since the last keepalive period
        self.pinged_at = 0.0  # when our unanswered ping went out (0: none outstanding)
        self.ping_payload: bytes | None = None
        self.held_pongs: bytearray | None = None  # pongs made while the outbox is paused

    # --- data frames (the per-frame path) --------------------------------------------

    def receive_data(self, frame: Frame, is_text: bool) -> None:
        """A text or binary frame: a whole message, or the first frame of one."""
        self.active = True
        if self._fragments is not None:
            self._session.fail(ProtocolViolation("new message inside a fragmented one"))
            return
        if frame.payload_size > self._max:
            self._session.fail(MessageTooBig("message too big"))
            return
        if not frame.fin:
            self._fragments = [frame.get_payload_as_bytes()]
            self._fragments_text = is_text
            self._fragments_size = frame.payload_size
            return
        # _deliver(), inlined: this runs once per client message
        payload = frame.get_payload_as_bytes()
        if is_text:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                self._session.fail(InvalidText("text frame is not valid UTF-8"))
                return
        self._totals.bytes_in += len(payload)
        self._session.receive(payload, is_text)

    def receive_continuation(self, frame: Frame) -> None:
        self.active = True
        fragments = self._fragments
        if fragments is None:
            self._session.fail(
                ProtocolViolation("continuation frame without a message to continue")
            )
            return
        self._fragments_size += frame.payload_size
        if self._fragments_size > self._max:
            self._session.fail(MessageTooBig("message too big"))
            return
        fragments.append(frame.get_payload_as_bytes())
        if frame.fin:
            self._fragments = None
            self._deliver(b"".join(fragments), self._fragments_text)

    def _deliver(self, payload: bytes, is_text: bool) -> None:
        if is_text:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                self._session.fail(InvalidText("text frame is not valid UTF-8"))
                return
        self._totals.bytes_in += len(payload)
        self._session.receive(payload, is_text)

    # --- control frames --------------------------------------------------------------

    def receive_ping(self, payload: bytes) -> None:
        """Answer through the outbox, after what is already queued."""
        outbox = self._outbox
        if outbox.closed:
            return
        if not outbox.paused:
            outbox.push(pong_frame(payload))
            return
        pongs = self.held_pongs
        if pongs is None:
            pongs = self.held_pongs = bytearray()
        pongs += pong_frame(payload)
        if len(pongs) >= PONG_CHUNK:
            self.held_pongs = None
            outbox.push(bytes(pongs))

    def receive_pong(self, payload: bytes) -> None:
        """Only the pong carrying our ping's payload answers it."""
        if self.ping_payload is not None and payload == self.ping_payload:
            self.ping_payload = None
            self.pinged_at = 0.0
            self.active = True

    def receive_close(self, close_sent: bool) -> bool:
        """The client's close frame. True: it answers ours (`close_sent`), the closing
        handshake is complete and the transport may hang up. Otherwise the session closes
        (1000), which sends our answer once the client's acks are queued; `close_rcvd`
        then tells the transport to hang up right after it."""
        if close_sent:
            return True
        self.close_rcvd = True
        self._session.fail(PeerClosed(""))
        return False

    def release_pongs(self) -> None:
        """The outbox may write again: the held pongs go first."""
        pongs, self.held_pongs = self.held_pongs, None
        if pongs:
            self._outbox.push(bytes(pongs))

    # --- keepalive -------------------------------------------------------------------

    def keepalive(self, now: float, period_over: bool, ping_timeout: float) -> bool:
        """One keepalive sweep's look at this connection (`period_over`: an idle period
        ended with this sweep). Pings a connection that was not active for the whole
        period. True: our ping went unanswered for `ping_timeout`, the session closes
        with 1011 and the transport should be dropped (a dead peer sends no close)."""
        if not self._session.is_open:
            return False
        if self.pinged_at:
            if now - self.pinged_at >= ping_timeout:
                self._session.fail(PingTimeout("no answer to ping"))
                return True
        elif period_over and not self.active:
            self.pinged_at = now
            self.ping_payload = payload = os.urandom(8)
            self._outbox.push(ping_frame(payload))
        if period_over:
            self.active = False
        return False
