"""The write side of statistics: a case's coded facets when its request is sent or received, and its milestones.

Every call runs in the caller's transaction, the one that records the ledger event marking the same step, and is
given that event's time: a milestone time here always equals the time of its ledger entry. Only the first
acknowledgement, answer, execution, outcome and closure count (a later one changes nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.events import EventType
from protocol.stats import ASSISTANCE_BITS, OFFENCE_BITS, OUTCOME_STATES, REFUSAL_GROUND_BITS, Facets, mask_of
from store import fast, sqlite_fast
from store.tables import case_stats

__all__ = ["ANSWER_MILESTONES", "TIMES", "WAITS", "CaseStats"]

_MILESTONES: Final = ("start_at", "acknowledged_at", "first_answer_at")
# every request sent or received opens a row and every envelope sent marks "start_at" (a no-op for anything but
# a request): the hot path, so the statements are built once (store/fast.py)
_OPEN: Final = insert(case_stats)
TIMES: Final = ("start_at", "acknowledged_at", "first_answer_at", "executed_at")
_TIME_COLUMNS: Final = tuple(case_stats.c[time] for time in TIMES)
_MARK: Final = {
    column: update(case_stats)
    .where(case_stats.c.case_id == bindparam("b_case_id"), case_stats.c[column].is_(None))
    .values({column: bindparam("b_at")})
    .returning(*(case_stats.c[time] for time in TIMES))
    for column in _MILESTONES
}
_MARK_SQL: Final = {
    column: f"UPDATE case_stats SET {column} = $1 WHERE case_id = $2 AND {column} IS NULL "  # noqa: S608 - fixed names
    f"RETURNING {', '.join(TIMES)}"
    for column in _MILESTONES
}
WAITS: Final = (
    ("wait_acknowledge_ms", "acknowledged_at"),
    ("wait_first_answer_ms", "first_answer_at"),
    ("wait_execution_ms", "executed_at"),
)
# an answer's ledger event on the request it answers -> the milestone it marks (the first one counts)
ANSWER_MILESTONES: Final = {EventType.ACKNOWLEDGED: "acknowledged_at", EventType.ANSWERED: "first_answer_at"}


class CaseStats:
    @staticmethod
    async def open(
        conn: AsyncConnection,
        case_id: str,
        *,
        direction: str,
        counterpart: str,
        country: str,
        at: datetime,
        state: str,
        facets: Facets,
        officer_id: int | None = None,
        hidden_until: date | None = None,
    ) -> None:
        """The row of a case a request opened (``at``: the time of message.submitted or message.received);
        ``hidden_until``: a received request's embargo date, until which no statistic counts it (decision 162)."""
        row = {
            "case_id": case_id,
            "direction": direction,
            "counterpart": counterpart,
            "country": country,
            "opened_at": at,
            "year": at.year,
            "request_type": facets.request_type,
            "legal_basis": facets.legal_basis,
            "uncac_article": facets.uncac_article,
            "urgent": facets.urgent,
            "offences": mask_of(facets.offences, OFFENCE_BITS),
            "assistance": mask_of(facets.assistance, ASSISTANCE_BITS),
            "refusal_grounds": 0,
            "deadline": facets.deadline,
            "state": state,
            "officer_id": officer_id,
            "start_at": at if direction == "in" else None,
            "hidden_until": hidden_until,
        }
        await fast.insert(conn, case_stats, row, _OPEN)

    @staticmethod
    async def milestone(conn: AsyncConnection, case_id: str, column: str, at: datetime) -> None:
        """``start_at`` (sent), ``acknowledged_at`` or ``first_answer_at``, the first time only; a message that is
        not a request's case changes nothing."""
        if column not in _MILESTONES:
            raise ValueError(f"not a milestone: {column}")
        lite = await sqlite_fast.driver(conn)  # SQLite in a transaction: every sent request marks start_at
        times: Mapping[str, Any] | None
        if lite is not None:
            times = await sqlite_fast.returning(lite, conn.dialect, _MARK_SQL[column], (at, case_id), _TIME_COLUMNS)
        else:
            times = await fast.fetch_row(
                conn, _MARK_SQL[column], (at, case_id), _MARK[column], {"b_case_id": case_id, "b_at": at}
            )
        if times is not None:
            await CaseStats.write_waits(conn, case_id, times)

    @staticmethod
    async def forget(conn: AsyncConnection, case_id: str) -> None:
        """Take a case out of the statistics: a request the peer refused for good never reached it, so it is no
        request made (nothing if ``case_id`` is no request's case)."""
        await conn.execute(delete(case_stats).where(case_stats.c.case_id == case_id))

    @staticmethod
    async def assigned(conn: AsyncConnection, case_id: str, user_id: int) -> None:
        """The officer most recently assigned to the case is the one statistics count it under."""
        await conn.execute(update(case_stats).where(case_stats.c.case_id == case_id).values(officer_id=user_id))

    @staticmethod
    async def _waits(conn: AsyncConnection, case_id: str) -> None:
        """The waits from ``start_at`` to each milestone reached, in whole milliseconds (whichever came first)."""
        c = case_stats.c
        row = (await conn.execute(select(*(c[time] for time in TIMES)).where(c.case_id == case_id))).one()
        await CaseStats.write_waits(conn, case_id, dict(row._mapping))

    @staticmethod
    async def write_waits(conn: AsyncConnection, case_id: str, times: Mapping[str, datetime | None]) -> None:
        """The waits from the times a milestone's ``UPDATE ... RETURNING`` gave (nothing before ``start_at``). A
        milestone may precede ``start_at``: the first delivery reached the peer, which answered it, but its receipt
        was lost and a later attempt's start is the one recorded (decision 10). Such a wait is 0, never negative."""
        start = times["start_at"]
        if start is None:
            return
        waits = {
            wait: max(0, (end - start) // timedelta(milliseconds=1))
            for wait, milestone in WAITS
            if (end := times[milestone]) is not None
        }
        if waits:
            await conn.execute(update(case_stats).where(case_stats.c.case_id == case_id).values(**waits))

    @staticmethod
    async def moved(
        conn: AsyncConnection,
        case_id: str,
        state: str,
        at: datetime,
        *,
        refusal_grounds: Iterable[str] = (),
        milestones_only: bool = False,
    ) -> None:
        """The case moved to ``state`` (ours or the counterpart's transition, as cases.state); ``at`` is the time of
        its ``case.state_changed`` entry. ``milestones_only``: a transition reported after a later one (the case's
        state stays), which still gives the milestone and the outcome they had not been given yet."""
        if not milestones_only:
            await conn.execute(update(case_stats).where(case_stats.c.case_id == case_id).values(state=state))
        first = {
            "acknowledged": case_stats.c.acknowledged_at,
            "executed": case_stats.c.executed_at,
            "closed": case_stats.c.closed_at,
        }
        if state in first:
            column = first[state]
            result = await conn.execute(
                update(case_stats).where(case_stats.c.case_id == case_id, column.is_(None)).values({column: at})
            )
            if result.rowcount == 1 and state != "closed":
                await CaseStats._waits(conn, case_id)
        if state in OUTCOME_STATES:
            # the first outcome only; a refusal with its grounds (codes only)
            grounds = mask_of(set(refusal_grounds), REFUSAL_GROUND_BITS) if state == "refused" else 0
            await conn.execute(
                update(case_stats)
                .where(case_stats.c.case_id == case_id, case_stats.c.outcome.is_(None))
                .values(outcome=state, outcome_at=at, refusal_grounds=grounds)
            )
