"""Opening stored messages for an authorised user: decrypted in memory only, every opening ledgered."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select

from crypto.attachments import AttachmentDecryptor
from crypto.envelope import OpenedEnvelope, open_envelope
from gateway.committer import Finish, Tx, done
from gateway.context import Gateway
from gateway.files import FileStoreFailed, read_chunks, readable
from gateway.policy import check_opening, ledger_refusal, refuse_case_access
from protocol.errors import ComityError, InvalidMessage
from protocol.events import EventType
from protocol.messages import AttachmentRef
from store.casework import CaseWork
from store.errors import NotFound
from store.messages import MessageRow, Messages
from store.tables import ledger_entries
from store.users import User

__all__ = [
    "Forbidden",
    "attachment_stream",
    "decrypt_row",
    "message_events",
    "open_message",
    "visible_box",
    "visible_message",
]


class Forbidden(ComityError):
    code = "forbidden"


@dataclass(frozen=True)
class Opened:
    row: MessageRow
    envelope: OpenedEnvelope


def decrypt_row(gw: Gateway, row: MessageRow) -> OpenedEnvelope:
    """Decrypt and re-verify a stored envelope in memory (the sender opens its archive copy)."""
    if row.direction == "out":
        assert row.archive is not None
        own = gw.directory.authority(gw.authority_id).all_signing_keys() | gw.own_signing_keys()
        return open_envelope(
            row.archive, recipient_keys=gw.archive_keys(), sender_keys=own, expected_recipient=row.peer, stored=True
        )
    return open_envelope(
        row.sealed,
        recipient_keys=gw.recipient_keys(),
        sender_keys=gw.stored_sender_keys(row.peer),
        expected_recipient=gw.authority_id,
        max_bytes=max(len(row.sealed), gw.settings.max_envelope_bytes),
        stored=True,
    )


async def open_message(gw: Gateway, user: User, message_id: str, purpose: str) -> Opened:
    """Check the user may see the content now (gateway/policy.py), decrypt it, and ledger the opening."""
    opened = await _checked_open(gw, user, message_id, purpose)
    await _ledger_opening(gw, user, message_id, purpose)
    return opened


async def _checked_open(gw: Gateway, user: User, message_id: str, purpose: str) -> Opened:
    """Check the user may see the content now (a refusal is ledgered) and decrypt it; the opening itself is
    ledgered by the caller once what was asked for is known to be there."""
    actor = f"user:{user.username}"
    if not re.fullmatch(r"[a-z0-9-]{1,64}", purpose):
        raise InvalidMessage("purpose must be a short lowercase word, e.g. 'review' or 'execution'")
    async with gw.reader.connect() as conn:
        row = await Messages.get(conn, message_id)
        try:
            await check_opening(gw, user, row, conn)
        except ComityError as error:
            await ledger_refusal(gw, EventType.OPEN_REFUSED, actor, error, message_id=message_id, purpose=purpose)
            raise
    return Opened(row, decrypt_row(gw, row))


async def _ledger_opening(gw: Gateway, user: User, message_id: str, purpose: str) -> None:
    async def unit(tx: Tx) -> Finish[None]:
        tx.record(EventType.OPENED, f"user:{user.username}", message_id=message_id, purpose=purpose)
        return await done(None)

    await gw.commit(unit)


async def attachment_stream(
    gw: Gateway, user: User, message_id: str, position: int
) -> tuple[AttachmentRef, AsyncIterator[bytes]]:
    """Decrypt one attachment as it streams from disk; each chunk is authenticated before it is returned. The
    opening is ledgered once the attachment is known to exist: asking for one that does not opens nothing."""
    opened = await _checked_open(gw, user, message_id, "attachment")
    refs = opened.envelope.payload.attachments
    if not 0 <= position < len(refs):
        raise NotFound(f"message {message_id} has no attachment {position}")
    ref = refs[position]
    async with gw.reader.connect() as conn:
        rows = {row.position: row for row in await Messages.attachments(conn, message_id)}
    if position not in rows:
        raise NotFound(f"message {message_id} has no stored attachment {position}")
    path = gw.settings.attachments_path / opened.row.direction / rows[position].path
    readable(path)  # a file that is missing or unreadable is answered 503, and opens nothing
    await _ledger_opening(gw, user, message_id, "attachment")

    async def plaintext() -> AsyncIterator[bytes]:
        # each chunk is authenticated before it is returned, but size and both digests only at finish(): the last
        # chunk is held back until then, so an attachment that is not what the signed manifest says is never served
        # whole (the download is cut short instead)
        decryptor, held = AttachmentDecryptor(ref), b""
        try:
            async for chunk in read_chunks(path):
                if data := decryptor.push(chunk):
                    if held:
                        yield held
                    held = data
        except OSError as error:  # the disk failed under the download: cut short, as a failed chunk is
            raise FileStoreFailed(error, "reading") from error
        decryptor.finish()
        if held:
            yield held

    return ref, plaintext()


async def message_events(gw: Gateway, user: User, message_id: str) -> list[dict[str, Any]]:
    """Ledger entries about ``message_id`` and about the messages that answer it (exchanged with the same peer),
    as ``user`` may know them: an answer she may not see, and every entry that names one, are left out (decision
    94), as they are from her listings."""
    async with gw.reader.connect() as conn:
        row = await Messages.get(conn, message_id)
        replies = [reply for reply in await Messages.replies(conn, message_id) if reply.peer == row.peer]
        related = [reply.id for reply in await _visible(gw, user, conn, replies)]
        query = (
            select(ledger_entries.c.idx, ledger_entries.c.entry)
            .where(ledger_entries.c.message_id.in_([message_id, *related]))
            .order_by(ledger_entries.c.idx)
        )
        entries = [{"index": found.idx, **json.loads(found.entry)} for found in (await conn.execute(query)).all()]
        named = {str(entry["related_id"]) for entry in entries if entry.get("related_id")} - {message_id, *related}
        others = await Messages.find_many(conn, named)  # ids of messages only; a date's "date:<n>" finds nothing
        hidden = {other.id for other in others} - {other.id for other in await _visible(gw, user, conn, others)}
    return [entry for entry in entries if entry.get("related_id") not in hidden]


# --- metadata: who may know that a message exists ------------------------------------------------------------------

T = TypeVar("T")
LIST_PAGE = 500  # rows read at a time while a listing collects the ones its caller may see


def _sees_all(user: User) -> bool:
    """Auditors and administrators see every message's metadata, as they see the ledger; never content."""
    return user.role in ("auditor", "admin") or user.id == 0


async def _visible(gw: Gateway, user: User, conn: Any, rows: list[MessageRow]) -> list[MessageRow]:
    """Of ``rows``, those whose existence ``user`` may know: what acting on them needs (decision 94), clearance for
    the message's marking and caveats, and assignment to its case or supervision of the case's unit."""
    if _sees_all(user):
        return rows
    facts = await CaseWork.access_facts(conn, {row.case_id for row in rows if row.case_id})
    shown = []
    for row in rows:
        case = facts[row.case_id][0] if row.case_id in facts else None
        try:
            refuse_case_access(gw, user, row.marking, case, "listing")
        except ComityError:
            continue
        shown.append(row)
    return shown


async def visible_ids(gw: Gateway, user: User, message_ids: Iterable[str]) -> set[str]:
    """Of ``message_ids``, those of messages ``user`` may know exist (:func:`_visible`)."""
    async with gw.reader.connect() as conn:
        return {row.id for row in await _visible(gw, user, conn, await Messages.find_many(conn, message_ids))}


async def visible_box(gw: Gateway, user: User, direction: str, *, limit: int, offset: int) -> list[MessageRow]:
    """A page of the inbox or outbox as ``user`` may see it: ``offset`` and ``limit`` count visible messages."""
    async with gw.reader.connect() as conn:
        if _sees_all(user):
            return await Messages.in_box(conn, direction, limit=limit, offset=offset)

        async def pages() -> AsyncGenerator[list[MessageRow], None]:
            after = None
            while True:
                page = await Messages.scan_box(conn, direction, after=after, limit=LIST_PAGE)
                yield await _visible(gw, user, conn, page)
                if len(page) < LIST_PAGE:
                    return
                after = (page[-1].created_at, page[-1].id)

        return await window(pages(), offset=offset, limit=limit)


async def window(pages: AsyncGenerator[list[T], None], *, offset: int, limit: int) -> list[T]:
    """Rows ``offset`` to ``offset + limit`` of what ``pages`` yields (each page already filtered to what the caller
    may see), reading no more pages than that needs."""
    shown: list[T] = []
    skipped = 0
    async with contextlib.aclosing(pages):
        async for page in pages:
            for row in page:
                if skipped < offset:
                    skipped += 1
                elif len(shown) < limit:
                    shown.append(row)
            if len(shown) >= limit:
                break
    return shown


async def visible_message(gw: Gateway, user: User, message_id: str) -> MessageRow:
    """The message, if ``user`` may know it exists; else ``not-found``, as for one that does not (a 403 would
    tell that it does)."""
    async with gw.reader.connect() as conn:
        row = await Messages.get(conn, message_id)
        if not await _visible(gw, user, conn, [row]):
            raise NotFound(f"no message {message_id}")
    return row
