"""Repository of messages (both directions) and their attachment ciphertexts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.events import ANSWER_EFFECTS
from protocol.messages import Marking
from store import fast, sqlite_fast
from store.errors import NotFound
from store.tables import attachments, messages

__all__ = ["DELIVERED_STATE", "AttachmentRow", "MessageRow", "Messages", "Seen"]

# hot-path statements built once: building one per call (``insert(...).values(**row)``) costs more CPU than running
# it (docs/performance.md); each is compiled once per set of parameter names and cached by SQLAlchemy
_INSERT = insert(messages)
_FIND = select(messages).where(messages.c.id == bindparam("b_id"))
_UPDATE = update(messages).where(messages.c.id == bindparam("b_id"))
# a receipt makes a message delivered; one recorded late (its first answer lost, decision 111) leaves a message
# the peer has already acknowledged or answered (protocol/events.py ANSWER_EFFECTS) where it is
_ANSWERED_STATES = tuple(state for _, state in ANSWER_EFFECTS.values())
DELIVERED_STATE = (
    f"CASE WHEN messages.state IN ({', '.join(repr(s) for s in _ANSWERED_STATES)}) THEN messages.state "
    "ELSE 'delivered' END"
)
_DELIVERED = _UPDATE.values(
    state=case((messages.c.state.in_(_ANSWERED_STATES), messages.c.state), else_="delivered"),
    received_at=bindparam("received_at"),
    receipt=bindparam("receipt"),
)
_SEEN_COLUMNS = (messages.c.id, messages.c.direction, messages.c.envelope_sha256, messages.c.receipt)
_SEEN = select(*_SEEN_COLUMNS).where(messages.c.id.in_(bindparam("b_ids", expanding=True)))
_SEEN_SQL = "SELECT id, direction, envelope_sha256, receipt FROM messages WHERE id = ANY($1::text[])"
_SEEN_SQLITE = f"SELECT {', '.join(c.name for c in _SEEN_COLUMNS)} FROM messages WHERE id IN "  # noqa: S608


@dataclass(frozen=True)
class Seen:
    """What the duplicate check of an incoming envelope needs to know of a message id already used."""

    direction: str
    envelope_sha256: str
    receipt: str | None


@dataclass(frozen=True)
class AttachmentRow:
    position: int
    ct_size: int
    ct_sha256: str
    path: str


@dataclass(frozen=True)
class MessageRow:
    id: str
    direction: str
    peer: str
    kind: str
    in_reply_to: str | None
    marking: Marking
    state: str
    sealed: bytes
    archive: bytes | None
    envelope_sha256: str
    created_by: int | None
    created_at: datetime
    received_at: datetime | None
    receipt: str | None
    ledger_index: int | None
    case_id: str | None = None
    confidentiality_answer: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> MessageRow:
        marking = Marking(level=row.marking_level, caveats=json.loads(row.marking_caveats))
        return cls(
            id=row.id,
            direction=row.direction,
            peer=row.peer,
            kind=row.kind,
            in_reply_to=row.in_reply_to,
            marking=marking,
            state=row.state,
            sealed=bytes(getattr(row, "sealed", b"")),  # a listing leaves the envelopes out (scan_box)
            archive=None if getattr(row, "archive", None) is None else bytes(row.archive),
            envelope_sha256=row.envelope_sha256,
            created_by=row.created_by,
            created_at=row.created_at,
            received_at=row.received_at,
            receipt=row.receipt,
            ledger_index=row.ledger_index,
            case_id=row.case_id,
            confidentiality_answer=row.confidentiality_answer,
        )


# every column of a message but its envelopes (the sealed and archive copies): what listings read
METADATA = [column for column in messages.c if column.name not in ("sealed", "archive")]


class Messages:
    @staticmethod
    async def insert(
        conn: AsyncConnection,
        *,
        id: str,
        direction: str,
        peer: str,
        kind: str,
        in_reply_to: str | None,
        marking: Marking,
        state: str,
        sealed: bytes,
        envelope_sha256: str,
        created_at: datetime,
        archive: bytes | None = None,
        created_by: int | None = None,
        received_at: datetime | None = None,
        receipt: str | None = None,
        ledger_index: int | None = None,
        case_id: str | None = None,
        attachment_rows: Sequence[AttachmentRow] = (),
    ) -> None:
        await fast.insert(
            conn,
            messages,
            {
                "id": id,
                "direction": direction,
                "peer": peer,
                "kind": kind,
                "in_reply_to": in_reply_to,
                "marking_level": marking.level,
                "marking_caveats": json.dumps(marking.caveats),
                "state": state,
                "sealed": sealed,
                "archive": archive,
                "envelope_sha256": envelope_sha256,
                "created_by": created_by,
                "created_at": created_at,
                "received_at": received_at,
                "receipt": receipt,
                "ledger_index": ledger_index,
                "case_id": case_id,
            },
            _INSERT,
        )
        if attachment_rows:
            await conn.execute(
                insert(attachments),
                [
                    {
                        "message_id": id,
                        "position": a.position,
                        "ct_size": a.ct_size,
                        "ct_sha256": a.ct_sha256,
                        "path": a.path,
                    }
                    for a in attachment_rows
                ],
            )

    @staticmethod
    async def find(conn: AsyncConnection, message_id: str) -> MessageRow | None:
        row = (await conn.execute(_FIND, {"b_id": message_id})).one_or_none()
        return None if row is None else MessageRow.from_row(row)

    @staticmethod
    async def seen(conn: AsyncConnection, message_id: str) -> Seen | None:
        """The direction, envelope digest and receipt of ``message_id`` if it is known."""
        return (await Messages.seen_many(conn, [message_id])).get(message_id)

    @staticmethod
    async def senders(conn: AsyncConnection) -> set[str]:
        """Every peer we have received a message from."""
        query = select(messages.c.peer).where(messages.c.direction == "in").distinct()
        return set((await conn.execute(query)).scalars())

    @staticmethod
    async def seen_many(conn: AsyncConnection, message_ids: Sequence[str]) -> dict[str, Seen]:
        """:meth:`seen` for several ids in one query (every incoming envelope asks, and gateway.coalesce gathers
        concurrent ones: three columns, not the envelope, and on PostgreSQL straight through asyncpg)."""
        ids = list(message_ids)
        lite = await sqlite_fast.driver(conn, read=True) if len(ids) <= sqlite_fast.IN_MAX else None
        rows: Sequence[Mapping[str, Any]]
        if lite is not None:  # SQLite: its own text, past SQLAlchemy
            sql = _SEEN_SQLITE + sqlite_fast.in_list(len(ids))
            rows = await sqlite_fast.typed_rows(lite, conn.dialect, sql, ids, _SEEN_COLUMNS)
        else:
            rows = await fast.fetch_rows(conn, _SEEN_SQL, (ids,), _SEEN, {"b_ids": ids}, read=True)
        return {row["id"]: Seen(row["direction"], row["envelope_sha256"], row["receipt"]) for row in rows}

    @staticmethod
    async def get(conn: AsyncConnection, message_id: str) -> MessageRow:
        found = await Messages.find(conn, message_id)
        if found is None:
            raise NotFound(f"no message {message_id}")
        return found

    @staticmethod
    async def in_box(conn: AsyncConnection, direction: str, *, limit: int = 100, offset: int = 0) -> list[MessageRow]:
        query = (
            select(messages)
            .where(messages.c.direction == direction)
            .order_by(messages.c.created_at.desc(), messages.c.id)
            .limit(limit)
            .offset(offset)
        )
        return [MessageRow.from_row(row) for row in await conn.execute(query)]

    @staticmethod
    async def scan_box(
        conn: AsyncConnection, direction: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[MessageRow]:
        """A page of :meth:`in_box`'s order after ``(created_at, id)``, without the envelopes (a listing that
        filters may read many pages; keyset pages never show a row twice when new ones arrive meanwhile)."""
        query = select(*METADATA).where(messages.c.direction == direction)
        if after is not None:
            created, message_id = after
            query = query.where(
                or_(
                    messages.c.created_at < created,
                    and_(messages.c.created_at == created, messages.c.id > message_id),
                )
            )
        query = query.order_by(messages.c.created_at.desc(), messages.c.id).limit(limit)
        return [MessageRow.from_row(row) for row in await conn.execute(query)]

    @staticmethod
    async def replies(conn: AsyncConnection, message_id: str) -> list[MessageRow]:
        query = select(messages).where(messages.c.in_reply_to == message_id).order_by(messages.c.created_at)
        return [MessageRow.from_row(row) for row in await conn.execute(query)]

    @staticmethod
    async def unanswered_status_queries(
        conn: AsyncConnection, since: datetime, until: datetime
    ) -> list[tuple[str, str, str]]:
        """Status queries received from ``since`` to ``until`` about a case the peer opened with us (we are the
        requested side, so the answer is ours to make) that no message of ours answers yet: (query id, case id,
        peer). A query that names no case of ours opened a case of its own and is not one of them."""
        query, opening, answer = messages.alias("query"), messages.alias("opening"), messages.alias("answer")
        found = select(query.c.id, query.c.case_id, query.c.peer).where(
            query.c.kind == "status_query",
            query.c.direction == "in",
            query.c.created_at >= since,
            query.c.created_at <= until,
            query.c.case_id != query.c.id,
            exists().where(opening.c.id == query.c.case_id, opening.c.direction == "in"),
            ~exists().where(answer.c.in_reply_to == query.c.id, answer.c.direction == "out"),
        )
        return [(row.id, row.case_id, row.peer) for row in await conn.execute(found.order_by(query.c.created_at))]

    @staticmethod
    async def delivered(conn: AsyncConnection, message_id: str, received_at: datetime, receipt: str) -> None:
        """The peer's signed receipt arrived: the message is delivered (every envelope: the hot path)."""
        await fast.execute(
            conn,
            f"UPDATE messages SET state = {DELIVERED_STATE}, received_at = $1, receipt = $2 WHERE id = $3",  # noqa: S608
            (received_at, receipt, message_id),
            _DELIVERED,
            {"b_id": message_id, "received_at": received_at, "receipt": receipt},
        )

    @staticmethod
    async def update(conn: AsyncConnection, message_id: str, **values: Any) -> None:
        await conn.execute(_UPDATE, {"b_id": message_id, **values})

    @staticmethod
    async def for_delivery(conn: AsyncConnection, message_id: str) -> tuple[bytes, str, list[AttachmentRow]]:
        """What the outbox sends, in one query: the envelope bytes, their digest and the attachment files."""
        query = (
            select(
                messages.c.sealed,
                messages.c.envelope_sha256,
                attachments.c.position,
                attachments.c.ct_size,
                attachments.c.ct_sha256,
                attachments.c.path,
            )
            .select_from(messages.outerjoin(attachments, attachments.c.message_id == messages.c.id))
            .where(messages.c.id == message_id)
            .order_by(attachments.c.position)
        )
        rows = (await conn.execute(query)).all()
        if not rows:
            raise NotFound(f"no message {message_id}")
        files = [AttachmentRow(r.position, r.ct_size, r.ct_sha256, r.path) for r in rows if r.position is not None]
        return bytes(rows[0].sealed), rows[0].envelope_sha256, files

    @staticmethod
    async def find_many(conn: AsyncConnection, message_ids: Iterable[str]) -> list[MessageRow]:
        """The messages of ``message_ids`` that exist, without their envelopes."""
        query = select(*METADATA).where(messages.c.id.in_(sorted(set(message_ids))))
        return [MessageRow.from_row(row) for row in await conn.execute(query)]

    @staticmethod
    async def attachment_files(conn: AsyncConnection, direction: str, message_ids: Iterable[str]) -> set[str]:
        """The file names that the attachments of the ``direction`` messages among ``message_ids`` are stored under
        (an id that names no message names no file)."""
        query = (
            select(attachments.c.path)
            .select_from(attachments.join(messages, messages.c.id == attachments.c.message_id))
            .where(attachments.c.message_id.in_(list(message_ids)), messages.c.direction == direction)
        )
        return set((await conn.execute(query)).scalars())

    @staticmethod
    async def attachments(conn: AsyncConnection, message_id: str) -> list[AttachmentRow]:
        query = select(attachments).where(attachments.c.message_id == message_id).order_by(attachments.c.position)
        return [AttachmentRow(r.position, r.ct_size, r.ct_sha256, r.path) for r in await conn.execute(query)]
