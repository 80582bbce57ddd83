"""Cases (the thread a request opens), their unit and assigned officers; consents to onward use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from store import fast
from store.case_stats import CaseStats
from store.errors import NotFound
from store.tables import case_assignments, cases, consents, users

__all__ = ["Case", "Cases", "Consents"]

# hot-path statements (every new message opens a case), built once
_INSERT_CASE = insert(cases)
_INSERT_ASSIGNMENT = insert(case_assignments)
_FIND = select(cases).where(cases.c.id == bindparam("b_id"))
_ASSIGNEES = select(case_assignments.c.user_id).where(case_assignments.c.case_id == bindparam("b_id"))


@dataclass(frozen=True)
class Case:
    id: str
    unit: str | None
    assignees: frozenset[int]
    state: str | None = None  # protocol.lifecycle.State value, kept by each side
    peer_state: str | None = None  # the counterpart's state, from its last status report
    request_type: str | None = None
    last_action_at: datetime | None = None


class Cases:
    @staticmethod
    async def create(
        conn: AsyncConnection,
        case_id: str,
        unit: str | None,
        now: datetime,
        *,
        state: str | None = None,
        request_type: str | None = None,
    ) -> None:
        await fast.insert(
            conn,
            cases,
            {
                "id": case_id,
                "unit": unit,
                "created_at": now,
                "state": state,
                "request_type": request_type,
                "last_action_at": now if state else None,
            },
            _INSERT_CASE,
        )

    @staticmethod
    async def open(
        conn: AsyncConnection,
        case_id: str,
        unit: str | None,
        officer_id: int,
        by: str,
        now: datetime,
        *,
        state: str | None = None,
        request_type: str | None = None,
    ) -> None:
        """A new case of ``unit`` with its first officer assigned (two statements: the submit hot path)."""
        await Cases.create(conn, case_id, unit, now, state=state, request_type=request_type)
        row = {"case_id": case_id, "user_id": officer_id, "assigned_by": by, "assigned_at": now}
        await fast.insert(conn, case_assignments, row, _INSERT_ASSIGNMENT)

    @staticmethod
    async def find(conn: AsyncConnection, case_id: str) -> Case | None:
        row = (await conn.execute(_FIND, {"b_id": case_id})).one_or_none()
        if row is None:
            return None
        assignees = frozenset(r.user_id for r in await conn.execute(_ASSIGNEES, {"b_id": case_id}))
        return Case(row.id, row.unit, assignees, row.state, row.peer_state, row.request_type, row.last_action_at)

    @staticmethod
    async def move(conn: AsyncConnection, case_id: str, previous: str, state: str, now: datetime) -> bool:
        """Our transition from ``previous`` to ``state``; False when the case is no longer in ``previous``."""
        result = await conn.execute(
            cases.update()
            .where(cases.c.id == case_id, cases.c.state == previous)
            .values(state=state, last_action_at=now)
        )
        return bool(result.rowcount == 1)

    @staticmethod
    async def transition_view(conn: AsyncConnection, case_id: str) -> tuple[str | None, datetime | None]:
        """The case's state and the time of the counterpart's last transition we adopted (None, None: no case)."""
        query = select(cases.c.state, cases.c.peer_state_at).where(cases.c.id == case_id)
        row = (await conn.execute(query)).one_or_none()
        return (None, None) if row is None else (row.state, row.peer_state_at)

    @staticmethod
    async def set_peer_state(
        conn: AsyncConnection,
        case_id: str,
        state: str,
        *,
        adopt: bool,
        at: datetime | None = None,
        expected: str | None = None,
    ) -> bool:
        """The counterpart's state as its status report says; ``adopt`` moves our view of the case there too (the
        report names a transition of the counterpart's, made at ``at``). Reports travel concurrently and may arrive
        out of order, so one older than the transition last adopted changes nothing; a report that names no
        transition (an answer to a status query, ``at`` = the counterpart's last action) applies only if it is not
        older than that transition. With ``expected``, only a case still in that state moves. Return whether it was
        applied."""
        values: dict[str, Any] = {"peer_state": state, "state": state} if adopt else {"peer_state": state}
        query = cases.update().where(cases.c.id == case_id, cases.c.state.is_not(None))
        if expected is not None:
            query = query.where(cases.c.state == expected)
        if adopt and at is not None:
            values["peer_state_at"] = at
            query = query.where(or_(cases.c.peer_state_at.is_(None), cases.c.peer_state_at < at))
        elif not adopt:
            newer = cases.c.peer_state_at.is_(None)
            query = query.where(newer if at is None else or_(newer, cases.c.peer_state_at <= at))
        result = await conn.execute(query.values(**values))
        return bool(result.rowcount)

    @staticmethod
    async def get(conn: AsyncConnection, case_id: str) -> Case:
        found = await Cases.find(conn, case_id)
        if found is None:
            raise NotFound(f"no case {case_id}")
        return found

    @staticmethod
    async def assign(
        conn: AsyncConnection, case_id: str, user_id: int, by: str, now: datetime, *, unit: str | None, replace: bool
    ) -> None:
        """Assign ``user_id`` (replacing the current officers when ``replace``); the case takes ``unit`` if unset."""
        if replace:
            await conn.execute(delete(case_assignments).where(case_assignments.c.case_id == case_id))
        else:
            await conn.execute(
                delete(case_assignments).where(
                    case_assignments.c.case_id == case_id, case_assignments.c.user_id == user_id
                )
            )
        await conn.execute(
            insert(case_assignments).values(case_id=case_id, user_id=user_id, assigned_by=by, assigned_at=now)
        )
        await CaseStats.assigned(conn, case_id, user_id)  # statistics count a case under its latest officer
        if unit is not None:
            await conn.execute(cases.update().where(cases.c.id == case_id, cases.c.unit.is_(None)).values(unit=unit))

    @staticmethod
    async def assignee_names(conn: AsyncConnection, case_id: str) -> list[str]:
        """The user names of the officers assigned to a case, sorted."""
        query = (
            select(users.c.username)
            .join(case_assignments, case_assignments.c.user_id == users.c.id)
            .where(case_assignments.c.case_id == case_id)
            .order_by(users.c.username)
        )
        return [row.username for row in await conn.execute(query)]

    @staticmethod
    async def unassign(conn: AsyncConnection, case_id: str, user_id: int) -> bool:
        """Take ``user_id`` off the case; False when it was not assigned."""
        result = await conn.execute(
            delete(case_assignments).where(case_assignments.c.case_id == case_id, case_assignments.c.user_id == user_id)
        )
        return bool(result.rowcount == 1)


class Consents:
    @staticmethod
    async def record(
        conn: AsyncConnection, message_id: str, recipient: str, granted_by: str, consent_id: str, now: datetime
    ) -> None:
        """Record the consent unless one for that message and recipient is recorded already: one statement, so that
        two consents received at once by two replicas do not collide on the key."""
        upsert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
        statement = upsert(consents).values(
            message_id=message_id,
            recipient=recipient,
            granted_by=granted_by,
            consent_message_id=consent_id,
            received_at=now,
        )
        await conn.execute(
            statement.on_conflict_do_nothing(index_elements=[consents.c.message_id, consents.c.recipient])
        )

    @staticmethod
    async def granted(conn: AsyncConnection, message_id: str, recipient: str) -> bool:
        query = select(consents.c.message_id).where(
            consents.c.message_id == message_id, consents.c.recipient == recipient
        )
        return (await conn.execute(query)).first() is not None
