"""Case work, the pure rules: kinds of critical date, the flag vocabulary, the safe-conduct end (UNCAC art. 46(27)),
the written confirmation of an oral request (art. 46(14)), and what is overdue or coming up on a given day.

Dates are calendar dates in UTC: a due date is the last day on which the item is still on time, so an item is
overdue from the next day, and "upcoming within N days" is due today up to N days ahead (docs/requests.md, "Case
work"). No I/O; the gateway passes ``today``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TypeVar

from protocol.errors import ComityError, InvalidMessage

__all__ = [
    "CONFIRM_IN_WRITING_DAYS",
    "MAX_NOTE",
    "MAX_WINDOW_DAYS",
    "SAFE_CONDUCT_DAYS",
    "DateKind",
    "Due",
    "Flag",
    "InvalidWorkDate",
    "Stage",
    "UnknownWorkKind",
    "confirm_in_writing_due",
    "due_stage",
    "overdue",
    "parse_date_kind",
    "parse_day",
    "parse_flag",
    "parse_note",
    "safe_conduct_end",
    "upcoming",
]

SAFE_CONDUCT_DAYS = 15  # art. 46(27): fifteen consecutive days, unless the States Parties agree another period
CONFIRM_IN_WRITING_DAYS = 3  # default: an oral urgent request is confirmed in writing "forthwith" (art. 46(14))
MAX_NOTE = 2000  # characters of a note or a next action (they stay in the case tables, never in ledger or logs)
MAX_WINDOW_DAYS = 366


class UnknownWorkKind(ComityError):
    """A kind of critical date or a flag that is not in the vocabulary."""

    code = "unknown-work-kind"


class InvalidWorkDate(ComityError):
    code = "invalid-work-date"


class DateKind(enum.StrEnum):
    DEADLINE = "deadline"  # e.g. the deadline suggested under art. 46(24), or one set by a court
    HEARING = "hearing"
    STATUTE_OF_LIMITATIONS = "statute-of-limitations"  # art. 29: the limitation period of the offence runs out
    SURRENDER_DATE = "surrender-date"  # extradition (art. 44): the agreed date of surrender
    SAFE_CONDUCT_ENDS = "safe-conduct-ends"  # art. 46(27): computed by safe_conduct_end
    CONFIRM_IN_WRITING = "confirm-in-writing"  # art. 46(14): opened by an oral urgent request only
    CUSTOM = "custom"


class Flag(enum.StrEnum):
    MINISTERIAL_DECISION_REQUIRED = "ministerial-decision-required"
    URGENT = "urgent"
    AWAITING_TRANSLATION = "awaiting-translation"
    DUAL_CRIMINALITY_REVIEW = "dual-criminality-review"  # art. 46(9), 44(1)
    AWAITING_ADDITIONAL_INFORMATION = "awaiting-additional-information"  # art. 46(16)
    ASSETS_AT_RISK = "assets-at-risk"  # freezing (art. 54(2), 55): property may be moved
    PERSON_IN_CUSTODY = "person-in-custody"  # provisional arrest, extradition, art. 46(10) transfers
    CONFIDENTIALITY_AT_RISK = "confidentiality-at-risk"  # art. 46(20): the requested State may not keep it


# kinds an officer adds by hand: confirm-in-writing comes only from an oral request
ADDABLE_KINDS = frozenset(DateKind) - {DateKind.CONFIRM_IN_WRITING}

_E = TypeVar("_E", bound=enum.StrEnum)


def _member(enum_type: type[_E], value: object, what: str) -> _E:
    if isinstance(value, str) and value in enum_type._value2member_map_:
        return enum_type(value)
    raise UnknownWorkKind(f"{what} must be one of {', '.join(enum_type)}")


def parse_date_kind(value: object, *, addable: bool = True) -> DateKind:
    kind = _member(DateKind, value, "kind")
    if addable and kind not in ADDABLE_KINDS:
        raise UnknownWorkKind(f"a {kind.value} task is opened by recording an oral request, not added by hand")
    return kind


def parse_flag(value: object) -> Flag:
    return _member(Flag, value, "flag")


_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MIN_YEAR, MAX_YEAR = 1900, 2999  # the years a work date may be in


def parse_day(value: object, what: str = "due") -> date:
    """A calendar date written ``YYYY-MM-DD`` (nothing else: no time, no offset)."""
    if not isinstance(value, str) or not value.isascii() or not _DAY.fullmatch(value):
        raise InvalidWorkDate(f"{what} must be a date written YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidWorkDate(f"{what} is not a real calendar date") from None
    if not MIN_YEAR <= day.year <= MAX_YEAR:  # and days counted from it stay in the calendar
        raise InvalidWorkDate(f"{what} must be a date from {MIN_YEAR} to {MAX_YEAR}")
    return day


def parse_note(value: object, what: str = "note") -> str | None:
    """An optional free-text note: at most :data:`MAX_NOTE` characters; empty means none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidMessage(f"{what} must be a string")
    if len(value) > MAX_NOTE:
        raise InvalidMessage(f"{what} is longer than {MAX_NOTE} characters")
    return value.strip() or None


def safe_conduct_end(informed_on: date, agreed_days: int | None = None) -> date:
    """The last day of safe conduct (art. 46(27)): ``agreed_days`` (default fifteen) consecutive days counted from
    the day after the person was officially informed that their presence is no longer required."""
    days = SAFE_CONDUCT_DAYS if agreed_days is None else agreed_days
    if not 1 <= days <= MAX_WINDOW_DAYS:
        raise InvalidWorkDate(f"the agreed safe-conduct period must be 1 to {MAX_WINDOW_DAYS} days")
    return informed_on + timedelta(days=days)


def confirm_in_writing_due(oral_on: date, days: int = CONFIRM_IN_WRITING_DAYS) -> date:
    """When the written confirmation of an oral urgent request made or received on ``oral_on`` is due."""
    return oral_on + timedelta(days=days)


class Stage(enum.StrEnum):
    """What a notification says about an open item."""

    DUE_SOON = "due-soon"  # due today or within the notice window
    OVERDUE = "overdue"  # the due date has passed


@dataclass(frozen=True)
class Due:
    """An open or done item as the rules see it."""

    id: int
    case_id: str
    kind: DateKind
    due: date
    done: bool = False


def due_stage(due: date, today: date, notice_days: int) -> Stage | None:
    """The stage an open item due on ``due`` is in on ``today`` (None: not yet within ``notice_days``)."""
    if due < today:
        return Stage.OVERDUE
    if due <= today + timedelta(days=notice_days):
        return Stage.DUE_SOON
    return None


def overdue(items: Iterable[Due], today: date) -> list[Due]:
    """Open items past their due date, oldest first."""
    return sorted((i for i in items if not i.done and i.due < today), key=lambda i: (i.due, i.id))


def upcoming(items: Iterable[Due], today: date, days: int) -> list[Due]:
    """Open items due from today up to ``days`` days ahead, soonest first."""
    if not 0 <= days <= MAX_WINDOW_DAYS:
        raise InvalidMessage(f"days must be from 0 to {MAX_WINDOW_DAYS}")
    last = today + timedelta(days=days)
    return sorted((i for i in items if not i.done and today <= i.due <= last), key=lambda i: (i.due, i.id))
