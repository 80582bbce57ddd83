"""Statistics over the cases requests opened: SQL group-bys on ``case_stats`` (store/tables.py), never content.

:func:`compute` answers one :class:`protocol.stats.Statistic` under :class:`protocol.stats.Filters`. Both backends
give the same figures: counts are SQL group-bys everywhere; the median and 90th percentile of waiting times are
``percentile_cont`` on PostgreSQL and the same interpolation in Python on SQLite (:func:`protocol.stats.percentile`),
rounded to the millisecond. Rows are sorted in Python (the backends order NULLs differently).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from sqlalchemy import ColumnElement, and_, case, func, not_, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select

from protocol.stats import (
    ASSISTANCE_BITS,
    CLOSED_STATES,
    MILESTONES,
    OFFENCE_BITS,
    REFUSAL_GROUND_BITS,
    Filters,
    Statistic,
    StatTable,
    percentile,
    population_filters,
    seconds,
)
from store.tables import case_dates, case_stats, users

__all__ = ["compute", "overdue_condition", "population"]

cs = case_stats
_DIRECTION: Final = {"in": "incoming", "out": "outgoing"}
_UNKNOWN: Final = "unknown"

# statistic -> the case_stats column it groups by
_COLUMN_KEYS: Final = {
    Statistic.BY_YEAR: cs.c.year,
    Statistic.BY_COUNTRY: cs.c.country,
    Statistic.BY_COUNTERPART: cs.c.counterpart,
    Statistic.BY_TYPE: cs.c.request_type,
    Statistic.BY_UNCAC_ARTICLE: cs.c.uncac_article,
    Statistic.BY_OUTCOME: cs.c.outcome,
    Statistic.BY_STATE: cs.c.state,
}
# statistic -> the bit-mask column of a multi-valued facet and its codes (a case counts under each of its codes)
_CODE_KEYS: Final = {
    Statistic.BY_OFFENCE: (cs.c.offences, OFFENCE_BITS),
    Statistic.BY_ASSISTANCE: (cs.c.assistance, ASSISTANCE_BITS),
    Statistic.BY_REFUSAL_GROUND: (cs.c.refusal_grounds, REFUSAL_GROUND_BITS),
}
# milestone -> the column holding the wait from start_at to it, in milliseconds
_WAIT_COLUMNS: Final = dict(
    zip(MILESTONES, (cs.c.wait_acknowledge_ms, cs.c.wait_first_answer_ms, cs.c.wait_execution_ms), strict=True)
)


def _closed() -> ColumnElement[bool]:
    return cs.c.state.in_(sorted(CLOSED_STATES))


def _has_code(column: Any, bits: Sequence[str], code: str) -> ColumnElement[bool]:
    return column.op("&")(1 << bits.index(code)) != 0  # type: ignore[no-any-return]


def _conditions(filters: Filters, utc_day: date) -> list[ColumnElement[bool]]:
    # a received request under an embargo still running (the UTC date binds both sides) counts nowhere: its coded
    # facets come from content its users may not see yet (decision 162)
    where: list[ColumnElement[bool]] = [or_(cs.c.hidden_until.is_(None), cs.c.hidden_until <= utc_day)]
    f = filters
    if f.direction is not None:
        where.append(cs.c.direction == f.direction)
    if f.since is not None:
        where.append(cs.c.opened_at >= datetime.combine(f.since, time(), UTC))
    if f.until is not None:
        where.append(cs.c.opened_at < datetime.combine(f.until + timedelta(days=1), time(), UTC))
    for column, value in (
        (cs.c.counterpart, f.counterpart),
        (cs.c.country, f.country),
        (cs.c.request_type, f.request_type),
        (cs.c.legal_basis, f.legal_basis),
    ):
        if value is not None:
            where.append(column == value)
    if f.offence is not None:
        where.append(_has_code(cs.c.offences, OFFENCE_BITS, f.offence))
    if f.assistance is not None:
        where.append(_has_code(cs.c.assistance, ASSISTANCE_BITS, f.assistance))
    if f.status is not None:
        where.append(_closed() if f.status == "closed" else not_(_closed()))
    if f.officer is not None:
        officer = users.alias()  # by-officer joins the users table itself
        where.append(cs.c.officer_id == select(officer.c.id).where(officer.c.username == f.officer).scalar_subquery())
    return where


# per case, the earliest due date of its case-work critical dates and tasks not done yet (docs/requests.md, "Case
# work"); joined once, it costs one scan of the open items instead of a lookup per case (bench.stats)
_NEXT_DUE = (
    select(case_dates.c.case_id, func.min(case_dates.c.due).label("next_due"))
    .where(case_dates.c.done_at.is_(None))
    .group_by(case_dates.c.case_id)
    .subquery("next_due")
)


def overdue_condition(today: date) -> ColumnElement[bool]:
    """An open case past a date: the request's suggested deadline (art. 46(24)), or a case-work critical date or task
    not done by its due date. Needs ``_NEXT_DUE`` joined (see :func:`compute`)."""
    late = or_(cs.c.deadline < today, _NEXT_DUE.c.next_due < today)  # NULL on either side is not late
    return and_(not_(_closed()), late)


def dated_condition() -> ColumnElement[bool]:
    """An open case with a date to keep: a suggested deadline or an open critical date or task."""
    return and_(not_(_closed()), or_(cs.c.deadline.is_not(None), _NEXT_DUE.c.next_due.is_not(None)))


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((0, value, "") if isinstance(value, int | float) else (1, 0, str(value)) for value in row[:2])


def _counted(rows: Sequence[Any], *, none: str = _UNKNOWN) -> list[tuple[Any, ...]]:
    out = [(_DIRECTION[r[0]], none if r[1] is None else r[1], int(r[2])) for r in rows]
    return sorted(out, key=_sort_key)


async def compute(
    conn: AsyncConnection, statistic: Statistic, filters: Filters, *, today: date, utc_day: date | None = None
) -> StatTable:
    """One statistic under ``filters``; ``today`` (the authority's date: time_zone) decides what is overdue,
    ``utc_day`` (default ``today``) which embargoes still run."""
    where = _conditions(filters, utc_day or today)
    direction = cs.c.direction
    if statistic in _COLUMN_KEYS:
        key = _COLUMN_KEYS[statistic]
        query: Select[Any] = select(direction, key, func.count()).where(*where).group_by(direction, key)
        if statistic is Statistic.BY_UNCAC_ARTICLE:
            query = query.where(cs.c.legal_basis == "uncac")
        none = "pending" if statistic is Statistic.BY_OUTCOME else _UNKNOWN
        return StatTable(statistic, _counted((await conn.execute(query)).all(), none=none))
    if statistic in _CODE_KEYS:
        column, bits = _CODE_KEYS[statistic]
        # one scan: a sum per code of whether its bit is set
        sums = [func.sum(case((_has_code(column, bits, code), 1), else_=0)) for code in bits]
        query = select(direction, *sums).where(*where, column != 0).group_by(direction)
        counted = [
            (row[0], code, int(row[1 + i] or 0))
            for row in await conn.execute(query)
            for i, code in enumerate(bits)
            if row[1 + i]
        ]
        return StatTable(statistic, _counted(counted))
    if statistic is Statistic.BY_OFFICER:
        # grouped on the row's officer id first; the few users are joined to the groups
        grouped = select(direction, cs.c.officer_id, func.count().label("n")).where(*where)
        groups = grouped.group_by(direction, cs.c.officer_id).subquery()
        query = select(groups.c.direction, users.c.username, groups.c.n).select_from(
            groups.outerjoin(users, users.c.id == groups.c.officer_id)
        )
        return StatTable(statistic, _counted((await conn.execute(query)).all(), none="unassigned"))
    if statistic is Statistic.BY_LEGAL_BASIS:
        query = select(direction, cs.c.legal_basis, func.count()).where(*where).group_by(direction, cs.c.legal_basis)
        counted = _counted((await conn.execute(query)).all())
        totals: dict[str, int] = defaultdict(int)
        for row in counted:
            totals[row[0]] += row[2]
        return StatTable(statistic, [(*row, round(row[2] / totals[row[0]], 4)) for row in counted])
    if statistic is Statistic.OPEN_CLOSED:
        status = case((_closed(), "closed"), else_="open")
        query = select(direction, status, func.count()).where(*where).group_by(direction, status)
        return StatTable(statistic, _counted((await conn.execute(query)).all()))
    if statistic is Statistic.OVERDUE:
        late = func.sum(case((overdue_condition(today), 1), else_=0))
        waiting = func.sum(case((dated_condition(), 1), else_=0))
        joined = cs.outerjoin(_NEXT_DUE, _NEXT_DUE.c.case_id == cs.c.case_id)
        query = select(direction, late, waiting).select_from(joined).where(*where).group_by(direction)
        found: dict[str, tuple[int, int]] = {
            str(row[0]): (int(row[1] or 0), int(row[2] or 0)) for row in await conn.execute(query)
        }
        wanted = [filters.direction] if filters.direction else ["in", "out"]
        return StatTable(statistic, [(_DIRECTION[d], *found.get(d, (0, 0))) for d in wanted])
    if statistic is Statistic.DURATIONS:
        return StatTable(statistic, await _durations(conn, where))
    raise AssertionError(statistic)  # pragma: no cover - every statistic is handled above


async def population(conn: AsyncConnection, filters: Filters, *, utc_day: date) -> dict[str, int]:
    """The cases a statistic under ``filters`` is drawn from, per direction name: those matching the filters other
    than the ones on what a request says (:func:`protocol.stats.population_filters`; decision 114)."""
    query = select(cs.c.direction, func.count()).where(*_conditions(population_filters(filters), utc_day))
    return {_DIRECTION[row[0]]: int(row[1]) for row in await conn.execute(query.group_by(cs.c.direction))}


async def _durations(conn: AsyncConnection, where: list[ColumnElement[bool]]) -> list[tuple[Any, ...]]:
    """Median and 90th percentile of the waits from start_at to each milestone (kept in whole milliseconds with
    the milestone, store/case_stats.py), per direction; a direction appears when one of its cases has started."""
    figures: dict[tuple[str, str], tuple[int, float | None, float | None]] = {}
    started = [*where, cs.c.start_at.is_not(None)]
    if conn.dialect.name == "postgresql":
        # one scan: per direction (FILTER) and milestone, the count and both percentiles in one sort
        columns: list[Any] = []
        for d in _DIRECTION:
            mine = cs.c.direction == d
            columns.append(func.count().filter(mine))
            for column in _WAIT_COLUMNS.values():
                fractions = postgresql.array([0.5, 0.9])
                columns += [
                    func.count(column).filter(mine),
                    func.percentile_cont(fractions).within_group(column).filter(mine),
                ]
        row = (await conn.execute(select(*columns).where(*started))).one()
        for k, d in enumerate(_DIRECTION):
            base = k * (1 + 2 * len(MILESTONES))
            if not row[base]:
                continue
            for i, milestone in enumerate(MILESTONES):
                count, both = row[base + 1 + 2 * i], row[base + 2 + 2 * i]
                median, p90 = both if both is not None else (None, None)
                figures[(d, milestone)] = (int(count), _ms(median), _ms(p90))
    else:
        waits: dict[tuple[str, str], list[float]] = defaultdict(list)
        query = select(cs.c.direction, *_WAIT_COLUMNS.values()).where(*started)
        directions: set[str] = set()
        for row in await conn.execute(query):
            directions.add(row[0])
            for milestone, wait in zip(MILESTONES, row[1:], strict=True):
                if wait is not None:
                    waits[(row[0], milestone)].append(float(wait))
        for d in directions:
            for milestone in MILESTONES:
                values = waits.get((d, milestone), [])
                figures[(d, milestone)] = (len(values), _ms(percentile(values, 0.5)), _ms(percentile(values, 0.9)))
    rows = []
    for (d, milestone), (count, median, p90) in figures.items():
        rows.append((_DIRECTION[d], milestone, count, seconds(median), seconds(p90)))
    order = {m: i for i, m in enumerate(MILESTONES)}
    return sorted(rows, key=lambda row: (row[0], order[row[1]]))


def _ms(value: Any) -> float | None:
    """Milliseconds (a percentile of whole milliseconds) to seconds."""
    return None if value is None else float(value) / 1000
