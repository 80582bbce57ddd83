"""Statistics, the pure part: the coded facets of a request, the statistics and their filters, percentiles, CSV.

A request is content and stays encrypted at rest. What statistics count is extracted once, in memory, where the
plaintext already is (the sender at seal time, the receiver after verification), as **codes only**
(:class:`Facets`): the request type, the kind of legal basis and the UNCAC article, the offence articles, the
assistance-sought codes, the urgent flag and the suggested deadline date. Never a name, a fact, a national
description, a treaty name, a domestic law or a reason: nothing free-form has a place here.

The store computes the statistics (store/stats.py); this module names them (:class:`Statistic`), parses their
filters (:func:`parse_filters`, typed errors naming the parameter, never echoing a value it refuses), interpolates
percentiles exactly as PostgreSQL's ``percentile_cont`` does (:func:`percentile`) and renders tables as CSV
(:func:`to_csv`).
"""

from __future__ import annotations

import csv
import enum
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any, Final

from protocol.errors import InvalidMessage
from protocol.lifecycle import State
from protocol.messages import AUTHORITY_ID_RE
from protocol.requests import AssistanceSought, OffenceArticle, Request, RequestType

__all__ = [
    "ASSISTANCE_BITS",
    "CLOSED_STATES",
    "FILTER_NAMES",
    "LEGAL_BASIS_KINDS",
    "MILESTONES",
    "OFFENCE_BITS",
    "OUTCOME_STATES",
    "PARTITIONS",
    "REFUSAL_GROUND_BITS",
    "Facets",
    "Filters",
    "InvalidFilter",
    "Statistic",
    "StatTable",
    "facets_of",
    "codes_of",
    "facets_of_content",
    "mask_of",
    "parse_filters",
    "parse_statistic",
    "percentile",
    "population_filters",
    "seconds",
    "suppress",
    "to_csv",
]

LEGAL_BASIS_KINDS: Final = ("uncac", "treaty", "reciprocity")
# the decision a case reached; a case with one of these states (or closed) is closed for statistics
OUTCOME_STATES: Final = frozenset({State.EXECUTED.value, State.REFUSED.value, State.WITHDRAWN.value})
CLOSED_STATES: Final = OUTCOME_STATES | {State.CLOSED.value}


# Multi-valued facets are stored as bit masks (one integer column each): bit i is set when the case has the code at
# position i. APPEND ONLY: a stored mask means what these tuples said when it was written
# (tests/protocol/test_stats.py checks that every enum value has a bit).
OFFENCE_BITS: Final = ("15", "16(1)", "16(2)", "17", "18", "19", "20", "21", "22", "23", "24", "25")
ASSISTANCE_BITS: Final = (
    "taking-evidence",
    "service-of-documents",
    "search-seizure-freezing",
    "examining-objects-sites",
    "information-evidence-experts",
    "documents-records",
    "tracing-proceeds",
    "voluntary-appearance",
    "other",
    "chapter-v-identify-freeze-trace",
    "chapter-v-recovery",
)
REFUSAL_GROUND_BITS: Final = (
    "46(21)(a)",
    "46(21)(b)",
    "46(21)(c)",
    "46(21)(d)",
    "no-dual-criminality",
    "de-minimis",
    "44(11)",
    "44(15)",
    "44(8)",
    "bank-secrecy",
    "fiscal-matters",
)


def mask_of(codes: Sequence[str] | frozenset[str] | set[str], bits: Sequence[str]) -> int:
    """The bit mask of ``codes`` (codes without a bit are ignored: only known codes are counted)."""
    return sum(1 << bits.index(code) for code in set(codes) if code in bits)


def codes_of(mask: int, bits: Sequence[str]) -> tuple[str, ...]:
    return tuple(code for i, code in enumerate(bits) if mask & (1 << i))


class InvalidFilter(InvalidMessage):
    """A statistics filter or name that is not acceptable (``invalid-request``, HTTP 400)."""

    code = "invalid-request"


# --- facets ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Facets:
    """The coded facets of one request: every member is a code of a closed list, a number, a flag or a date."""

    request_type: str | None = None
    legal_basis: str | None = None  # uncac | treaty | reciprocity
    uncac_article: int | None = None  # 43 to 59, only for an UNCAC basis
    offences: tuple[str, ...] = ()  # OffenceArticle values, sorted, unique
    assistance: tuple[str, ...] = ()  # AssistanceSought values, sorted, unique
    urgent: bool = False
    deadline: date | None = None  # the suggested deadline (art. 46(24)); its reasons are content


def facets_of(request: Request) -> Facets:
    basis = request.legal_basis
    return Facets(
        request_type=request.type.value,
        legal_basis=None if basis is None else basis.kind,
        uncac_article=basis.article if basis is not None and basis.kind == "uncac" else None,
        offences=tuple(sorted({offence.article.value for offence in request.offences})),
        assistance=tuple(sorted({item.value for item in request.assistance_sought})),
        urgent=request.urgent,
        deadline=date.fromisoformat(request.deadline.date) if request.deadline is not None else None,
    )


def facets_of_content(content: Mapping[str, Any]) -> Facets:
    """The facets of a received request's ``content["request"]``; a request the model does not accept still gives
    its type when that is valid (a receiver does not refuse an envelope for its request's shape)."""
    raw = content.get("request")
    if not isinstance(raw, dict):
        return Facets()
    try:
        return facets_of(Request.parse(raw))
    except InvalidMessage:
        value = raw.get("type")
        valid = isinstance(value, str) and value in RequestType._value2member_map_
        return Facets(request_type=value if valid else None)


# --- the statistics -------------------------------------------------------------------------------------------------


class Statistic(enum.StrEnum):
    BY_YEAR = "by-year"
    BY_COUNTRY = "by-country"
    BY_COUNTERPART = "by-counterpart"
    BY_TYPE = "by-type"
    BY_OFFENCE = "by-offence"
    BY_LEGAL_BASIS = "by-legal-basis"
    BY_UNCAC_ARTICLE = "by-uncac-article"
    BY_ASSISTANCE = "by-assistance"
    BY_OUTCOME = "by-outcome"
    BY_REFUSAL_GROUND = "by-refusal-ground"
    BY_OFFICER = "by-officer"
    BY_STATE = "by-state"
    OPEN_CLOSED = "open-closed"
    DURATIONS = "durations"
    OVERDUE = "overdue"

    @property
    def columns(self) -> tuple[str, ...]:
        if self is Statistic.DURATIONS:
            return ("direction", "milestone", "count", "median_seconds", "p90_seconds")
        if self is Statistic.OVERDUE:
            return ("direction", "overdue", "open_with_dates")
        if self is Statistic.BY_LEGAL_BASIS:
            return ("direction", "legal_basis", "count", "share")
        return ("direction", _KEY_COLUMN[self], "count")


_KEY_COLUMN: Final = {
    Statistic.BY_YEAR: "year",
    Statistic.BY_COUNTRY: "country",
    Statistic.BY_COUNTERPART: "counterpart",
    Statistic.BY_TYPE: "type",
    Statistic.BY_OFFENCE: "offence",
    Statistic.BY_UNCAC_ARTICLE: "uncac_article",
    Statistic.BY_ASSISTANCE: "assistance",
    Statistic.BY_OUTCOME: "outcome",
    Statistic.BY_REFUSAL_GROUND: "refusal_ground",
    Statistic.BY_OFFICER: "officer",
    Statistic.BY_STATE: "state",
    Statistic.OPEN_CLOSED: "status",
}

# the milestones whose waiting time is measured, from the start (received, or sent for an outgoing request)
MILESTONES: Final = ("acknowledge", "first-answer", "execution")


@dataclass(frozen=True)
class StatTable:
    statistic: Statistic
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.statistic.columns

    def to_json(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic.value,
            "rows": [dict(zip(self.columns, row, strict=True)) for row in self.rows],
        }


def parse_statistic(value: str) -> Statistic:
    if value not in Statistic._value2member_map_:
        raise InvalidFilter(f"unknown statistic; known: {', '.join(Statistic)}")
    return Statistic(value)


# --- filters --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Every filter is optional; dates are inclusive and apply to the day a case was opened (sent or received)."""

    direction: str | None = None  # "in" | "out"
    since: date | None = None
    until: date | None = None
    counterpart: str | None = None
    country: str | None = None
    request_type: str | None = None
    legal_basis: str | None = None
    offence: str | None = None
    assistance: str | None = None
    status: str | None = None  # "open" | "closed"
    officer: str | None = None
    days: bool = field(default=False, compare=False)  # "from" or "to" named a day, not a year or a month

    def to_json(self) -> dict[str, str]:
        names = {"since": "from", "until": "to", "request_type": "type"}
        out: dict[str, str] = {}
        for key, value in self.__dict__.items():
            if value is not None and key != "days":
                if key == "direction":
                    value = _DIRECTION_NAMES[value]
                out[names.get(key, key)] = value.isoformat() if isinstance(value, date) else str(value)
        return out


FILTER_NAMES: Final = (
    "direction",
    "from",
    "to",
    "counterpart",
    "country",
    "type",
    "legal_basis",
    "offence",
    "assistance",
    "state",
    "officer",
)
_DIRECTIONS: Final = {"incoming": "in", "outgoing": "out", "in": "in", "out": "out"}
_DIRECTION_NAMES: Final = {"in": "incoming", "out": "outgoing"}
_YEAR: Final = re.compile(r"[0-9]{4}")
_MONTH: Final = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
_OFFICER: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _day(name: str, value: str, *, end: bool) -> date:
    wrong = f"{name!r} must be a year (YYYY), a month (YYYY-MM) or a date (YYYY-MM-DD)"
    if _YEAR.fullmatch(value):
        year = int(value)
        if not 1 <= year <= 9998:  # a day after the filter's end must still be a date
            raise InvalidFilter(wrong)
        return date(year, 12, 31) if end else date(year, 1, 1)
    if month := _MONTH.fullmatch(value):
        year, number = int(month[1]), int(month[2])
        if not 1 <= year <= 9998:
            raise InvalidFilter(wrong)
        first = date(year, number, 1)
        return (date(year + number // 12, number % 12 + 1, 1) - timedelta(days=1)) if end else first
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.isoformat() != value or parsed.year > 9998:
        raise InvalidFilter(wrong)
    return parsed


def _choice(name: str, value: str, known: Sequence[str]) -> str:
    if value not in known:
        raise InvalidFilter(f"{name!r} must be one of: {', '.join(known)}")
    return value


def parse_filters(query: Mapping[str, str], *, ignore: Sequence[str] = ()) -> Filters:
    """Filters from query parameters (``from``/``to`` take a year, a month or a date); unknown parameters are
    refused."""
    unknown = set(query) - set(FILTER_NAMES) - set(ignore)
    if unknown:
        raise InvalidFilter(f"unknown filter(s): {', '.join(sorted(unknown))}; known: {', '.join(FILTER_NAMES)}")
    get = {key: value for key, value in query.items() if key in FILTER_NAMES and value != ""}
    values: dict[str, Any] = {}
    if "direction" in get:
        values["direction"] = _DIRECTIONS[_choice("direction", get["direction"], tuple(_DIRECTIONS))]
    if "from" in get:
        values["since"] = _day("from", get["from"], end=False)
    if "to" in get:
        values["until"] = _day("to", get["to"], end=True)
    values["days"] = any(len(get.get(name, "")) == len("YYYY-MM-DD") for name in ("from", "to"))
    if values.get("since") and values.get("until") and values["since"] > values["until"]:
        raise InvalidFilter("'from' is after 'to'")
    if "counterpart" in get:
        if not AUTHORITY_ID_RE.fullmatch(get["counterpart"]):
            raise InvalidFilter("'counterpart' must be an authority id such as 'ar.mj'")
        values["counterpart"] = get["counterpart"]
    if "country" in get:
        if not re.fullmatch(r"[A-Za-z]{2}", get["country"]):
            raise InvalidFilter("'country' must be an ISO 3166-1 alpha-2 code such as 'AR'")
        values["country"] = get["country"].upper()
    if "type" in get:
        values["request_type"] = _choice("type", get["type"], tuple(RequestType))
    if "legal_basis" in get:
        values["legal_basis"] = _choice("legal_basis", get["legal_basis"], LEGAL_BASIS_KINDS)
    if "offence" in get:
        values["offence"] = _choice("offence", get["offence"], tuple(OffenceArticle))
    if "assistance" in get:
        values["assistance"] = _choice("assistance", get["assistance"], tuple(AssistanceSought))
    if "state" in get:
        values["status"] = _choice("state", get["state"], ("open", "closed"))
    if "officer" in get:
        if not _OFFICER.fullmatch(get["officer"]):
            raise InvalidFilter("'officer' must be a user name")
        values["officer"] = get["officer"]
    return Filters(**values)


# --- small cells (decision 114) -------------------------------------------------------------------------------------

# statistics in which each case of a direction counts exactly once: their cells add up to the direction's cases, so a
# single suppressed cell could be worked out from the others and the total
PARTITIONS: Final = frozenset(
    {
        Statistic.BY_YEAR,
        Statistic.BY_COUNTRY,
        Statistic.BY_COUNTERPART,
        Statistic.BY_TYPE,
        Statistic.BY_LEGAL_BASIS,
        Statistic.BY_UNCAC_ARTICLE,
        Statistic.BY_OUTCOME,
        Statistic.BY_OFFICER,
        Statistic.BY_STATE,
        Statistic.OPEN_CLOSED,
    }
)


def population_filters(filters: Filters) -> Filters:
    """``filters`` without the filters on what a request says (its coded facets): the population a statistic is
    drawn from is the cases that match the other filters, which an auditor can also see in the ledger."""
    return replace(filters, request_type=None, legal_basis=None, offence=None, assistance=None)


def suppress(table: StatTable, min_cell: int, population: Mapping[str, int]) -> StatTable:
    """``table`` as a reader who may not open content sees it (decision 114; ``population``: direction name -> the
    cases matching the filters other than the content ones):

    * a direction whose population is under ``min_cell`` has no rows at all: a row's key (an offence, an outcome)
      would name the codes of its few cases, withheld counts or not;
    * in a statistic whose cells add up to the direction's cases (:data:`PARTITIONS`), one count from 1 to
      ``min_cell - 1`` withholds every count of the direction, with its shares: withholding only some could be
      undone from the total, or from a coarser statistic of the same answer (by-state against open-closed,
      by-counterpart against by-country);
    * elsewhere a small count is withheld with what derives from it (a milestone's percentiles); in ``overdue``,
      both figures are withheld when either, or their difference, is small."""
    if min_cell <= 1:
        return table

    def small(value: Any) -> bool:
        return 1 <= int(value) < min_cell

    derived = [i for i, name in enumerate(table.columns) if name in ("share", "median_seconds", "p90_seconds")]
    rows = [list(row) for row in table.rows if population.get(str(row[0]), 0) >= min_cell]
    for direction in {str(row[0]) for row in rows}:
        mine = [row for row in rows if row[0] == direction]
        if table.statistic is Statistic.OVERDUE:
            for row in mine:
                if small(row[1]) or small(row[2]) or small(int(row[2]) - int(row[1])):
                    row[1] = row[2] = None
            continue
        count = table.columns.index("count")
        partition = table.statistic in PARTITIONS and any(small(row[count]) for row in mine)
        for row in mine:
            if partition or small(row[count]):
                row[count] = None
                for i in derived:
                    row[i] = None
    return StatTable(table.statistic, [tuple(row) for row in rows])


# --- percentiles and CSV --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Continuous percentile with linear interpolation, as PostgreSQL's ``percentile_cont``; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def seconds(value: float | None) -> float | None:
    """Durations are reported in seconds, to the millisecond (both backends then give the same figures)."""
    return None if value is None else round(value, 3)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    # a spreadsheet must not read a cell as a formula (CSV injection)
    return "'" + text if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(table: StatTable) -> str:
    """The table as RFC 4180 CSV: a header line of column names, then one line per row, CRLF line ends."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()
