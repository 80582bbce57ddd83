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
from protocol.events import LedgerEvent
from protocol.messages import parse_strict_json

__all__ = [
    "G_ACTOR",
    "G_IN_REPLY_TO",
    "G_KIND",
    "G_MESSAGE_ID",
    "G_PEER_TIME",
    "G_TIME",
    "G_TYPE",
    "EntryError",
    "Fields",
    "SlowFields",
    "check_entry",
    "check_entry_slow",
]


class EntryError(Exception):
    """The entry is not the canonical encoding of a valid ledger event; the message says why."""


class Fields(Protocol):
    """What :func:`check_entry` returns: a ``re.Match`` on the fast path, :class:`SlowFields` otherwise.

    ``group(n)`` gives a member as bytes, or ``None`` when absent; the group numbers are the ``G_*`` constants.
    Reading a member only when an invariant needs it keeps the common case cheap.
    """

    def group(self, index: int, /) -> bytes | None: ...


G_ACTOR, G_IN_REPLY_TO, G_KIND, G_CAVEATS, G_MESSAGE_ID, G_PEER_TIME, G_TIME, G_TYPE = range(1, 9)


class SlowFields:
    __slots__ = ("_values",)

    def __init__(self, values: tuple[bytes | None, ...]) -> None:
        self._values = values

    def group(self, index: int, /) -> bytes | None:
        return self._values[index - 1]


_FREE = rb'[^"\\\x00-\x1f\x80-\xff]'  # a plain printable ASCII character of a JSON string: no escape needed
# the calendar date is checked apart (cached per day), hours, minutes and seconds here
_TIME = rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z"
_AUTHORITY = rb"[a-z]{2}\.[a-z0-9][a-z0-9-]{0,30}"
_UINT = rb"(?:0|[1-9][0-9]{0,14})"  # below 2**53: RFC 8785 writes these as plain integers
_KINDS = rb"request|response|acknowledgement|status_query|status_report|consultation|withdrawal"
_TYPES = (
    rb"message\.(?:submitted|sent|receipt_recorded|received|refused|acknowledged|opened|answered|closed"
    rb"|delivery_failed)|peer\.(?:alarm|alarm_cleared)|user\.changed|directory\.installed"
)
_CAVEAT = rb'"[a-z0-9][a-z0-9.-]{0,47}(?::[0-9A-Za-z.-]{1,32})?"'
# members in RFC 8785 order (UTF-16 code units; all ASCII here, so plain byte order)
_FAST = re.compile(
    rb'\{"actor":"(system|user:[a-z0-9._-]{1,64}|peer:[a-z]{2}\.[a-z0-9-]{1,31})"'
    rb'(?:,"envelope_sha256":"[0-9a-f]{64}")?'
    rb'(?:,"from":"' + _AUTHORITY + rb'")?'
    rb'(?:,"in_reply_to":"(' + _FREE + rb'*)")?'
    rb'(?:,"kind":"(' + _KINDS + rb')")?'
    rb'(?:,"marking":\{"caveats":\[((?:'
    + _CAVEAT
    + rb"(?:,"
    + _CAVEAT
    + rb")*)?)"
    + rb'\],"level":"'
    + _FREE
    + rb'{1,64}"\})?'
    rb'(?:,"message_id":"(' + _FREE + rb'*)")?'
    rb'(?:,"peer_ledger_index":' + _UINT + rb")?"
    rb'(?:,"peer_time":"(' + _TIME + rb')")?'
    rb'(?:,"purpose":"[a-z0-9-]{1,64}")?'
    rb'(?:,"reason":"[a-z0-9-]{1,64}")?'
    rb'(?:,"related_id":"' + _FREE + rb'*")?'
    rb'(?:,"state":"[a-z0-9_-]{1,32}")?'
    rb'(?:,"subject":"[a-z0-9._:-]{1,80}")?'
    rb',"time":"(' + _TIME + rb')"'
    rb'(?:,"to":"' + _AUTHORITY + rb'")?'
    rb',"type":"(' + _TYPES + rb')"'
    rb',"v":-?' + _UINT + rb"\}"
).fullmatch

_MAX_CAVEATS = 64


def check_entry(entry: bytes) -> Fields:
    """The members of a valid entry; raises :class:`EntryError` otherwise."""
    match = _FAST(entry)
    if match is not None:
        # what a regular expression does not say: caveats sorted, unique, at most 64; dates on the calendar
        begin, end = match.span(G_CAVEATS)
        peer_time = match.group(G_PEER_TIME)
        if (
            (entry.find(b",", begin, end) < 0 or _caveats_ok(entry[begin:end]))
            and _date_ok(entry[match.start(G_TIME) : match.start(G_TIME) + 10])
            and (peer_time is None or _date_ok(peer_time[:10]))
        ):
            return match
    return check_entry_slow(entry)


_DATES: dict[bytes, bool] = {}


def _date_ok(day: bytes) -> bool:
    known = _DATES.get(day)
    if known is None:
        try:
            date.fromisoformat(day.decode("ascii"))
            known = day[:4] != b"0000"
        except ValueError:
            known = False
        if len(_DATES) > 100_000:
            _DATES.clear()
        _DATES[day] = known
    return known


def _caveats_ok(caveats: bytes) -> bool:
    items = caveats.split(b",")
    return len(items) <= _MAX_CAVEATS and items == sorted(set(items))


def check_entry_slow(entry: bytes) -> SlowFields:
    """The definitive check (strict JSON, LedgerEvent, canonical bytes); raises :class:`EntryError`."""
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

    def enc(value: object) -> bytes | None:
        return None if value is None else str(value).encode("utf-8")

    caveats = None if event.marking is None else ",".join(f'"{c}"' for c in event.marking.caveats).encode()
    return SlowFields(
        (
            event.actor.encode("utf-8"),
            enc(event.in_reply_to),
            enc(event.kind.value if event.kind is not None else None),
            caveats,
            enc(event.message_id),
            enc(event.peer_time),
            event.time.encode("ascii"),
            event.type.value.encode("ascii"),
        )
    )
