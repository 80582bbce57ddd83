"""Informal consultations in the gateway (docs/requests.md, "Consultations").

A thread is a case of its own: its id is the id of its first message, which opens the case like any message that
answers nothing (assigned to the officer who starts it; on the receiving side, for a supervisor to assign, or joined
to the unit and officers of the case it is about). Replies join it through ``in_reply_to``, so reading and answering
need what every case needs (gateway/policy.py): clearance for the marking and its caveats, and an assignment to the
thread or supervision of its unit. What is particular to a thread is checked here, on both sides, before anything is
sealed or stored, and applied in the same group commit as the message (:meth:`Link.apply`):

* a consultation names its thread and is informal (protocol/consultations.py); a reply stays in its thread, with the
  same peer and about the same case; a thread about a case names a case shared with that peer;
* a draft request shared for review is checked against the checklist (the recipient's requirements on sending, ours
  on receiving) and only the element ids of the result are kept;
* a formal request naming a thread (``request.consultation_id``) converts it, once: the thread must be ours with
  that peer and open, the request at least as protected as the thread's first message, and the converting officer
  allowed to act on the thread; both sides mark their copy converted and ledger ``consultation.converted`` (if both
  sides convert at once, each keeps its own conversion and still accepts the other's request);
* art. 46(26): a refusal or postponement counts a thread with the counterpart about the case as the consultation on
  record (:func:`consultation_on_record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.committer import Tx
from gateway.context import Gateway
from gateway.policy import AccessRefused, check_case_access, refuse_case_access
from protocol.checklist import check_request
from protocol.consultations import DraftCheck, consultation_of, linked_consultation
from protocol.errors import ComityError, InvalidMessage
from protocol.events import EventType
from protocol.markings import EMBARGO_CAVEAT, MarkingRefused, caveat_name
from protocol.messages import Marking, MessageKind, MessagePayload, is_message_id, validate_message_id
from store.cases import Case, Cases
from store.casework import CaseWork
from store.consultations import Consultations, DraftChecks, Thread
from store.messages import MessageRow, Messages
from store.tables import case_assignments, cases
from store.users import User

__all__ = [
    "ConsultationConverted",
    "ConsultationNotOnRecord",
    "Link",
    "case_floor",
    "consultation_on_record",
    "default_about",
    "incoming_link",
    "outgoing_link",
]


class ConsultationConverted(ComityError):
    code = "consultation-converted"


class ConsultationNotOnRecord(ComityError):
    code = "consultation-required"


@dataclass(frozen=True)
class Link:
    """What a message changes in a thread, decided before it is sealed or stored, applied in its commit."""

    thread_id: str
    peer: str
    direction: str  # "out" | "in": which side sends the message
    new_thread: bool = False
    about: str | None = None
    converting: bool = False  # a formal request that comes out of the thread
    draft: DraftCheck | None = None
    created_by: int | None = None
    adopt: Case | None = None  # an incoming thread about a case joins that case's unit and officers

    async def apply(self, tx: Tx, message_id: str, actor: str) -> None:
        now = tx.clock()
        if self.converting:
            if not await Consultations.convert(tx.conn, self.thread_id, message_id, now):
                if self.direction == "in":
                    return  # both sides converted at once: the first conversion stands, the request is accepted
                raise ConsultationConverted(f"consultation {self.thread_id} was already converted")
            tx.record(EventType.CONSULTATION_CONVERTED, actor, message_id=self.thread_id, related_id=message_id)
            return
        if self.new_thread:
            await Consultations.create(
                tx.conn,
                self.thread_id,
                peer=self.peer,
                direction=self.direction,
                about_case_id=self.about,
                created_by=self.created_by,
                now=now,
            )
            if self.adopt is not None:
                await _adopt(tx, self.thread_id, self.adopt)
        else:
            await Consultations.touch(tx.conn, self.thread_id, now)
        if self.draft is not None:
            await DraftChecks.record(
                tx.conn, message_id, self.thread_id, self.draft.request_type, self.draft.blocking, self.draft.warnings
            )


async def _adopt(tx: Tx, thread_id: str, about: Case) -> None:
    """The thread's new case takes the unit and the officers of the case it is about (ledgered as the system's)."""
    await tx.conn.execute(cases.update().where(cases.c.id == thread_id).values(unit=about.unit))
    if about.assignees:
        await tx.conn.execute(
            case_assignments.insert(),
            [
                {"case_id": thread_id, "user_id": user_id, "assigned_by": "system", "assigned_at": tx.clock()}
                for user_id in sorted(about.assignees)
            ],
        )
    tx.record(EventType.CASE_ASSIGNED, "system", message_id=thread_id, related_id=about.id)


def case_floor(case_marking: Marking) -> Marking:
    """What a thread about a case carries at least (decision 145): the case's level and caveats, its embargo aside (a
    consultation under it would be closed to the very authority that set the embargo)."""
    caveats = [caveat for caveat in case_marking.caveats if caveat_name(caveat) != EMBARGO_CAVEAT]
    return Marking(level=case_marking.level, caveats=caveats)


async def default_about(gw: Gateway, user: User, about: Any, to: str, default: Marking) -> Marking:
    """A new thread's marking when none is given: ``default``, raised to the floor of the case it is ``about`` (if it
    names one), but only for a case shared with ``to`` that ``user`` may act on: anyone else gets the answer a case
    that is not shared gets, and nothing of the case's marking in it."""
    if not is_message_id(about):
        return default
    async with gw.reader.connect() as conn:
        opening = await Messages.find(conn, about)
        if opening is None:
            return default
        try:
            await check_case_access(gw, user, opening, conn, "consulting about")
            await _shared_case(conn, about, to)
        except (AccessRefused, InvalidMessage):
            return default
    return gw.scheme.join(default, case_floor(opening.marking))


def _check_floor(gw: Gateway, marking: Marking, about: str, opening: Marking) -> None:
    floor = case_floor(opening)
    if gw.scheme.lowers(marking, floor):
        raise MarkingRefused(
            f"a consultation about case {about} carries at least the case's marking ({floor.level}, caveats "
            f"{', '.join(floor.caveats) or 'none'})"
        )


async def _shared_case(conn: AsyncConnection, case_id: str, peer: str) -> tuple[Case, MessageRow]:
    """The case ``case_id`` and its opening message, if it was opened by a message exchanged with ``peer`` (either
    direction)."""
    opening = await Messages.find(conn, case_id)
    case = await Cases.find(conn, case_id)
    if opening is None or case is None or opening.case_id != case_id or opening.peer != peer:
        raise InvalidMessage(f"case {case_id} is not a case shared with {peer}")
    if opening.kind == MessageKind.CONSULTATION.value:
        raise InvalidMessage(f"{case_id} is a consultation: reply in it rather than open a thread about it")
    return case, opening


async def _thread_with(conn: AsyncConnection, thread_id: str, peer: str) -> Thread:
    thread = await Consultations.find(conn, thread_id)
    if thread is None or thread.peer != peer:
        raise InvalidMessage(f"consultation {thread_id} is not a thread with {peer}")
    return thread


async def _thread_for(gw: Gateway, user: User, conn: AsyncConnection, thread_id: str, peer: str, doing: str) -> Thread:
    """The thread ``thread_id`` with ``peer``, if ``user`` may act on it; a thread she may not act on gets the very
    answer a thread that does not exist gets (decision 100), before anything else about it is checked."""
    thread = await Consultations.find(conn, thread_id)
    if thread is not None:
        nothing = f"consultation {thread_id} is not a thread with {peer}"
        opening = await Messages.get(conn, thread.id)
        await check_case_access(gw, user, opening, conn, doing, unseen=nothing, unseen_code=InvalidMessage.code)
    return await _thread_with(conn, thread_id, peer)


async def _reply_in_thread(conn: AsyncConnection, thread: Thread, in_reply_to: str, about: str | None) -> None:
    answered = await Messages.find(conn, in_reply_to)
    if answered is None or answered.case_id != thread.id:
        raise InvalidMessage(f"a reply in consultation {thread.id} answers a message of that thread")
    if about != thread.about_case_id:
        raise InvalidMessage(f"consultation {thread.id} is about {thread.about_case_id or 'no case'}")


async def outgoing_link(
    gw: Gateway,
    user: User,
    *,
    message_id: str,
    to: str,
    kind: MessageKind,
    marking: Marking,
    content: dict[str, Any],
    in_reply_to: str | None,
) -> Link | None:
    """Check a message we are about to seal against the thread it belongs to or converts; None: no thread."""
    member = consultation_of(kind, content, message_id, in_reply_to)
    linked = linked_consultation(kind, content)
    if member is None and linked is None:
        return None
    async with gw.reader.connect() as conn:
        if linked is not None:
            thread = await _thread_for(gw, user, conn, linked, to, "converting")
            opening = await Messages.get(conn, thread.id)
            if thread.state != "open":
                raise ConsultationConverted(f"consultation {thread.id} was already converted into a formal request")
            if gw.scheme.lowers(marking, opening.marking):
                raise MarkingRefused(
                    "a request that comes out of a consultation carries at least the consultation's marking "
                    f"({opening.marking.level}, caveats {', '.join(opening.marking.caveats) or 'none'})"
                )
            return Link(thread.id, to, "out", converting=True)
        assert member is not None
        draft = member.draft()
        check = None if draft is None else DraftCheck.of(check_request(draft, gw.peer(to).request_requirements()))
        if in_reply_to is None:
            if member.about is not None:
                about = await Messages.find(conn, member.about)
                if about is not None:  # first: a case she may not act on is answered as one that is not shared
                    nothing = f"case {member.about} is not a case shared with {to}"
                    await check_case_access(
                        gw, user, about, conn, "consulting about", unseen=nothing, unseen_code=InvalidMessage.code
                    )
                _, opening = await _shared_case(conn, member.about, to)
                _check_floor(gw, marking, member.about, opening.marking)  # decision 145
            return Link(message_id, to, "out", new_thread=True, about=member.about, draft=check, created_by=user.id)
        thread = await _thread_for(gw, user, conn, member.thread_id, to, "replying in")
        await _reply_in_thread(conn, thread, in_reply_to, member.about)
        return Link(thread.id, to, "out", draft=check)


def _may_act(gw: Gateway, user: User, case: Case, marking: Marking) -> bool:
    try:
        refuse_case_access(gw, user, marking, case, "citing")
    except AccessRefused:
        return False
    return True


async def incoming_link(gw: Gateway, payload: MessagePayload) -> Link | None:
    """Check a received message against the thread it belongs to or converts (an error refuses the envelope)."""
    member = consultation_of(payload.kind, payload.content, payload.id, payload.in_reply_to)
    linked = linked_consultation(payload.kind, payload.content)
    if member is None and linked is None:
        return None  # the common case costs no query
    peer = payload.from_
    async with gw.reader.connect() as conn:
        if linked is not None:
            thread = await _thread_with(conn, linked, peer)
            # a thread both sides converted at once keeps its first conversion; the formal request is not lost
            return Link(thread.id, peer, "in", converting=True) if thread.state == "open" else None
        assert member is not None
        draft = member.draft()
        requirements = gw.directory.authority(gw.authority_id).request_requirements()
        check = None if draft is None else DraftCheck.of(check_request(draft, requirements))
        if payload.in_reply_to is None:
            adopt = None
            if member.about is not None:  # the floor too: a peer may skip it, or predate it
                adopt, opening = await _shared_case(conn, member.about, peer)
                _check_floor(gw, payload.marking, member.about, opening.marking)
            return Link(payload.id, peer, "in", new_thread=True, about=member.about, draft=check, adopt=adopt)
        thread = await _thread_with(conn, member.thread_id, peer)
        await _reply_in_thread(conn, thread, payload.in_reply_to, member.about)
        return Link(thread.id, peer, "in", draft=check)


async def consultation_on_record(gw: Gateway, user: User, case_id: str, peer: str, given: str | None) -> str | None:
    """The consultation with ``peer`` on record for a case (art. 46(26), 44(17)): a thread about the case, or the
    thread its request came from, that ``user`` may act on (its id goes into a status report she can open). A
    ``given`` id must be one of them; without one, the latest such thread counts."""
    if given is not None:
        validate_message_id(given)  # before it is repeated in a refusal
    async with gw.reader.connect() as conn:
        threads = await Consultations.about_case(conn, case_id, peer)
        facts = await CaseWork.access_facts(conn, [thread.id for thread in threads])
        threads = [thread for thread in threads if thread.id in facts and _may_act(gw, user, *facts[thread.id])]
        # a consultation on record is one the counterpart holds too (decision 45): a message of the thread it sent
        # us, or one of ours it receipted; a thread still in our outbox, or refused, is not (decision 145)
        held = []
        for thread in threads:
            rows = await Consultations.thread_messages(conn, thread.id)
            if any(row.direction == "in" or row.received_at is not None for row in rows):
                held.append(thread)
        threads = held
    if given is None:
        return threads[0].id if threads else None
    if given not in {thread.id for thread in threads}:
        raise ConsultationNotOnRecord(
            f"consultation {given} is not a thread with {peer} about case {case_id}; consult in a thread about "
            "the case (POST /v1/consultations with 'about') first"
        )
    return given
