"""The officer API of informal consultations (``/v1/consultations``; docs/requests.md, "Consultations").

Starting a thread, replying in it and converting it are ordinary submissions (gateway/sending.py): the same marking,
case and completeness checks, the same sealing and ledger events; gateway/consultations.py adds what a thread needs.
Listing and reading a thread return metadata only (ids, parties, kinds, markings, states, times and the element ids
of a shared draft's checklist); content is read through ``POST /v1/messages/{id}/open`` with its usual checks.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.api import _json, _read_json, _summary, _user, read_submission
from gateway.auth import check_scope
from gateway.consultations import ConsultationConverted, default_about
from gateway.context import Gateway
from gateway.federation import GATEWAY
from gateway.params import bounded_param
from gateway.policy import AccessRefused, check_case_access, ledger_refusal, ledger_submit_refusal, running_embargo
from gateway.reading import LIST_PAGE, open_message, visible_ids
from gateway.sending import Draft, submit_message
from protocol.consultations import CONSULTATION_MEMBER
from protocol.errors import ComityError, InvalidMessage
from protocol.events import EventType
from protocol.markings import MarkingRefused
from protocol.messages import Marking, MessageKind, new_message_id, validate_message_id
from protocol.timefmt import format_time
from store.accounts import CONTENT_OPEN
from store.consultations import Consultations, DraftChecks, Thread
from store.messages import MessageRow, Messages
from store.users import User

__all__ = ["consultation_routes"]

_DEFAULT_MARKING = {"level": "CONFIDENTIAL", "caveats": []}
_RESERVED = {CONSULTATION_MEMBER, "request"}  # set by the gateway, never by the officer's free-form content


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise InvalidMessage(f"unknown member(s): {', '.join(sorted(unknown))}")


def _content(body: dict[str, Any]) -> dict[str, Any]:
    content = body.get("content", {})
    if not isinstance(content, dict):
        raise InvalidMessage("'content' must be an object (e.g. {'subject': ..., 'text': ...})")
    if _RESERVED & set(content):
        raise InvalidMessage(
            "content.consultation and content.request are set by the gateway: share a draft as 'draft_request'"
        )
    return content


def _member(thread_id: str, about: object, body: dict[str, Any]) -> dict[str, Any]:
    member: dict[str, Any] = {"thread_id": thread_id, "informal": True, "about": about}
    if body.get("draft_request") is not None:
        member["draft_request"] = body["draft_request"]
    return member


def _string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidMessage(f"'{name}' must be a string")
    return value


def _message_id(body: dict[str, Any], name: str) -> str | None:
    """A message id member, validated before any error could repeat it."""
    value = _string(body, name)
    return None if value is None else validate_message_id(value)


async def _hide_requests(gw: Gateway, user: User, threads: list[Thread]) -> list[Thread]:
    """A thread names the formal request it was converted into, and the case it is about, only to whoever may know
    that request or case exists (decisions 94, 167): either may be marked above the thread, or sit in a case she is
    not assigned to."""
    named = {
        case_id for thread in threads for case_id in (thread.converted_request_id, thread.about_case_id) if case_id
    }
    if not named:
        return threads
    shown = await visible_ids(gw, user, sorted(named))

    def seen(case_id: str | None) -> str | None:
        return case_id if case_id in shown else None

    return [
        dataclasses.replace(
            thread, converted_request_id=seen(thread.converted_request_id), about_case_id=seen(thread.about_case_id)
        )
        for thread in threads
    ]


async def _as_seen_by(gw: Gateway, user: User, conn: AsyncConnection, threads: list[Thread]) -> list[Thread]:
    """The threads with ``last_message_at`` the time of the last message of each that the user is cleared for (the
    first one always is: it carries the thread's marking)."""
    last: dict[str, datetime] = {}
    for thread_id, created_at, marking in await Consultations.message_times(conn, [t.id for t in threads]):
        if user.cleared_for(marking, gw.scheme) and (thread_id not in last or created_at > last[thread_id]):
            last[thread_id] = created_at
    return [dataclasses.replace(thread, last_message_at=last.get(thread.id, thread.created_at)) for thread in threads]


def _thread_json(thread: Thread) -> dict[str, Any]:
    return {
        "id": thread.id,
        "peer": thread.peer,
        "direction": thread.direction,
        "about": thread.about_case_id,
        "state": thread.state,
        "converted_request_id": thread.converted_request_id,
        "marking": None if thread.marking is None else thread.marking.to_json(),
        "unit": thread.unit,
        "created_at": format_time(thread.created_at),
        "last_message_at": format_time(thread.last_message_at),
    }


async def start(request: web.Request) -> web.Response:
    """Start a thread with a peer authority, optionally about a case we share with it, optionally with a draft and
    attachments (multipart/form-data, as for ``POST /v1/messages``)."""
    gw, user = request.app[GATEWAY], _user(request)
    body, attachments = await read_submission(request)
    _only(body, {"to", "marking", "content", "about", "draft_request"})
    to = _string(body, "to")
    if to is None:
        raise InvalidMessage("'to' must be the authority id of the peer to consult")
    thread_id = new_message_id()  # the thread is named after its first message
    content = {**_content(body), CONSULTATION_MEMBER: _member(thread_id, body.get("about"), body)}
    draft = Draft(
        to=to,
        kind=MessageKind.CONSULTATION,
        marking=Marking.parse(body["marking"])
        if "marking" in body
        else await default_about(gw, user, body.get("about"), to, Marking.parse(_DEFAULT_MARKING)),
        content=content,
        message_id=thread_id,
    )
    await submit_message(gw, user, draft, attachments)
    return _json({"id": thread_id, "thread_id": thread_id, "state": "queued"}, status=202)


async def _thread(
    request: web.Request, doing: str, refused_kind: MessageKind | None = None
) -> tuple[Thread, list[MessageRow]]:
    """The thread the path names and the messages of it the user may see. An officer or supervisor who may not
    act on the thread gets what a thread that does not exist gets (decision 100), before anything about it shows
    (with ``refused_kind`` the attempt is ledgered as the refused submission of that kind); one who may is shown
    only the messages she is cleared for: a reply may be marked above the thread (decision 94)."""
    gw, user = request.app[GATEWAY], _user(request)
    error: AccessRefused | None = None
    async with gw.reader.connect() as conn:
        thread = await Consultations.get(conn, request.match_info["id"])
        rows = await Consultations.thread_messages(conn, thread.id)
        if user.role in ("officer", "supervisor"):  # auditors and admins see every thread's metadata
            try:
                unseen = f"no consultation {thread.id}"
                await check_case_access(gw, user, await Messages.get(conn, thread.id), conn, doing, unseen=unseen)
            except AccessRefused as refused:
                error = refused
    if error is not None:
        if refused_kind is not None:
            actor = f"user:{user.username}"
            await ledger_submit_refusal(gw, actor, error, to=thread.peer, kind=refused_kind, marking=rows[0].marking)
        raise error
    if user.role in ("officer", "supervisor"):
        rows = [row for row in rows if user.cleared_for(row.marking, gw.scheme)]
    return thread, rows


async def reply(request: web.Request) -> web.Response:
    """Reply in a thread: to its latest message unless ``in_reply_to`` names another, at that message's marking
    unless ``marking`` says otherwise (never lower without a supervisor's recorded downgrade)."""
    gw, user = request.app[GATEWAY], _user(request)
    thread, rows = await _thread(request, "replying in", MessageKind.CONSULTATION)
    body, attachments = await read_submission(request)
    _only(body, {"in_reply_to", "marking", "content", "draft_request", "downgrade_reason"})
    wanted = _message_id(body, "in_reply_to") or rows[-1].id
    answered = next((row for row in rows if row.id == wanted), None)
    if answered is None:
        raise InvalidMessage(f"message {wanted} is not part of consultation {thread.id}")
    marking = Marking.parse(body["marking"]) if "marking" in body else answered.marking
    draft = Draft(
        to=thread.peer,
        kind=MessageKind.CONSULTATION,
        marking=marking,
        content={**_content(body), CONSULTATION_MEMBER: _member(thread.id, thread.about_case_id, body)},
        in_reply_to=answered.id,
        downgrade_reason=_string(body, "downgrade_reason"),
    )
    message_id = await submit_message(gw, user, draft, attachments)
    return _json({"id": message_id, "thread_id": thread.id, "state": "queued"}, status=202)


async def convert(request: web.Request) -> web.Response:
    """Turn a thread into a formal request to the same peer that keeps the link (``request.consultation_id``):
    the request given, or the draft shared in one of the thread's messages (opened, and ledgered, for it)."""
    gw, user = request.app[GATEWAY], _user(request)
    thread, rows = await _thread(request, "converting", MessageKind.REQUEST)
    body = await _read_json(request)
    _only(body, {"request", "from_draft", "marking", "override_reason"})
    if thread.state != "open":
        raise ConsultationConverted(f"consultation {thread.id} was already converted into a formal request")
    source = _message_id(body, "from_draft")
    if (source is None) == (body.get("request") is None):
        raise InvalidMessage("send either 'request' (the formal request) or 'from_draft' (a message of the thread)")
    if source is not None:
        if source not in {row.id for row in rows}:
            raise InvalidMessage(f"message {source} is not part of consultation {thread.id}")
        try:  # the draft is content: taking it decrypts it, as opening does (decision 165)
            check_scope(user, CONTENT_OPEN)
        except ComityError as scope_missing:
            actor = f"user:{user.username}"
            await ledger_refusal(
                gw, EventType.OPEN_REFUSED, actor, scope_missing, message_id=source, purpose="conversion"
            )
            raise
        opened = await open_message(gw, user, source, "conversion")
        member = opened.envelope.payload.content.get(CONSULTATION_MEMBER)
        formal = member.get("draft_request") if isinstance(member, dict) else None
        if not isinstance(formal, dict):
            raise InvalidMessage(f"message {source} shares no draft request")
    else:
        formal = body["request"]
        if not isinstance(formal, dict):
            raise InvalidMessage("'request' must be a request object (comity request template TYPE)")
    if formal.get("consultation_id") not in (None, thread.id):
        raise InvalidMessage(f"the request names another consultation than {thread.id}")
    # the request carries at least what it comes from: the thread's marking, and the marking of the message whose
    # draft it takes (a draft shared higher than the thread keeps its level and caveats)
    floor = next(row.marking for row in rows if row.id == source) if source is not None else None
    opening = thread.marking or rows[0].marking
    default = gw.scheme.join(opening, floor) if floor is not None else opening
    marking = Marking.parse(body["marking"]) if "marking" in body else default
    if floor is not None and gw.scheme.lowers(marking, floor):
        refused = MarkingRefused(
            f"the draft of message {source} is marked {floor.level} (caveats {', '.join(floor.caveats) or 'none'}): "
            "the request made of it must carry at least that"
        )
        actor = f"user:{user.username}"
        await ledger_submit_refusal(gw, actor, refused, to=thread.peer, kind=MessageKind.REQUEST, marking=marking)
        raise refused
    draft = Draft(
        to=thread.peer,
        kind=MessageKind.REQUEST,
        marking=marking,
        content={"request": {**formal, "consultation_id": thread.id}},
        override_reason=_string(body, "override_reason"),
    )
    message_id = await submit_message(gw, user, draft)
    return _json({"id": message_id, "consultation_id": thread.id, "state": "queued"}, status=202)


async def list_threads(request: web.Request) -> web.Response:
    """The threads of the caller (assigned, or of the unit a supervisor supervises); all of them for auditors;
    ``?about=<case id>`` and ``?state=open|converted`` narrow the list."""
    limit, offset = (
        bounded_param(request.query, "limit", 100, 1, 1000),
        bounded_param(request.query, "offset", 0, 0, 10**9),
    )
    about, state = request.query.get("about"), request.query.get("state")
    if about is not None:
        validate_message_id(about)
    if state not in (None, "open", "converted"):
        raise InvalidMessage("state must be open or converted")
    gw, user = request.app[GATEWAY], _user(request)
    async with gw.reader.connect() as conn:
        if user.role not in ("officer", "supervisor"):
            threads = await Consultations.visible_to(conn, user, limit=limit, offset=offset, about=about, state=state)
        else:  # of the threads assigned to her or her unit, those she is cleared for; limit and offset count those
            threads = []
            after = ""  # in pages of ids, which a message arriving meanwhile cannot reorder (decision 167)
            while True:
                batch = await Consultations.visible_to(
                    conn, user, limit=LIST_PAGE, about=about, state=state, after_id=after
                )
                cleared = [t for t in batch if t.marking is not None and user.cleared_for(t.marking, gw.scheme)]
                threads.extend(await _as_seen_by(gw, user, conn, cleared))
                if len(batch) < LIST_PAGE:
                    break
                after = batch[-1].id
            # newest first by the last message she may see: a reply marked above her clearance neither shows its
            # time nor moves its thread up the list (decision 121)
            threads.sort(key=lambda thread: (-thread.last_message_at.timestamp(), thread.id))
            threads = threads[offset : offset + limit]
    threads = await _hide_requests(gw, user, threads)
    return _json({"consultations": [_thread_json(thread) for thread in threads]})


async def get_thread(request: web.Request) -> web.Response:
    """A thread and its messages' metadata; an officer or supervisor needs what acting on the thread needs, and
    then also sees the checklist of each shared draft, given a token that may open content and once any embargo on
    it has ended (auditors and admins see metadata only)."""
    gw, user = request.app[GATEWAY], _user(request)
    thread, rows = await _thread(request, "reading")
    reviewer = user.role in ("officer", "supervisor")
    if reviewer:  # the time of the last message she may see, not of one hidden from her
        thread = dataclasses.replace(thread, last_message_at=max(row.created_at for row in rows))
    (thread,) = await _hide_requests(gw, user, [thread])
    async with gw.reader.connect() as conn:
        # the checklists come from drafts' content: only for a token that may open content
        checks = await DraftChecks.for_thread(conn, thread.id) if reviewer and CONTENT_OPEN in user.scopes else {}
    messages = []
    for row in rows:
        summary = _summary(row)
        check = checks.get(row.id)
        # a draft's type and which elements it holds come from its content: not before an embargo ends
        if check is not None and running_embargo(gw, row) is None:
            summary["draft_check"] = {
                "request_type": check.request_type,
                "complete": not check.blocking,
                "blocking": list(check.blocking),
                "warnings": list(check.warnings),
            }
        messages.append(summary)
    return _json({**_thread_json(thread), "messages": messages})


def consultation_routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/consultations", start),
        web.get("/v1/consultations", list_threads),
        web.get("/v1/consultations/{id}", get_thread),
        web.post("/v1/consultations/{id}/messages", reply),
        web.post("/v1/consultations/{id}/convert", convert),
    ]
