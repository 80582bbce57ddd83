"""Case work: a case's next action, flags, critical dates and tasks, and oral urgent requests (art. 46(14)).

Notes and next actions are free text that may be sensitive: they live only in these tables, never in the ledger or
the logs. The rules (kinds, flags, what is overdue) are in protocol/casework.py; access checks in gateway/casework.py.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, delete, exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.casework import DateKind, Stage
from protocol.lifecycle import State
from protocol.messages import Marking, canonical_json, parse_strict_json
from store.cases import Case
from store.tables import case_assignments, case_dates, case_flags, case_work, cases, messages, oral_requests

__all__ = ["CaseDate", "CaseFlag", "CaseWork", "NextAction", "OralRequest"]


@dataclass(frozen=True)
class CaseDate:
    id: int
    case_id: str
    kind: DateKind
    due: date
    note: str | None
    created_by: str
    created_at: datetime
    done_at: datetime | None = None
    done_by: str | None = None


@dataclass(frozen=True)
class CaseFlag:
    flag: str
    set_by: str
    set_at: datetime


@dataclass(frozen=True)
class NextAction:
    text: str | None
    updated_by: str
    updated_at: datetime


@dataclass(frozen=True)
class OralRequest:
    case_id: str
    peer: str
    direction: str  # "in" received from the peer, "out" made to it
    oral_on: date
    marking: Marking
    task_id: int
    confirmed_by: str | None


def _date(row: Row[Any]) -> CaseDate:
    return CaseDate(
        row.id,
        row.case_id,
        DateKind(row.kind),
        row.due,
        row.note,
        row.created_by,
        row.created_at,
        row.done_at,
        row.done_by,
    )


def _case_open() -> ColumnElement[bool]:
    """An item's case is not closed: a closed case's dates and tasks are no longer work, so they are neither listed
    as due nor notified (decision 105); the case's own view still shows them."""
    return ~exists(select(cases.c.id).where(cases.c.id == case_dates.c.case_id, cases.c.state == State.CLOSED.value))


def _marking(level: str, caveats: str) -> Marking:
    return Marking(level=level, caveats=parse_strict_json(caveats.encode()))


class CaseWork:
    # --- next action ------------------------------------------------------------------------------------------------

    @staticmethod
    async def set_next_action(conn: AsyncConnection, case_id: str, text: str | None, by: str, now: datetime) -> None:
        await conn.execute(delete(case_work).where(case_work.c.case_id == case_id))
        await conn.execute(insert(case_work).values(case_id=case_id, next_action=text, updated_by=by, updated_at=now))

    @staticmethod
    async def next_action(conn: AsyncConnection, case_id: str) -> NextAction | None:
        row = (await conn.execute(select(case_work).where(case_work.c.case_id == case_id))).one_or_none()
        return None if row is None else NextAction(row.next_action, row.updated_by, row.updated_at)

    # --- flags ------------------------------------------------------------------------------------------------------

    @staticmethod
    async def set_flag(conn: AsyncConnection, case_id: str, flag: str, by: str, now: datetime) -> bool:
        """Set ``flag``; False when it was already set (nothing changes)."""
        query = select(case_flags.c.flag).where(case_flags.c.case_id == case_id, case_flags.c.flag == flag)
        if (await conn.execute(query)).first() is not None:
            return False
        await conn.execute(insert(case_flags).values(case_id=case_id, flag=flag, set_by=by, set_at=now))
        return True

    @staticmethod
    async def clear_flag(conn: AsyncConnection, case_id: str, flag: str) -> bool:
        result = await conn.execute(
            delete(case_flags).where(case_flags.c.case_id == case_id, case_flags.c.flag == flag)
        )
        return bool(result.rowcount == 1)

    @staticmethod
    async def flags(conn: AsyncConnection, case_id: str) -> list[CaseFlag]:
        query = select(case_flags).where(case_flags.c.case_id == case_id).order_by(case_flags.c.flag)
        return [CaseFlag(r.flag, r.set_by, r.set_at) for r in await conn.execute(query)]

    # --- critical dates and tasks ------------------------------------------------------------------------------------

    @staticmethod
    async def add_date(
        conn: AsyncConnection, case_id: str, kind: DateKind, due: date, note: str | None, by: str, now: datetime
    ) -> int:
        result = await conn.execute(
            insert(case_dates).values(
                case_id=case_id, kind=kind.value, due=due, note=note, created_by=by, created_at=now
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    @staticmethod
    async def find_date(conn: AsyncConnection, item_id: int) -> CaseDate | None:
        row = (await conn.execute(select(case_dates).where(case_dates.c.id == item_id))).one_or_none()
        return None if row is None else _date(row)

    @staticmethod
    async def complete(conn: AsyncConnection, item_id: int, by: str, now: datetime) -> bool:
        """Mark an open item done; False when it is already done."""
        result = await conn.execute(
            update(case_dates)
            .where(case_dates.c.id == item_id, case_dates.c.done_at.is_(None))
            .values(done_at=now, done_by=by)
        )
        return bool(result.rowcount == 1)

    @staticmethod
    async def dates(conn: AsyncConnection, case_id: str) -> list[CaseDate]:
        query = select(case_dates).where(case_dates.c.case_id == case_id).order_by(case_dates.c.due, case_dates.c.id)
        return [_date(r) for r in await conn.execute(query)]

    @staticmethod
    async def open_between(
        conn: AsyncConnection,
        first: date | None,
        last: date,
        *,
        limit: int = 10_000,
        after: tuple[date, int] | None = None,
    ) -> list[CaseDate]:
        """Open items of cases that are not closed, due from ``first`` (None: any time before) to ``last``, soonest
        first; ``after`` (the due date and id of the last item of the previous page) continues a listing page by
        page."""
        where = [case_dates.c.done_at.is_(None), case_dates.c.due <= last, _case_open()]
        if first is not None:
            where.append(case_dates.c.due >= first)
        if after is not None:
            due, item = after
            where.append(or_(case_dates.c.due > due, and_(case_dates.c.due == due, case_dates.c.id > item)))
        query = select(case_dates).where(*where).order_by(case_dates.c.due, case_dates.c.id).limit(limit)
        return [_date(r) for r in await conn.execute(query)]

    # --- notifications ----------------------------------------------------------------------------------------------

    @staticmethod
    async def to_notify(
        conn: AsyncConnection, today: date, notice_days: int, *, limit: int = 500, exclude: Collection[int] = ()
    ) -> list[tuple[CaseDate, Stage]]:
        """Open items of cases that are not closed whose stage (due soon, overdue) has not been notified yet, oldest
        due first, but those in ``exclude`` (held back: they must not fill the window). An overdue item whose
        due-soon notification never went out gets only the overdue one."""
        overdue = and_(case_dates.c.due < today, case_dates.c.notified_overdue_at.is_(None))
        soon = and_(
            case_dates.c.due >= today,
            case_dates.c.due <= today + timedelta(days=notice_days),
            case_dates.c.notified_soon_at.is_(None),
        )
        query = (
            select(case_dates)
            .where(
                case_dates.c.done_at.is_(None), or_(overdue, soon), _case_open(), case_dates.c.id.not_in(list(exclude))
            )
            .order_by(case_dates.c.due, case_dates.c.id)
            .limit(limit)
        )
        found = [_date(r) for r in await conn.execute(query)]
        return [(item, Stage.OVERDUE if item.due < today else Stage.DUE_SOON) for item in found]

    @staticmethod
    async def still_to_notify(conn: AsyncConnection, item_id: int, stage: Stage) -> bool:
        """Whether the item is still open, of a case not closed, and not yet notified at ``stage``: read again just
        before its notification goes out, since a scan's list may be minutes old."""
        column = case_dates.c.notified_overdue_at if stage is Stage.OVERDUE else case_dates.c.notified_soon_at
        query = select(case_dates.c.id).where(
            case_dates.c.id == item_id, case_dates.c.done_at.is_(None), column.is_(None), _case_open()
        )
        return (await conn.execute(query)).first() is not None

    @staticmethod
    async def mark_notified(conn: AsyncConnection, item_id: int, stage: Stage, now: datetime) -> None:
        column = "notified_overdue_at" if stage is Stage.OVERDUE else "notified_soon_at"
        values = {column: now}
        if stage is Stage.OVERDUE:  # an overdue item never needs its due-soon notice afterwards
            values["notified_soon_at"] = now
        await conn.execute(update(case_dates).where(case_dates.c.id == item_id).values(**values))

    # --- oral urgent requests (art. 46(14)) ---

    @staticmethod
    async def record_oral(
        conn: AsyncConnection,
        case_id: str,
        *,
        peer: str,
        direction: str,
        oral_on: date,
        marking: Marking,
        task_id: int,
    ) -> None:
        await conn.execute(
            insert(oral_requests).values(
                case_id=case_id,
                peer=peer,
                direction=direction,
                oral_on=oral_on,
                marking_level=marking.level,
                marking_caveats=canonical_json(list(marking.caveats)).decode(),
                task_id=task_id,
            )
        )

    @staticmethod
    async def oral(conn: AsyncConnection, case_id: str) -> OralRequest | None:
        row = (await conn.execute(select(oral_requests).where(oral_requests.c.case_id == case_id))).one_or_none()
        if row is None:
            return None
        marking = _marking(row.marking_level, row.marking_caveats)
        return OralRequest(row.case_id, row.peer, row.direction, row.oral_on, marking, row.task_id, row.confirmed_by)

    @staticmethod
    async def confirm_oral(conn: AsyncConnection, case_id: str, message_id: str) -> bool:
        """Link the written request; False when the oral request was already confirmed."""
        result = await conn.execute(
            update(oral_requests)
            .where(oral_requests.c.case_id == case_id, oral_requests.c.confirmed_by.is_(None))
            .values(confirmed_by=message_id)
        )
        return bool(result.rowcount == 1)

    # --- what the access checks need, for many cases at once ---

    @staticmethod
    async def access_facts(conn: AsyncConnection, case_ids: Iterable[str]) -> dict[str, tuple[Case, Marking]]:
        """Each case with its assignees and the marking it is held under: the marking of the message that opened it,
        or of the oral request that did. A case with neither is left out (nobody acts on it here)."""
        ids = sorted(set(case_ids))
        found: dict[str, tuple[Case, Marking]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            assignees: dict[str, set[int]] = {}
            query = select(case_assignments.c.case_id, case_assignments.c.user_id).where(
                case_assignments.c.case_id.in_(chunk)
            )
            for row in await conn.execute(query):
                assignees.setdefault(row.case_id, set()).add(row.user_id)
            markings: dict[str, Marking] = {}
            query_o = select(oral_requests.c.case_id, oral_requests.c.marking_level, oral_requests.c.marking_caveats)
            for oral in await conn.execute(query_o.where(oral_requests.c.case_id.in_(chunk))):
                markings[oral.case_id] = _marking(oral.marking_level, oral.marking_caveats)
            query_m = select(messages.c.id, messages.c.marking_level, messages.c.marking_caveats)
            for message in await conn.execute(query_m.where(messages.c.id.in_(chunk))):
                markings[message.id] = _marking(message.marking_level, message.marking_caveats)
            for case_row in await conn.execute(select(cases).where(cases.c.id.in_(chunk))):
                if case_row.id in markings:
                    case = Case(case_row.id, case_row.unit, frozenset(assignees.get(case_row.id, ())), case_row.state)
                    found[case_row.id] = (case, markings[case_row.id])
        return found
