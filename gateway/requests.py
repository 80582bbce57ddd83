"""Requests complete the first time and tracked to the end (docs/requests.md).

* sending: a formal request (``content["request"]``) is checked against the checklist with the recipient's
  directory entry; one lacking blocking elements is refused with the checklist, unless a supervisor overrides the
  check with a reason, which travels in the signed content (``check_override``) and is ledgered
  (``request.check_overridden``, no reason text in the ledger);
* the life cycle: an officer applies an event to a case (:func:`apply_case_event`), which runs
  :func:`protocol.lifecycle.apply`, stores the new state, ledgers ``case.state_changed`` and reports the move to the
  counterpart as a signed ``status_report``; the counterpart validates the report and ledgers it too
  (:func:`status_report_of`);
* status on demand (art. 46(24)): a ``status_query`` is answered by the requested gateway by itself with what the
  ``status_reveal`` setting allows (:func:`answer_status_query`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from gateway.committer import Tx
from gateway.consultations import consultation_on_record
from gateway.context import Gateway
from gateway.logs import get_logger
from gateway.loops import stop_if_cancelled
from gateway.policy import Embargoed, case_marking, ledger_submit_refusal, refuse_case_access
from protocol.checklist import IncompleteRequest, check_request
from protocol.errors import ComityError, InvalidMessage, error_code
from protocol.events import EventType
from protocol.lifecycle import (
    EVENT_SIDE,
    TRANSITIONS,
    Event,
    Postponement,
    Refusal,
    RefusalGround,
    Side,
    State,
    TransitionContext,
    apply,
    parse_event,
    parse_state,
    reachable,
)
from protocol.markings import MarkingRefused, caveat_name, embargo_until
from protocol.messages import Marking, MessageKind
from protocol.requests import CAVEAT_ASKS, Request, RequestType, required_caveats
from protocol.stats import Facets, facets_of
from protocol.timefmt import format_time, parse_time
from store.case_stats import CaseStats
from store.cases import Case, Cases
from store.errors import Conflict, is_transient
from store.messages import Messages
from store.users import User

__all__ = [
    "SYSTEM_USER",
    "Completeness",
    "StatusReport",
    "answer_status_query",
    "apply_case_event",
    "check_completeness",
    "schedule_status_answer",
    "status_report_of",
]

# the gateway itself, for automatic answers (status on demand): no row, no token, ledgered as actor "system"
SYSTEM_USER = User(id=0, username="system", role="officer")

_background: set[asyncio.Task[None]] = set()


class CaseForbidden(ComityError):
    code = "forbidden"


@dataclass(frozen=True)
class Completeness:
    """What the completeness check decided: extra signed content, whether a supervisor overrode it, the type."""

    content: dict[str, Any]
    overridden: bool = False
    request_type: str | None = None
    facets: Facets = field(default_factory=Facets)  # the request's coded facets, for statistics (protocol/stats.py)


def check_completeness(
    gw: Gateway,
    user: User,
    *,
    to: str,
    kind: MessageKind,
    marking: Marking,
    content: dict[str, Any],
    override_reason: str | None,
) -> Completeness:
    """Refuse a formal request lacking blocking elements (:class:`IncompleteRequest`) unless a supervisor
    overrides the check with a reason; and one whose marking lacks a caveat its own content asks for
    (:func:`protocol.requests.required_caveats`), which no override lifts."""
    if kind is not MessageKind.REQUEST or "request" not in content:
        return Completeness({})
    request = Request.parse(content["request"])
    names = {caveat_name(caveat) for caveat in marking.caveats}
    if missing := [caveat for caveat in required_caveats(request) if caveat not in names]:
        raise MarkingRefused(
            "; ".join(f"the request {CAVEAT_ASKS[caveat]}: mark it with the caveat {caveat}" for caveat in missing)
        )
    checklist = check_request(request, gw.directory.authority(to).request_requirements(), caveats=names)
    facets = facets_of(request)
    if checklist.complete:
        return Completeness({}, request_type=request.type.value, facets=facets)
    reason = (override_reason or "").strip()
    if not reason or user.role != "supervisor":
        raise IncompleteRequest(checklist)
    override = {"by": user.username, "reason": reason, "blocking": [item.element for item in checklist.blocking]}
    return Completeness({"check_override": override}, overridden=True, request_type=request.type.value, facets=facets)


def request_type_of(content: dict[str, Any]) -> str | None:
    """The request type a received request declares, if it carries a valid one (nothing else is trusted)."""
    request = content.get("request")
    if isinstance(request, dict):
        value = request.get("type")
        if isinstance(value, str) and value in RequestType._value2member_map_:
            return value
    return None


# --- the life cycle -------------------------------------------------------------------------------------------------


async def _case_and_side(gw: Gateway, user: User, case_id: str) -> tuple[Case, Side, str, Marking]:
    """The case, our side in it, the counterpart and the marking of the message that opened it."""
    async with gw.reader.connect() as conn:
        case = await Cases.get(conn, case_id)
        opening = await Messages.get(conn, case_id)
    if user.id != SYSTEM_USER.id:
        try:
            if user.role not in ("officer", "supervisor"):
                raise CaseForbidden(f"the {user.role} role does not act on cases")
            # cleared, and assigned or supervising its unit; else as if there were no such case (decision 100),
            # before its state or its counterpart can show in an answer
            refuse_case_access(gw, user, opening.marking, case, "moving", unseen=f"no case {case_id}")
        except ComityError as refused:  # evidence, like every refused submission (the status report it would send)
            actor, report = f"user:{user.username}", MessageKind.STATUS_REPORT
            await ledger_submit_refusal(gw, actor, refused, to=opening.peer, kind=report, marking=opening.marking)
            raise
    if case.state is None:
        raise InvalidMessage(f"case {case_id} was not opened by a request: it has no life cycle")
    side = Side.REQUESTING if opening.direction == "out" else Side.REQUESTED
    return case, side, opening.peer, opening.marking


def _refusal(value: object) -> Refusal | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"grounds", "reasons"}:
        raise InvalidMessage("'refusal' must be {'grounds': [...], 'reasons': '...'}")
    grounds, reasons = value.get("grounds", []), value.get("reasons", "")
    if not isinstance(grounds, list) or not isinstance(reasons, str):
        raise InvalidMessage("'refusal.grounds' must be a list and 'refusal.reasons' a string")
    known = RefusalGround._value2member_map_
    if not all(isinstance(g, str) and g in known for g in grounds):
        raise InvalidMessage(f"unknown refusal ground; known grounds: {', '.join(RefusalGround)}")
    return Refusal(frozenset(RefusalGround(g) for g in grounds), reasons)


def _postponement(value: object) -> Postponement | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"interfered_proceeding", "reasons"}:
        raise InvalidMessage("'postponement' must be {'interfered_proceeding': '...', 'reasons': '...'}")
    proceeding, reasons = value.get("interfered_proceeding", ""), value.get("reasons", "")
    if not isinstance(proceeding, str) or not isinstance(reasons, str):
        raise InvalidMessage("'postponement' members must be strings")
    return Postponement(proceeding, reasons)


async def apply_case_event(gw: Gateway, user: User, case_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Apply an event to a case, ledger the move and report it to the counterpart as a signed status report."""
    from gateway.sending import Draft, submit_message  # sending imports this module

    unknown = set(body) - {"event", "refusal", "postponement", "consultation_id"}
    if unknown:
        raise InvalidMessage(f"unknown member(s): {', '.join(sorted(unknown))}")
    event = parse_event(body.get("event"))
    consultation = body.get("consultation_id")
    if consultation is not None and not isinstance(consultation, str):
        raise InvalidMessage("'consultation_id' must be a string")
    refusal, postponement = _refusal(body.get("refusal")), _postponement(body.get("postponement"))
    case, side, peer, marking = await _case_and_side(gw, user, case_id)
    embargo = embargo_until(marking)
    if event in (Event.REFUSE, Event.POSTPONE) and side is Side.REQUESTED and embargo and gw.clock().date() < embargo:
        # what may ground a refusal or a postponement depends on the request's type and content, which its users may
        # not see yet: checked, and answered, it would tell them (decision 164)
        refused = Embargoed(f"the request is under embargo until {embargo.isoformat()}: not to {event.value} yet")
        report = MessageKind.STATUS_REPORT
        await ledger_submit_refusal(gw, f"user:{user.username}", refused, to=peer, kind=report, marking=marking)
        raise refused
    if consultation is not None or event in (Event.REFUSE, Event.POSTPONE):
        # art. 46(26): a thread with the counterpart about the case is the consultation on record
        consultation = await consultation_on_record(gw, user, case_id, peer, consultation)
    previous = parse_state(case.state)
    request_type = RequestType(case.request_type) if case.request_type else RequestType.MLA_CRIMINAL
    context = TransitionContext(request_type, side, consultation, refusal, postponement)
    new = apply(previous, event, context)  # typed errors name the state and the event
    actor = f"user:{user.username}"
    now = gw.clock()  # the time of the move, which the report states (signed) and both ledgers record

    async def move(tx: Tx) -> None:
        # committed with the status report that tells the counterpart: both or neither, and the outbox retries
        # the report until it is receipted
        if not await Cases.move(tx.conn, case_id, previous.value, new.value, now):
            raise Conflict(f"case {case_id} moved on meanwhile: it is no longer {previous.value}")
        tx.record(EventType.CASE_STATE, actor, at=now, message_id=case_id, state=new.value)
        grounds = [ground.value for ground in refusal.grounds] if refusal is not None else []
        await CaseStats.moved(tx.conn, case_id, new.value, now, refusal_grounds=grounds)

    status: dict[str, Any] = {"state": new.value, "event": event.value, "at": format_time(now)}
    content: dict[str, Any] = {"status": status}
    if refusal is not None and event is Event.REFUSE:  # art. 46(23): the reasons go to the requesting state
        content["refusal"] = {"grounds": sorted(g.value for g in refusal.grounds), "reasons": refusal.reasons}
    if postponement is not None and event is Event.POSTPONE:
        content["postponement"] = {
            "interfered_proceeding": postponement.interfered_proceeding,
            "reasons": postponement.reasons,
        }
    if consultation is not None:
        content["consultation_id"] = consultation
    draft = Draft(to=peer, kind=MessageKind.STATUS_REPORT, marking=marking, content=content, in_reply_to=case_id)
    report_id = await submit_message(gw, user, draft, along=move)
    return {
        "case_id": case_id,
        "previous": previous.value,
        "event": event.value,
        "state": new.value,
        "report": report_id,
    }


@dataclass(frozen=True)
class StatusReport:
    state: State | None
    event: Event | None
    refusal_grounds: tuple[str, ...] = ()  # the known ground codes a refusal names (statistics; codes only)
    at: datetime | None = None  # when the transition was made (``at``), or the last action (``last_action_at``)
    side: Side | None = None  # the counterpart's side of the case, when known


def status_report_of(content: dict[str, Any], peer_side: Side | None, made_at: int | None = None) -> StatusReport:
    """Validate a received status report: a known state, a known event that the peer's side may cause and that
    can lead to that state, and a time no later than the report was made (``made_at``, the envelope's ``iat``).
    Raises :class:`InvalidMessage` (the envelope is refused)."""
    status = content.get("status")
    if not isinstance(status, dict):
        raise InvalidMessage("a status report carries content.status")
    state = parse_state(status["state"]) if "state" in status else None
    event = parse_event(status["event"]) if "event" in status else None
    if event is not None:
        if state is None:
            raise InvalidMessage("a status report naming an event names the state it led to")
        if not any(e is event and target is state for (_, e), target in TRANSITIONS.items()):
            raise InvalidMessage(f"event {event.value} never leads to state {state.value}")
        expected = EVENT_SIDE[event]
        if peer_side is not None and expected not in (Side.EITHER, peer_side):
            raise InvalidMessage(f"only the {expected.value} side may {event.value} a case")
    refusal = content.get("refusal")
    grounds: tuple[str, ...] = ()
    if event is Event.REFUSE and isinstance(refusal, dict) and isinstance(refusal.get("grounds"), list):
        known = RefusalGround._value2member_map_
        grounds = tuple(sorted({g for g in refusal["grounds"] if isinstance(g, str) and g in known}))
    member = "at" if event is not None else "last_action_at"
    at = _report_time(status, member)
    if event is not None and at is None:  # without it a late, older report could move the case back
        raise InvalidMessage("a status report naming an event names when it happened (status.at)")
    # a time from the future would make every later report look older (cases.peer_state_at): the transition came
    # before the report was sealed (``iat`` has whole seconds, hence the second of slack)
    if at is not None and made_at is not None and at.timestamp() > made_at + 1:
        raise InvalidMessage(f"status.{member} is later than the report was made")
    return StatusReport(state, event, grounds, at, peer_side)


def _report_time(status: dict[str, Any], member: str) -> datetime | None:
    value = status.get(member)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError:
            pass
    raise InvalidMessage(f"status.{member} must be an RFC 3339 UTC time with microseconds")


async def record_peer_status(tx: Tx, case_id: str, report: StatusReport, peer: str) -> None:
    """A counterpart's transition, inside the receive commit: both views of the case move, and it is ledgered.

    Its report moves our view only forward (decision 142): not when it is older than the counterpart's last
    transition we adopted (reports overtake each other; it still gives the statistics a milestone they lack), and
    not to a state the case cannot reach from where it is by moves of the reporting side ending with the reported
    event (never out of ``closed``, never back behind our own withdrawal). Our own moves do not date the case for
    this: a withdrawal of the requesting side made before the requested side's next move must still reach it. The
    message stays on record either way."""
    if report.state is None:
        return
    log = get_logger(message_id=case_id, peer=peer)
    if report.event is None:  # an answer to a status query: the counterpart's view only
        if not await Cases.set_peer_state(tx.conn, case_id, report.state.value, adopt=False, at=report.at):
            log.info("status_report_stale", state=report.state.value)
        return
    now = tx.clock()
    current, last = await Cases.transition_view(tx.conn, case_id)
    if current is None:
        return
    if report.at is not None and last is not None and report.at <= last:  # overtaken by a later transition
        log.info("status_report_stale", state=report.state.value)
        # no later than now, and no earlier than our request was submitted: a report dated years back must not put
        # the milestone before the request on the timeline (statistics clamp the wait at 0 anyway)
        (opened,) = await Messages.find_many(tx.conn, [case_id])  # its metadata, not its envelopes
        reached = min(max(report.at, opened.created_at), now)
        await CaseStats.moved(
            tx.conn, case_id, report.state.value, reached, refusal_grounds=report.refusal_grounds, milestones_only=True
        )
        # ledgered too, marked as not moving the case, with the time the milestone takes: what statistics count, an
        # auditor's timeline shows (decision 160)
        tx.record(
            EventType.CASE_STATE,
            f"peer:{peer}",
            at=now,
            message_id=case_id,
            state=report.state.value,
            reason="overtaken",
            peer_time=format_time(reached),
        )
        return
    if report.side is None or not reachable(State(current), report.event, report.state, report.side):
        log.warning("status_report_not_adopted", state=report.state.value, case_state=current)
        return
    adopted = await Cases.set_peer_state(
        tx.conn, case_id, report.state.value, adopt=True, at=report.at, expected=current
    )
    if not adopted:  # the case moved meanwhile
        log.info("status_report_stale", state=report.state.value)
        return
    tx.record(EventType.CASE_STATE, f"peer:{peer}", at=now, message_id=case_id, state=report.state.value)
    await CaseStats.moved(tx.conn, case_id, report.state.value, now, refusal_grounds=report.refusal_grounds)


# --- status on demand (art. 46(24)) ----------------------------------------------------------------------------------


async def answer_status_query(gw: Gateway, query_id: str, case_id: str, peer: str) -> str:
    """Answer a status query by ourselves with what ``status_reveal`` allows; return the report's id (the one
    already made, if any: the pending answers' scan and the answer after the receive commit may meet)."""
    from gateway.sending import Draft, submit_message  # sending imports this module

    async with gw.reader.connect() as conn:
        made = [row.id for row in await Messages.replies(conn, query_id) if row.direction == "out"]
        if made:
            return made[0]
        case = await Cases.get(conn, case_id)
        query = await Messages.get(conn, query_id)
        held = await case_marking(conn, case_id)
    reveal = gw.settings.status_reveal
    status: dict[str, Any] = {}
    if reveal == "state_and_date" and case.state is not None:
        status["state"] = case.state
    if reveal in ("state_and_date", "date_only") and case.last_action_at is not None:
        status["last_action_at"] = format_time(case.last_action_at)
    draft = Draft(
        to=peer,
        kind=MessageKind.STATUS_REPORT,
        # what it reports is the case's: never below the request, whatever the query was marked (decision 110)
        marking=query.marking if held is None else gw.scheme.join(query.marking, held),
        content={"status": status},
        in_reply_to=query_id,
    )
    return await submit_message(gw, SYSTEM_USER, draft)


# how far back the scan looks for status queries left unanswered, how old one must be (the answer after the receive
# commit has had its chance), and how often the scan runs
PENDING_ANSWERS_DAYS = 30
PENDING_ANSWERS_MIN_AGE = 60.0
PENDING_ANSWERS_FIRST = 5.0
PENDING_ANSWERS_INTERVAL = 600.0
_SCAN_LOCK = "comity-status-answers"
# queries whose answer our own checks refused (the peer's accreditation narrowed, say): each attempt ledgers a
# message.submit_refused, so a process tries such an answer once, not at every scan
_REFUSED: set[str] = set()
_SCANS: set[int] = set()  # the gateways (by id) this process is scanning for


@asynccontextmanager
async def _scanning(gw: Gateway) -> AsyncIterator[bool]:
    """Whether this scan may run now: one at a time per process and, on PostgreSQL, per database (a session
    advisory lock, tried, not waited for), so that replicas started together do not each answer every pending
    query."""
    if id(gw) in _SCANS:
        yield False
        return
    _SCANS.add(id(gw))
    try:
        if gw.reader.dialect.name != "postgresql":
            yield True
            return
        async with gw.reader.connect() as conn:
            key = {"key": _SCAN_LOCK}
            got = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(hashtext(:key))"), key))
            try:
                yield got
            finally:
                if got:
                    await conn.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), key)
    finally:
        _SCANS.discard(id(gw))


async def answer_pending_status_queries(gw: Gateway, *, min_age: float = PENDING_ANSWERS_MIN_AGE) -> int:
    """Answer the status queries received in the last :data:`PENDING_ANSWERS_DAYS` days, at least ``min_age``
    seconds ago, that no message of ours answers: the answer is made after the receive commit
    (:func:`schedule_status_answer`), so a stop, a crash or a failure in between would lose it for good (decision
    113). Return how many it answered."""
    async with _scanning(gw) as allowed:
        if not allowed:
            return 0
        now = gw.clock()
        async with gw.reader.connect() as conn:
            pending = await Messages.unanswered_status_queries(
                conn, now - timedelta(days=PENDING_ANSWERS_DAYS), now - timedelta(seconds=min_age)
            )
        answered = 0
        for query_id, case_id, peer in pending:
            if query_id in _REFUSED:
                continue
            try:
                await answer_status_query(gw, query_id, case_id, peer)
                answered += 1
            except Exception as exc:
                _failed(exc, query_id, peer)
        return answered


def _failed(exc: Exception, query_id: str, peer: str) -> None:
    if isinstance(exc, ComityError) and not is_transient(exc):
        _REFUSED.add(query_id)
    get_logger(message_id=query_id, peer=peer).warning("status_query_answer_failed", error=error_code(exc))


async def run_pending_status_answers(
    gw: Gateway, first: float = PENDING_ANSWERS_FIRST, interval: float = PENDING_ANSWERS_INTERVAL
) -> None:
    """:func:`answer_pending_status_queries` ``first`` seconds after the start, then every ``interval``."""
    await asyncio.sleep(first)
    while True:
        try:
            if answered := await answer_pending_status_queries(gw):
                get_logger().info("status_queries_answered_late", count=answered)
        except Exception as exc:  # the database, for now: the next round looks again
            get_logger().warning("status_answers_scan_failed", error=error_code(exc))
        stop_if_cancelled()
        await asyncio.sleep(interval)


def schedule_status_answer(gw: Gateway, query_id: str, case_id: str, peer: str) -> None:
    """Queue the automatic answer after the receive commit (never from inside it)."""

    async def run() -> None:
        try:
            await answer_status_query(gw, query_id, case_id, peer)
        except Exception as exc:
            _failed(exc, query_id, peer)

    task = asyncio.create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)
