"""Timeline invariants of one gateway's ledger, checked in one pass with state for open messages only.

Per message id the checker remembers when it was submitted, sent and received here (and at which entries), nothing
else, and once a message is closed only its id (so that the id cannot be used again); and, for a message received
in reply to one this ledger has not seen (submitted, received or closed), the id answered and the reply's entry,
until that id is received (a reply from the peer to its own message may arrive before it). Each received message
adds at most one such pair (it names one ``in_reply_to`` and is received once), so memory grows with the number of
messages, never with the number of entries. Every audit reads the log from entry 0 (the state file holds a root to
compare, not a point to resume from), so a message submitted here is always seen before any honest reply to it.

Times are compared as strings: every ledger time has the one fixed shape ``2026-11-28T07:40:00.123456Z`` (UTC,
microseconds), whose byte order is time order.

The rules (``docs/ledger.md``, "Invariants"):

1. a message id is submitted at most once and received at most once, and never both;
2. ``message.sent`` follows a ``message.submitted`` of the same message, not earlier in time; it and its
   ``message.receipt_recorded`` name the envelope digest and the recipient the submission named (where both do);
3. ``message.receipt_recorded`` follows its ``message.sent``, not earlier in time, and the receiver's signed receive
   time (``peer_time``) is not earlier than the submission minus 360 s (the clock skew a receiver may allow and a
   minute, decision 157): not the sending time, since the receipt of a redelivery whose first answer was lost
   carries the first delivery's time;
4. a user of this gateway acknowledges or answers only a message received here, not before it was received; a user
   opens only a message received or submitted here, not before that;
5. a peer's acknowledgement or answer (actor ``peer:...``) concerns a message submitted here, not before it was
   submitted;
6. a message received in reply to one submitted here is not received before that submission, in time or in index
   order: a reply to a message this ledger has not seen is remembered, and a later submission of that message fails
   (the ledger appends a submission before the message is sent, so before any reply to it can arrive);
7. no entry is dated more than the allowed clock skew before an earlier entry (the ledger is appended in time
   order; the skew covers replicas' clocks and a clock stepped back), except ``message.sent``, dated when the
   transmission began: an entry back-dated later (a late acknowledgement dated on time) fails here;
8. a closed message's id is not submitted or received again;
9. every ``message.*`` event these rules concern names its ``message_id``.
"""

from __future__ import annotations

from datetime import datetime

from gateway.audit.entries import (
    G_ACTOR,
    G_ENVELOPE,
    G_IN_REPLY_TO,
    G_MESSAGE_ID,
    G_PEER_TIME,
    G_TIME,
    G_TO,
    G_TYPE,
    Fields,
)
from protocol.receipts import MAX_CLOCK_SKEW, RECEIPT_SKEW

__all__ = ["CLOCK_SKEW", "InvariantError", "TimelineChecker"]

CLOCK_SKEW = MAX_CLOCK_SKEW  # how far an entry may be dated before those appended before it

_SUBMITTED, _SENT, _RECEIPT, _RECEIVED, _ACK, _OPENED, _ANSWERED, _CLOSED = range(8)
_CODES = {
    b"message.submitted": _SUBMITTED,
    b"message.sent": _SENT,
    b"message.receipt_recorded": _RECEIPT,
    b"message.received": _RECEIVED,
    b"message.acknowledged": _ACK,
    b"message.opened": _OPENED,
    b"message.answered": _ANSWERED,
    b"message.closed": _CLOSED,
}


class _Message:
    """What the checker remembers of an open message: times (ledger time strings) and entry indexes."""

    __slots__ = ("digest", "received", "received_at", "sent", "submitted", "submitted_at", "to")

    def __init__(self) -> None:
        self.submitted: bytes | None = None
        self.submitted_at = -1
        self.digest: bytes | None = None  # the envelope and the recipient it was submitted as, and to
        self.to: bytes | None = None
        self.sent: bytes | None = None
        self.received: bytes | None = None
        self.received_at = -1


class InvariantError(Exception):
    """An entry breaks a timeline invariant; the message names the message id and the entries involved."""


def _text(value: bytes | None) -> str:
    return "?" if value is None else value.decode("utf-8", "replace")


def _seconds(value: bytes) -> datetime:
    return datetime.fromisoformat(value.decode("ascii").replace("Z", "+00:00"))


class TimelineChecker:
    def __init__(self) -> None:
        self._open: dict[bytes, _Message] = {}
        self._closed: dict[bytes, int] = {}  # closed message id -> the entry that closed it
        # a message id answered by a received reply before this ledger saw it -> (the reply's entry, the reply's id)
        self._answered_unseen: dict[bytes, tuple[int, bytes]] = {}
        self._latest = b""  # the latest time of an entry so far, and its index
        self._latest_at = -1

    @property
    def open_messages(self) -> int:
        return len(self._open)

    def feed(self, index: int, fields: Fields) -> None:
        """Check the entry at ``index``; raises :class:`InvariantError`."""
        code = _CODES.get(fields.group(G_TYPE) or b"")
        time = fields.group(G_TIME) or b""
        if time >= self._latest:
            self._latest, self._latest_at = time, index
        elif code != _SENT and _seconds(time) < _seconds(self._latest) - CLOCK_SKEW:
            raise InvariantError(
                f"entry {index}: dated {_text(time)}, more than {int(CLOCK_SKEW.total_seconds())} s before entry "
                f"{self._latest_at} ({_text(self._latest)}): back-dated, or the gateway's clock stepped back"
            )
        if code is None:
            return
        message = fields.group(G_MESSAGE_ID)
        if message is None:  # every rule above is about a message: one without an id would slip past them all
            raise InvariantError(f"entry {index}: a {_text(fields.group(G_TYPE))} event names no message_id")
        state = self._open.get(message)
        if state is None and code in (_SUBMITTED, _RECEIVED) and message in self._closed:
            what = "submitted" if code == _SUBMITTED else "received"
            raise _error(index, message, f"{what} again after it was closed (entry {self._closed[message]})")
        if code == _SUBMITTED:
            if state is None:
                reply = self._answered_unseen.get(message)
                if reply is not None:
                    raise _error(
                        index,
                        message,
                        f"submitted after entry {reply[0]} received message {_text(reply[1])} in reply to it: a "
                        "reply ledgered before the message it answers",
                    )
                self._open[message] = state = _Message()
            elif state.submitted is not None:
                raise _error(index, message, f"submitted a second time (first at entry {state.submitted_at})")
            elif state.received is not None:  # an id is ours or a peer's, never both (decision 171)
                raise _error(index, message, f"submitted here, but received here at entry {state.received_at}")
            state.submitted, state.submitted_at = time, index
            state.digest, state.to = fields.group(G_ENVELOPE), fields.group(G_TO)
        elif code == _RECEIVED:
            if state is None:
                self._open[message] = state = _Message()
            elif state.received is not None:
                raise _error(index, message, f"received a second time (first at entry {state.received_at})")
            elif state.submitted is not None:
                raise _error(index, message, f"received here, but submitted here at entry {state.submitted_at}")
            state.received, state.received_at = time, index
            self._answered_unseen.pop(message, None)  # the peer's own message, whose reply came first: no more
            request = fields.group(G_IN_REPLY_TO)
            original = None if request is None else self._open.get(request)
            if original is None and request is not None and request not in self._closed:
                self._answered_unseen.setdefault(request, (index, message))
            if original is not None and original.submitted is not None and time < original.submitted:
                raise _error(
                    index,
                    message,
                    f"received at {_text(time)}, before the message it answers ({_text(request)}) was submitted "
                    f"at {_text(original.submitted)} (entry {original.submitted_at})",
                )
        elif code == _SENT:
            if state is None or state.submitted is None:
                raise _error(index, message, "sent, but never submitted before in this ledger")
            if time < state.submitted:
                raise _error(
                    index, message, f"sent at {_text(time)}, before its submission at {_text(state.submitted)}"
                )
            _as_submitted(index, message, state, fields, "sent")
            state.sent = time
        elif code == _RECEIPT:
            if state is None or state.sent is None:
                raise _error(index, message, "receipt recorded, but never sent before in this ledger")
            sent = state.sent
            _as_submitted(index, message, state, fields, "receipt recorded")
            if time < sent:
                raise _error(index, message, f"receipt recorded at {_text(time)}, before it was sent at {_text(sent)}")
            peer_time = fields.group(G_PEER_TIME)
            if peer_time is None:
                raise _error(index, message, "receipt recorded without the receiver's signed time (peer_time)")
            # a receipt re-sent for a redelivery (the first answer was lost) carries the first delivery's time,
            # which may be long before this "sent"; never before the submission, though (decision 91)
            submitted = state.submitted
            if submitted is not None and _seconds(peer_time) < _seconds(submitted) - RECEIPT_SKEW:
                raise _error(
                    index,
                    message,
                    f"the receiver signed a receive time {_text(peer_time)} more than "
                    f"{int(RECEIPT_SKEW.total_seconds())} s before it was submitted at {_text(submitted)}",
                )
        elif code == _CLOSED:
            self._open.pop(message, None)
            self._closed.setdefault(message, index)
        else:  # acknowledged, opened, answered
            self._answered(index, message, code, time, fields.group(G_ACTOR) or b"", state)

    @staticmethod
    def _answered(index: int, message: bytes, code: int, time: bytes, actor: bytes, state: _Message | None) -> None:
        what = {_ACK: "acknowledged", _OPENED: "opened", _ANSWERED: "answered"}[code]
        if actor.startswith(b"user:"):
            arrived = None if state is None else state.received
            if arrived is None and code == _OPENED and state is not None:
                arrived = state.submitted  # a sender reads its own archive copy
            if arrived is None:
                raise _error(index, message, f"{what} by {_text(actor)}, but never received before in this ledger")
            if time < arrived:
                raise _error(
                    index, message, f"{what} by {_text(actor)} at {_text(time)}, before it arrived at {_text(arrived)}"
                )
        elif actor.startswith(b"peer:") and code != _OPENED:
            submitted = None if state is None else state.submitted
            if submitted is None:
                raise _error(index, message, f"{what} by {_text(actor)}, but never submitted before in this ledger")
            if time < submitted:
                raise _error(
                    index,
                    message,
                    f"{what} by {_text(actor)} at {_text(time)}, before its submission at {_text(submitted)}",
                )


def _error(index: int, message: bytes, what: str) -> InvariantError:
    return InvariantError(f"entry {index}: message {_text(message)} {what}")


def _as_submitted(index: int, message: bytes, state: _Message, fields: Fields, what: str) -> None:
    """A message is sent, and its receipt recorded, as the envelope it was submitted as and to the authority it was
    submitted to (each compared where both entries name it)."""
    for group, submitted, name in ((G_ENVELOPE, state.digest, "envelope"), (G_TO, state.to, "recipient")):
        value = fields.group(group)
        if value is not None and submitted is not None and value != submitted:
            raise _error(
                index,
                message,
                f"{what} with {name} {_text(value)}, not the {_text(submitted)} it was submitted with "
                f"(entry {state.submitted_at})",
            )
