"""Consultation threads (ids, parties, states and times only) and the checklists of drafts shared in them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, false, insert, or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.messages import Marking
from store.errors import NotFound
from store.messages import METADATA, MessageRow
from store.tables import case_assignments, cases, consultation_drafts, consultations, messages
from store.users import User

__all__ = ["Consultations", "DraftChecks", "StoredDraftCheck", "Thread"]


@dataclass(frozen=True)
class Thread:
    id: str  # = the id of its first message and of its case
    peer: str
    direction: str  # "out": we started it; "in": the peer did
    about_case_id: str | None
    state: str  # open | converted
    converted_request_id: str | None
    created_at: datetime
    created_by: int | None
    last_message_at: datetime
    unit: str | None = None  # the unit of its case
    marking: Marking | None = None  # the marking of its first message


def _thread(row: Any) -> Thread:
    return Thread(
        row.id,
        row.peer,
        row.direction,
        row.about_case_id,
        row.state,
        row.converted_request_id,
        row.created_at,
        row.created_by,
        row.last_message_at,
        row.unit,
        Marking(level=row.marking_level, caveats=json.loads(row.marking_caveats)),
    )


def _threads() -> Select[Any]:
    return select(*consultations.c, cases.c.unit, messages.c.marking_level, messages.c.marking_caveats).select_from(
        consultations.join(cases, cases.c.id == consultations.c.id).join(messages, messages.c.id == consultations.c.id)
    )


class Consultations:
    @staticmethod
    async def create(
        conn: AsyncConnection,
        thread_id: str,
        *,
        peer: str,
        direction: str,
        about_case_id: str | None,
        created_by: int | None,
        now: datetime,
    ) -> None:
        await conn.execute(
            insert(consultations).values(
                id=thread_id,
                peer=peer,
                direction=direction,
                about_case_id=about_case_id,
                state="open",
                converted_request_id=None,
                created_at=now,
                created_by=created_by,
                last_message_at=now,
            )
        )

    @staticmethod
    async def find(conn: AsyncConnection, thread_id: str) -> Thread | None:
        row = (await conn.execute(_threads().where(consultations.c.id == thread_id))).one_or_none()
        return None if row is None else _thread(row)

    @staticmethod
    async def get(conn: AsyncConnection, thread_id: str) -> Thread:
        found = await Consultations.find(conn, thread_id)
        if found is None:
            raise NotFound(f"no consultation {thread_id}")
        return found

    @staticmethod
    async def touch(conn: AsyncConnection, thread_id: str, now: datetime) -> None:
        await conn.execute(consultations.update().where(consultations.c.id == thread_id).values(last_message_at=now))

    @staticmethod
    async def convert(conn: AsyncConnection, thread_id: str, request_id: str, now: datetime) -> bool:
        """Mark an open thread converted into ``request_id``; False when it is not open (converted meanwhile)."""
        result = await conn.execute(
            consultations.update()
            .where(consultations.c.id == thread_id, consultations.c.state == "open")
            .values(state="converted", converted_request_id=request_id, last_message_at=now)
        )
        return bool(result.rowcount == 1)

    @staticmethod
    async def reopen(conn: AsyncConnection, request_id: str) -> str | None:
        """Open again the thread converted into ``request_id`` (the peer refused that request for good: it was never
        made); the thread's id, or None if no thread was converted into it."""
        reopened = (
            consultations.update()
            .where(consultations.c.converted_request_id == request_id, consultations.c.state == "converted")
            .values(state="open", converted_request_id=None)
            .returning(consultations.c.id)
        )
        found: str | None = (await conn.execute(reopened)).scalar_one_or_none()
        return found

    @staticmethod
    async def visible_to(
        conn: AsyncConnection,
        user: User,
        *,
        limit: int,
        offset: int = 0,
        about: str | None = None,
        state: str | None = None,
        after_id: str | None = None,
    ) -> list[Thread]:
        """Threads an officer is assigned to, or that a supervisor's unit holds (or nobody was assigned yet);
        auditors and admins see every thread's metadata. Optionally only those about a case, or in a state. Newest
        first; with ``after_id``, in order of id from after it instead: pages that a message arriving meanwhile
        cannot reorder (a caller reading every thread sorts them itself)."""
        assigned = consultations.c.id.in_(
            select(case_assignments.c.case_id).where(case_assignments.c.user_id == user.id)
        )
        if user.role == "supervisor":
            condition = or_(assigned, cases.c.unit.is_(None), cases.c.unit == user.unit)
        elif user.role == "officer":
            condition = assigned
        elif user.role in ("auditor", "admin"):
            condition = true()
        else:
            condition = false()
        filters = [condition]
        if about is not None:
            filters.append(consultations.c.about_case_id == about)
        if state is not None:
            filters.append(consultations.c.state == state)
        query = _threads().where(and_(*filters))
        if after_id is not None:
            query = query.where(consultations.c.id > after_id).order_by(consultations.c.id)
        else:
            query = query.order_by(consultations.c.last_message_at.desc(), consultations.c.id).offset(offset)
        return [_thread(row) for row in await conn.execute(query.limit(limit))]

    @staticmethod
    async def about_case(conn: AsyncConnection, case_id: str, peer: str) -> list[Thread]:
        """Threads with ``peer`` about the case, or that the case's request came from; newest first."""
        query = (
            _threads()
            .where(
                consultations.c.peer == peer,
                or_(consultations.c.about_case_id == case_id, consultations.c.converted_request_id == case_id),
            )
            .order_by(consultations.c.last_message_at.desc(), consultations.c.id)
        )
        return [_thread(row) for row in await conn.execute(query)]

    @staticmethod
    async def message_times(conn: AsyncConnection, thread_ids: list[str]) -> list[tuple[str, datetime, Marking]]:
        """(thread id, created at, marking) of every message of the threads, for a caller who may see only some."""
        if not thread_ids:
            return []
        query = select(messages.c.case_id, messages.c.created_at, messages.c.marking_level, messages.c.marking_caveats)
        rows = await conn.execute(query.where(messages.c.case_id.in_(sorted(set(thread_ids)))))
        return [
            (row.case_id, row.created_at, Marking(level=row.marking_level, caveats=json.loads(row.marking_caveats)))
            for row in rows
        ]

    @staticmethod
    async def thread_messages(conn: AsyncConnection, thread_id: str) -> list[MessageRow]:
        """The thread's messages, oldest first, without their envelopes."""
        query = select(*METADATA).where(messages.c.case_id == thread_id).order_by(messages.c.created_at, messages.c.id)
        return [MessageRow.from_row(row) for row in await conn.execute(query)]


@dataclass(frozen=True)
class StoredDraftCheck:
    message_id: str
    request_type: str
    blocking: tuple[str, ...]
    warnings: tuple[str, ...]


class DraftChecks:
    @staticmethod
    async def record(
        conn: AsyncConnection,
        message_id: str,
        thread_id: str,
        request_type: str,
        blocking: tuple[str, ...],
        warnings: tuple[str, ...],
    ) -> None:
        await conn.execute(
            insert(consultation_drafts).values(
                message_id=message_id,
                thread_id=thread_id,
                request_type=request_type,
                blocking=json.dumps(list(blocking)),
                warnings=json.dumps(list(warnings)),
            )
        )

    @staticmethod
    async def for_thread(conn: AsyncConnection, thread_id: str) -> dict[str, StoredDraftCheck]:
        query = select(consultation_drafts).where(consultation_drafts.c.thread_id == thread_id)
        return {
            row.message_id: StoredDraftCheck(
                row.message_id, row.request_type, tuple(json.loads(row.blocking)), tuple(json.loads(row.warnings))
            )
            for row in await conn.execute(query)
        }
