"""Check that a ledger entry is the RFC 8785 canonical JSON of a valid ``LedgerEvent``, fast.

The definition is the slow path, :func:`check_entry_slow`: strict JSON (UTF-8, no duplicate members), a valid
:class:`protocol.events.LedgerEvent`, and ``event.to_bytes() == entry``. Parsing with pydantic costs ~15 us an entry
and even ``json.loads`` ~5 us, which alone would cap an audit far below 200,000 entries/s. So every entry first meets
:data:`_FAST`, one regular expression that accepts only canonical encodings of valid events whose strings are plain
printable ASCII (no escapes): members in canonical order, no whitespace, integers in canonical form, every field
pattern of ``LedgerEvent``. It extracts the members the timeline invariants need. An entry the expression refuses is
not necessarily bad (a message id with an escaped character, a non-ASCII marking level): it goes through the slow
path, which gives the definitive verdict and a precise reason. ``tests/gateway/test_audit.py`` checks that both paths
agree on valid events and on mutations of them.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Protocol

from protocol.errors import InvalidMessage
from protocol.events import EventType, LedgerEvent
from protocol.messages import MessageKind, parse_strict_json

__all__ = [
    "G_ACTOR",
    "G_ENVELOPE",
    "G_IN_REPLY_TO",
    "G_KIND",
    "G_MESSAGE_ID",
    "G_PEER_TIME",
    "G_TIME",
    "G_TO",
    "G_TYPE",
    "EntryError",
    "Fields",
    "SlowFields",
    "check_entry",
    "check_entry_slow",
    "parse_entry",
]


class EntryError(Exception):
    """The entry is not the canonical encoding of a valid ledger event; the message says why."""


class Fields(Protocol):
    """What :func:`check_entry` returns: a ``re.Match`` on the fast path, :class:`SlowFields` otherwise.

    ``group(n)`` gives a member as bytes, or ``None`` when absent; the group numbers are the ``G_*`` constants.
    Reading a member only when an invariant needs it keeps the common case cheap.
    """

    def group(self, index: int, /) -> bytes | None: ...


_FREE = rb'[^"\\\x00-\x1f\x80-\xff]'  # a plain printable ASCII character of a JSON string: no escape needed


def _time(late_day: bytes) -> bytes:
    # days 29 to 31 exist in some months only: the group named late_day sends those to the calendar check
    return (
        rb"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8]|(?P<" + late_day + rb">29|30|31))"
        rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z"
    )


_AUTHORITY = rb"[a-z]{2}\.[a-z0-9][a-z0-9-]{0,30}"
_UINT = rb"(?:0|[1-9][0-9]{0,14})"  # below 2**53: RFC 8785 writes these as plain integers
# every message kind (all plain lowercase ASCII): built from the enum, so that a kind added there is not sent to the
# slow path for ever
_KINDS = b"|".join(re.escape(kind.value.encode("ascii")) for kind in MessageKind)
# every event type, from the enum as the kinds are (a type missing here took the slow path, ten times slower)
_TYPES = b"|".join(re.escape(event_type.value.encode("ascii")) for event_type in EventType)
_CAVEAT = rb'"[a-z0-9][a-z0-9.-]{0,47}(?::[0-9A-Za-z.-]{1,32})?"'
# members in RFC 8785 order (UTF-16 code units; all ASCII here, so plain byte order)
_PATTERN = re.compile(
    rb'\{"actor":"(?P<actor>system|user:[a-z0-9._-]{1,64}|peer:' + _AUTHORITY + rb')"'
    rb'(?:,"envelope_sha256":"(?P<envelope>[0-9a-f]{64})")?'
    rb'(?:,"from":"' + _AUTHORITY + rb'")?'
    rb'(?:,"in_reply_to":"(?P<in_reply_to>' + _FREE + rb'*)")?'
    rb'(?:,"kind":"(?P<kind>' + _KINDS + rb')")?'
    rb'(?:,"marking":\{"caveats":\[(?:' + _CAVEAT + rb"(?P<more_caveats>(?:," + _CAVEAT + rb")+)?)?"
    rb'\],"level":"' + _FREE + rb'{1,64}"\})?'
    rb'(?:,"message_id":"(?P<message_id>' + _FREE + rb'*)")?'
    rb'(?:,"peer_ledger_index":' + _UINT + rb")?"
    rb'(?:,"peer_time":"(?P<peer_time>' + _time(b"late_peer_day") + rb')")?'
    rb'(?:,"purpose":"[a-z0-9-]{1,64}")?'
    rb'(?:,"reason":"[a-z0-9-]{1,64}")?'
    rb'(?:,"related_id":"' + _FREE + rb'*")?'
    rb'(?:,"state":"[a-z0-9_-]{1,32}")?'
    rb'(?:,"subject":"[a-z0-9._:-]{1,80}")?'
    rb',"time":"(?P<time>' + _time(b"late_day") + rb')"'
    rb'(?:,"to":"(?P<to>' + _AUTHORITY + rb')")?'
    rb',"type":"(?P<type>' + _TYPES + rb')"'
    rb',"v":1\}'
)
_FAST = _PATTERN.fullmatch
_GROUPS = _PATTERN.groupindex
G_ACTOR, G_ENVELOPE, G_IN_REPLY_TO, G_KIND, G_MESSAGE_ID, G_PEER_TIME, G_TIME, G_TO, G_TYPE = (
    _GROUPS[name]
    for name in ("actor", "envelope", "in_reply_to", "kind", "message_id", "peer_time", "time", "to", "type")
)
_MORE_CAVEATS, _LATE_DAY, _LATE_PEER_DAY = (_GROUPS[name] for name in ("more_caveats", "late_day", "late_peer_day"))

_MAX_CAVEATS = 64


class SlowFields:
    """The same members as a match gives, from a parsed event."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[int, bytes | None]) -> None:
        self._values = values

    def group(self, index: int, /) -> bytes | None:
        return self._values.get(index)


def check_entry(entry: bytes) -> Fields:
    """The members of a valid entry; raises :class:`EntryError` otherwise."""
    match = _FAST(entry)
    if match is not None:
        # what the expression leaves to code: several caveats (sorted, unique, at most 64), days 29 to 31
        if match.start(_MORE_CAVEATS) < 0 and match.start(_LATE_DAY) < 0 and match.start(_LATE_PEER_DAY) < 0:
            return match
        if _rest_ok(entry, match):
            return match
    return check_entry_slow(entry)


def _rest_ok(entry: bytes, match: re.Match[bytes]) -> bool:
    more = match.group(_MORE_CAVEATS)
    if more is not None:
        begin = entry.index(b'"caveats":[') + len(b'"caveats":[')
        items = entry[begin : match.end(_MORE_CAVEATS)].split(b",")
        if len(items) > _MAX_CAVEATS or items != sorted(set(items)):
            return False
    for group in (G_TIME, G_PEER_TIME):
        value = match.group(group)
        if value is not None:
            try:
                date.fromisoformat(value[:10].decode("ascii"))
            except ValueError:
                return False
    return True


def check_entry_slow(entry: bytes) -> SlowFields:
    """The definitive check (strict JSON, LedgerEvent, canonical bytes); raises :class:`EntryError`."""
    event = parse_entry(entry)

    def enc(value: object) -> bytes | None:
        return None if value is None else str(value).encode("utf-8")

    return SlowFields(
        {
            G_ACTOR: event.actor.encode("utf-8"),
            G_ENVELOPE: enc(event.envelope_sha256),
            G_IN_REPLY_TO: enc(event.in_reply_to),
            G_KIND: enc(event.kind.value if event.kind is not None else None),
            G_MESSAGE_ID: enc(event.message_id),
            G_PEER_TIME: enc(event.peer_time),
            G_TIME: event.time.encode("ascii"),
            G_TO: enc(event.to),
            G_TYPE: event.type.value.encode("ascii"),
        }
    )


def parse_entry(entry: bytes) -> LedgerEvent:
    """The event of a valid entry: strict UTF-8 JSON (no duplicate member), a valid :class:`LedgerEvent`, and its
    RFC 8785 encoding exactly (the definition every reader of an entry applies, the auditor and the witness checking
    a peer's receipt alike); raises :class:`EntryError`."""
    try:
        document = parse_strict_json(entry)
    except InvalidMessage as exc:
        raise EntryError(f"is not strict UTF-8 JSON ({exc.message})") from None
    if not isinstance(document, dict):
        raise EntryError("is not a JSON object")
    try:
        event = LedgerEvent.parse(document)
    except InvalidMessage as exc:
        raise EntryError(f"is not a valid ledger event ({exc.message})") from None
    try:
        canonical = event.to_bytes()
    except Exception:  # rfc8785 refuses, e.g., integers beyond 2**53
        canonical = b""
    if canonical != entry:
        raise EntryError("is not the RFC 8785 canonical JSON of its event (bytes differ from the re-encoding)")
    return event
