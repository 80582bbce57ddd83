"""Case work: next action, flags, critical dates and tasks, oral urgent requests (art. 46(14)), and the lists of overdue
and upcoming items (docs/requests.md, "Case work").

Who may act: what case events need (gateway/policy.py ``refuse_case_access``): an officer or supervisor cleared for
the marking the case is held under (its opening message's, or its oral request's) and assigned to the case or
supervising its unit. A refusal changes nothing. A change refused because the caller may not act on the case (by
scope, clearance or assignment) is ledgered as ``case.refused`` by the API's middleware (decision 148), a read of the
work as ``message.open_refused``; one refused for what it asks for is not ledgered. Every change is one group commit
with its ledger events, which carry kinds, dates and ids only: notes and next actions stay in the case tables
(store/casework.py) and are never logged.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, timedelta
from typing import Any

from gateway.committer import Finish, Tx, done
from gateway.context import Gateway
from gateway.policy import AccessRefused, check_case_access, ledger_refusal, refuse_case_access
from protocol.casework import (
    DateKind,
    Due,
    InvalidWorkDate,
    confirm_in_writing_due,
    overdue,
    parse_date_kind,
    parse_day,
    parse_flag,
    parse_note,
    safe_conduct_end,
    upcoming,
)
from protocol.errors import InvalidMessage
from protocol.events import EventType
from protocol.lifecycle import State
from protocol.messages import Marking, MessageKind, validate_authority_id, validate_message_id
from protocol.timefmt import format_time
from store.accounts import CONTENT_OPEN
from store.cases import Case, Cases
from store.casework import CaseDate, CaseWork
from store.errors import Conflict, NotFound
from store.messages import Messages
from store.users import User

__all__ = [
    "add_date",
    "case_work",
    "complete_date",
    "due_list",
    "record_oral_request",
    "set_flag",
    "set_next_action",
]

DOING = "acting on"


def _actor(user: User) -> str:
    return f"user:{user.username}"


def _members(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise InvalidMessage(f"unknown member(s): {', '.join(sorted(unknown))}")


def date_json(item: CaseDate, today: date) -> dict[str, Any]:
    state = "done" if item.done_at is not None else ("overdue" if item.due < today else "open")
    return {
        "id": item.id,
        "case_id": item.case_id,
        "kind": item.kind.value,
        "due": item.due.isoformat(),
        "state": state,
        "note": item.note,
        "created_by": item.created_by,
        "created_at": format_time(item.created_at),
        "done_by": item.done_by,
        "done_at": None if item.done_at is None else format_time(item.done_at),
    }


async def work_access(gw: Gateway, user: User, case_id: str) -> tuple[Case, Marking]:
    """The case and its marking, or a refusal (``forbidden``, ``not-found``)."""
    async with gw.reader.connect() as conn:
        facts = await CaseWork.access_facts(conn, [case_id])
        if case_id not in facts:
            await Cases.get(conn, case_id)
            raise NotFound(f"case {case_id} has no opening message or oral request to work on")
    case, marking = facts[case_id]
    refuse_case_access(gw, user, marking, case, DOING, unseen=f"no case {case_id}")
    return case, marking


# --- reading ----------------------------------------------------------------------------------------------------


async def case_work(gw: Gateway, user: User, case_id: str) -> dict[str, Any]:
    try:
        case, marking = await work_access(gw, user, case_id)
    except AccessRefused as refused:  # notes are read like content: a refused read is evidence, as an opening's is
        await ledger_refusal(gw, EventType.OPEN_REFUSED, f"user:{user.username}", refused, message_id=case_id)
        raise
    async with gw.reader.connect() as conn:
        action = await CaseWork.next_action(conn, case_id)
        flags = await CaseWork.flags(conn, case_id)
        dates = await CaseWork.dates(conn, case_id)
        oral = await CaseWork.oral(conn, case_id)
        assignees = await Cases.assignee_names(conn, case_id)
    today = gw.today()
    return {
        "case_id": case_id,
        "unit": case.unit,
        "state": case.state,
        "marking": marking.to_json(),
        "assignees": assignees,
        "next_action": None
        if action is None or action.text is None
        else {"text": action.text, "updated_by": action.updated_by, "updated_at": format_time(action.updated_at)},
        "flags": [{"flag": f.flag, "set_by": f.set_by, "set_at": format_time(f.set_at)} for f in flags],
        "dates": [date_json(item, today) for item in dates],
        "oral_request": None
        if oral is None
        else {
            "peer": oral.peer,
            "direction": "received" if oral.direction == "in" else "made",
            "on": oral.oral_on.isoformat(),
            "task_id": oral.task_id,
            "confirmed_by": oral.confirmed_by,
        },
    }


PAGE = 2_000  # open items read at a time by the due lists


def _may_act(gw: Gateway, user: User, case: Any, marking: Marking) -> bool:
    try:
        refuse_case_access(gw, user, marking, case, DOING)
    except AccessRefused:  # a case this user may not act on is simply not listed
        return False
    return True


DUE_LIST_LIMIT = 500  # items per page of a due list, unless the caller asks for fewer (at most MAX_DUE_LIST_LIMIT)
MAX_DUE_LIST_LIMIT = 1000
MAX_ITEM_ID = 2**31 - 1  # case_dates.id is a 32-bit integer on PostgreSQL: a larger one must not reach a query


async def due_list(
    gw: Gateway, user: User, *, days: int | None, limit: int = DUE_LIST_LIMIT, after: tuple[date, int] | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the open items of the cases ``user`` may act on: overdue (``days`` None), or due within ``days``
    from today; soonest first, by due date then id. ``after`` is where the previous page ended (its ``next``); the
    second value is this page's ``next``, or None when nothing follows."""
    today = gw.today()
    first, last = (None, today - timedelta(days=1)) if days is None else (today, today + timedelta(days=days))
    by_id: dict[int, CaseDate] = {}
    async with gw.reader.connect() as conn:
        # page by page through the open items of the period, so that the caller's are all listed however many
        # other cases' items come first (access is decided per case, by the rule of case events), until one more
        # than the page holds is found
        while len(by_id) <= limit:
            page = await CaseWork.open_between(conn, first, last, limit=PAGE, after=after)
            facts = await CaseWork.access_facts(conn, {item.case_id for item in page})
            allowed = {case_id for case_id, (case, marking) in facts.items() if _may_act(gw, user, case, marking)}
            by_id.update((item.id, item) for item in page if item.case_id in allowed)
            if len(page) < PAGE:
                break
            after = (page[-1].due, page[-1].id)
    due = [Due(item.id, item.case_id, item.kind, item.due) for item in by_id.values()]
    chosen = overdue(due, today) if days is None else upcoming(due, today, days)
    shown = chosen[:limit]
    following = f"{shown[-1].due.isoformat()}:{shown[-1].id}" if len(chosen) > limit else None
    return [date_json(by_id[item.id], today) for item in shown], following


def due_cursor(raw: str | None) -> tuple[date, int] | None:
    """A due list's ``after``: the ``next`` of the page before, ``YYYY-MM-DD:<item id>``."""
    if raw is None:
        return None
    day, _, item = raw.partition(":")
    if not re.fullmatch(r"[0-9]{1,10}", item) or int(item) > MAX_ITEM_ID:
        raise InvalidMessage("after must be the 'next' of the page before: YYYY-MM-DD:<item id>")
    return parse_day(day, "after"), int(item)


# --- changes ----------------------------------------------------------------------------------------------------


async def set_next_action(gw: Gateway, user: User, case_id: str, body: dict[str, Any]) -> dict[str, Any]:
    _members(body, {"text"})
    text = parse_note(body.get("text"), "text")
    await work_access(gw, user, case_id)

    async def unit(tx: Tx) -> Finish[None]:
        await CaseWork.set_next_action(tx.conn, case_id, text, user.username, tx.clock())
        tx.record(EventType.CASE_NEXT_ACTION, _actor(user), message_id=case_id, state="set" if text else "cleared")
        return await done(None)

    await gw.commit(unit)
    return {"case_id": case_id, "next_action": text}


async def set_flag(gw: Gateway, user: User, case_id: str, flag_name: object, *, on: bool) -> dict[str, Any]:
    flag = parse_flag(flag_name)
    await work_access(gw, user, case_id)

    async def unit(tx: Tx) -> Finish[bool]:
        if on:
            changed = await CaseWork.set_flag(tx.conn, case_id, flag.value, user.username, tx.clock())
        else:
            changed = await CaseWork.clear_flag(tx.conn, case_id, flag.value)
        if changed:
            state = "set" if on else "cleared"
            tx.record(EventType.CASE_FLAG, _actor(user), message_id=case_id, reason=flag.value, state=state)
        return await done(changed)

    changed = await gw.commit(unit)
    return {"case_id": case_id, "flag": flag.value, "set": on, "changed": changed}


def _record_date(tx: Tx, user: User, case_id: str, kind: DateKind, due: date, item_id: int, state: str) -> None:
    tx.record(
        EventType.CASE_DATE,
        _actor(user),
        message_id=case_id,
        reason=kind.value,
        subject=f"due:{due.isoformat()}",
        related_id=f"date:{item_id}",
        state=state,
    )


def _due_of(kind: DateKind, body: dict[str, Any]) -> date:
    if kind is DateKind.SAFE_CONDUCT_ENDS and "informed_on" in body:
        if "due" in body:
            raise InvalidMessage("send either 'due' or 'informed_on' (art. 46(27): the end is computed), not both")
        agreed = body.get("agreed_days")
        if agreed is not None and (not isinstance(agreed, int) or isinstance(agreed, bool)):
            raise InvalidWorkDate("'agreed_days' must be a whole number of days")
        return safe_conduct_end(parse_day(body["informed_on"], "informed_on"), agreed)
    if "informed_on" in body or "agreed_days" in body:
        raise InvalidMessage("'informed_on' and 'agreed_days' are for a safe-conduct-ends date only")
    return parse_day(body.get("due"))


async def add_date(gw: Gateway, user: User, case_id: str, body: dict[str, Any]) -> dict[str, Any]:
    _members(body, {"kind", "due", "informed_on", "agreed_days", "note"})
    kind = parse_date_kind(body.get("kind"))
    due = _due_of(kind, body)
    note = parse_note(body.get("note"))
    await work_access(gw, user, case_id)

    async def unit(tx: Tx) -> Finish[dict[str, Any]]:
        # read in the transaction, so that a case closed meanwhile is seen (decision 105)
        if (await Cases.get(tx.conn, case_id)).state == State.CLOSED.value:
            raise Conflict(f"case {case_id} is closed: it takes no new dates or tasks")
        now = tx.clock()
        item_id = await CaseWork.add_date(tx.conn, case_id, kind, due, note, user.username, now)
        _record_date(tx, user, case_id, kind, due, item_id, "added")
        item = CaseDate(item_id, case_id, kind, due, note, user.username, now)
        return await done(date_json(item, gw.today(now)))

    return await gw.commit(unit)


async def complete_date(gw: Gateway, user: User, case_id: str, item_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """Mark an item done; a confirm-in-writing task may name the written request (``message_id``), which links it
    to the oral request."""
    _members(body, {"message_id"})
    written = body.get("message_id")
    if written is not None and not isinstance(written, str):
        raise InvalidMessage("'message_id' must be the id of the written request")
    if written is not None:
        validate_message_id(written)  # before any error could repeat what was sent
    await work_access(gw, user, case_id)
    async with gw.reader.connect() as conn:
        item = await CaseWork.find_date(conn, item_id)
        if item is None or item.case_id != case_id:
            raise NotFound(f"case {case_id} has no date or task {item_id}")
        oral = await CaseWork.oral(conn, case_id) if written is not None else None
        if written is not None:
            if oral is None or oral.task_id != item_id:
                raise InvalidMessage("only the confirm-in-writing task of an oral request is linked to a request")
            row = await Messages.get(conn, written)
            await check_case_access(gw, user, row, conn, "linking")  # first: the rest describes the message
            direction = oral.direction
            if row.kind != MessageKind.REQUEST.value or row.peer != oral.peer or row.direction != direction:
                way = "from" if direction == "in" else "to"
                raise InvalidMessage(f"the written confirmation is a request {way} {oral.peer}")

    async def unit(tx: Tx) -> Finish[dict[str, Any]]:
        now = tx.clock()
        if not await CaseWork.complete(tx.conn, item_id, user.username, now):
            raise Conflict(f"date or task {item_id} is already done")
        _record_date(tx, user, case_id, item.kind, item.due, item_id, "done")
        if written is not None:
            if not await CaseWork.confirm_oral(tx.conn, case_id, written):
                raise Conflict(f"the oral request of case {case_id} is already confirmed")
            tx.record(
                EventType.CASE_ORAL_REQUEST, _actor(user), message_id=case_id, state="confirmed", related_id=written
            )
        finished = CaseDate(
            item_id, case_id, item.kind, item.due, item.note, item.created_by, item.created_at, now, user.username
        )
        shown = date_json(finished, gw.today(now))
        if CONTENT_OPEN not in user.scopes:  # notes are read like content (decision 165): not through a change
            shown["note"] = None
        return await done({**shown, "written_request": written})

    return await gw.commit(unit)


async def record_oral_request(gw: Gateway, user: User, body: dict[str, Any]) -> dict[str, Any]:
    """An urgent request made or received orally (art. 46(14)) opens a case of the officer's unit, assigned to the
    officer, with a confirm-in-writing task due ``confirm_in_writing_days`` after it."""
    _members(body, {"peer", "direction", "on", "marking", "note"})
    peer = body.get("peer")
    if not isinstance(peer, str):
        raise InvalidMessage("'peer' must be the authority id of the counterpart")
    gw.directory.authority(validate_authority_id(peer))
    if peer == gw.authority_id:
        raise InvalidMessage("'peer' must be a counterpart, not this authority")
    direction = {"received": "in", "made": "out"}.get(str(body.get("direction")))
    if direction is None:
        raise InvalidMessage("'direction' must be 'received' (from the peer) or 'made' (to it)")
    today = gw.today()
    oral_on = parse_day(body["on"], "on") if "on" in body else today
    if oral_on > today:
        raise InvalidWorkDate("'on' is the day the oral request was made: it cannot be in the future")
    marking = Marking.parse(body.get("marking", {"level": "CONFIDENTIAL", "caveats": []}))
    gw.scheme.admit(marking)  # a level or caveat the scheme does not know, an embargo without a date: marking-refused
    note = parse_note(body.get("note"))
    case_id = str(uuid.uuid4())
    # the officer becomes the assignee: only clearance and role remain to check
    refuse_case_access(gw, user, marking, Case(case_id, user.unit, frozenset({user.id})), DOING)
    due = confirm_in_writing_due(oral_on, gw.settings.confirm_in_writing_days)
    kind = DateKind.CONFIRM_IN_WRITING

    async def unit(tx: Tx) -> Finish[dict[str, Any]]:
        now = tx.clock()
        await Cases.open(tx.conn, case_id, user.unit, user.id, user.username, now)
        task = await CaseWork.add_date(tx.conn, case_id, kind, due, note, user.username, now)
        await CaseWork.record_oral(
            tx.conn, case_id, peer=peer, direction=direction, oral_on=oral_on, marking=marking, task_id=task
        )
        parties: dict[str, Any] = {"from": peer} if direction == "in" else {"to": peer}
        state = "received" if direction == "in" else "made"
        subject = f"due:{due.isoformat()}"
        tx.record(
            EventType.CASE_ORAL_REQUEST, _actor(user), message_id=case_id, state=state, subject=subject, **parties
        )
        tx.record(EventType.CASE_ASSIGNED, _actor(user), message_id=case_id, subject=f"user:{user.username}")
        _record_date(tx, user, case_id, kind, due, task, "added")
        return await done(
            {"case_id": case_id, "task": date_json(CaseDate(task, case_id, kind, due, note, user.username, now), today)}
        )

    return await gw.commit(unit)
