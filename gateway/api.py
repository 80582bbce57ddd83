"""The local API for officers (``/v1``), authenticated with bearer tokens.

Every route is listed in gateway/openapi.py; tests/gateway/test_api.py (test_openapi_documents_exactly_what_is_served)
checks that the document and the router agree. Errors are problem+json (gateway/problems.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import BodyPartReader, web

from gateway.auth import CASE_CHANGES, PUBLIC_AUTH_PATHS, check_scope, required_scope
from gateway.casework_api import casework_routes
from gateway.committer import Finish, Tx, done
from gateway.federation import BODY_ERRORS, GATEWAY, malformed_body
from gateway.files import FileStoreFailed
from gateway.limits import RateLimited, TokenBuckets
from gateway.logs import get_logger
from gateway.params import bounded_param
from gateway.policy import (
    AccessRefused,
    case_marking,
    check_case_access,
    check_supervising,
    ledger_refusal,
    ledger_submit_refusal,
)
from gateway.problems import problem_response
from gateway.reading import attachment_stream, message_events, open_message, visible_box, visible_message
from gateway.requests import apply_case_event
from gateway.sending import Draft, NewAttachment, submit_message
from protocol.errors import ComityError, InvalidMessage
from protocol.events import EventType
from protocol.messages import (
    Marking,
    MessageKind,
    is_message_id,
    parse_strict_json,
    validate_authority_id,
    validate_message_id,
)
from protocol.timefmt import format_time
from protocol.timeline import build_timeline
from store.accounts import CONTENT_OPEN
from store.cases import Cases
from store.errors import NotFound
from store.messages import MessageRow, Messages
from store.tokens import Tokens, token_digest
from store.users import User, Users

__all__ = ["USER", "api_routes", "auth_middleware"]

USER = web.RequestKey("user", User)  # the authenticated user of a request
PUBLIC_PATHS = {"/v1/openapi.json", "/healthz", "/readyz"}
MAX_JSON = 1 << 20
_T = TypeVar("_T")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")  # RFC 6838


class Unauthenticated(ComityError):
    code = "unauthenticated"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.path in PUBLIC_AUTH_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("send 'Authorization: Bearer <token>'; 'comity user token' issues one")
    gw = request.app[GATEWAY]
    digest = token_digest(token.strip())
    user = None if digest is None else Tokens.user_of(await gw.tokens_seen.get(digest), gw.clock())
    if user is None:
        raise Unauthenticated("the token is unknown, expired or revoked")
    if gw.api_budget is not None and (wait := gw.api_budget.take(user.username)):
        return _rate_limited(gw.api_budget, user, wait)
    try:
        check_scope(user, required_scope(request))  # every route names its scope (gateway/auth.py)
    except ComityError as refused:
        target = request.match_info.get("id", "")
        if required_scope(request) == CONTENT_OPEN and is_message_id(target):
            # an attempt to open content without the right is evidence too
            await ledger_refusal(gw, EventType.OPEN_REFUSED, f"user:{user.username}", refused, message_id=target)
        await _ledger_case_change_refused(request, user, refused)
        raise
    request[USER] = user
    _check_path_ids(request)
    try:
        return await handler(request)
    except AccessRefused as refused:
        await _ledger_case_change_refused(request, user, refused)
        raise


def _rate_limited(budget: TokenBuckets, user: User, wait: float) -> web.Response:
    """429 before anything else is looked at (the route's scope included: a refused opening would be ledgered)."""
    seconds = math.ceil(wait)
    if budget.starts_limit(user.username):
        get_logger().warning("api_rate_limited", user=user.username, retry_after=seconds)
    limit = budget.per_minute
    response = problem_response(
        RateLimited.code, f"more than {limit:g} requests a minute from this user; try again in {seconds} s", status=429
    )
    response.headers["Retry-After"] = str(seconds)
    return response


async def _ledger_case_change_refused(request: web.Request, user: User, refused: ComityError) -> None:
    """A refused change of a case (its work, its assignments) is evidence, as a refused opening is: ledgered as
    ``case.refused`` with what it tried, if the id could name a case, whatever else the answer says."""
    resource = request.match_info.route.resource
    attempt = None if resource is None else CASE_CHANGES.get((request.method, resource.canonical))
    target = request.match_info.get("id", "")
    if attempt is not None and is_message_id(target):
        gw = request.app[GATEWAY]
        await ledger_refusal(
            gw, EventType.CASE_REFUSED, f"user:{user.username}", refused, message_id=target, state=attempt
        )


def _check_path_ids(request: web.Request) -> None:
    """Every ``{id}`` of the API is a message or case id (a version-4 UUID) and every number a small one: anything
    else names nothing, and must not reach the database (PostgreSQL refuses a NUL byte, a bigint overflows)."""
    target = request.match_info.get("id")
    if target is not None and not is_message_id(target):
        raise NotFound("no message or case has that id")
    for name in ("item", "position"):
        number = request.match_info.get(name)
        if number is not None and len(number) > 9:
            raise NotFound(f"no {name} {number[:12]}...")


def _user(request: web.Request) -> User:
    user = request[USER]
    assert isinstance(user, User)
    return user


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


async def _read_json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON:
        raise InvalidMessage("the JSON body is too large")
    raw = await request.content.read(MAX_JSON + 1)
    if len(raw) > MAX_JSON:
        raise InvalidMessage("the JSON body is too large")
    value = parse_strict_json(raw) if raw else {}
    if not isinstance(value, dict):
        raise InvalidMessage("the body must be a JSON object")
    return value


def _summary(row: MessageRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "direction": row.direction,
        "peer": row.peer,
        "kind": row.kind,
        "in_reply_to": row.in_reply_to,
        "marking": row.marking.to_json(),
        "state": row.state,
        "envelope_sha256": row.envelope_sha256,
        "created_at": format_time(row.created_at),
        "received_at": None if row.received_at is None else format_time(row.received_at),
        "case_id": row.case_id,
        "confidentiality_answer": row.confidentiality_answer,
    }


DRAFT_MEMBERS = frozenset(
    {"to", "kind", "marking", "content", "in_reply_to", "forwards", "downgrade_reason", "override_reason"}
)
ACKNOWLEDGEMENT_MEMBERS = frozenset({"note", "confidentiality"})


def _draft(fields: dict[str, Any], **fixed: Any) -> Draft:
    fields = {**fields, **fixed}
    unknown = set(fields) - DRAFT_MEMBERS
    if unknown:
        raise InvalidMessage(f"unknown member(s): {', '.join(sorted(unknown))}")
    try:
        kind = MessageKind(fields.get("kind", "request"))
    except ValueError:
        raise InvalidMessage(f"kind must be one of {', '.join(k.value for k in MessageKind)}") from None
    if kind is MessageKind.STATUS_REPORT:  # a claim about our case: made only by a checked move (decision 93)
        raise InvalidMessage(
            "a status report is sent by the gateway when a case moves (POST /v1/cases/{id}/events) or when the "
            "counterpart asks (status_query); it cannot be written by hand"
        )
    in_reply_to = fields.get("in_reply_to")
    if in_reply_to is not None:
        validate_message_id(in_reply_to)
    content = fields.get("content", {})
    if not isinstance(content, dict) or not isinstance(fields.get("to"), str):
        raise InvalidMessage("'to' must be an authority id and 'content' an object")
    forwards = fields.get("forwards", [])
    if not isinstance(forwards, list) or not all(isinstance(item, str) for item in forwards):
        raise InvalidMessage("'forwards' must be a list of message ids")
    reason, override = fields.get("downgrade_reason"), fields.get("override_reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidMessage("'downgrade_reason' must be a string")
    if override is not None and not isinstance(override, str):
        raise InvalidMessage("'override_reason' must be a string")
    return Draft(
        to=fields["to"],
        kind=kind,
        marking=Marking.parse(fields.get("marking", {"level": "CONFIDENTIAL", "caveats": []})),
        content=content,
        in_reply_to=in_reply_to,
        forwards=tuple(validate_message_id(item) for item in forwards),
        downgrade_reason=reason,
        override_reason=override,
    )


async def _parsed(read: Awaitable[_T]) -> _T:
    """A step of reading a multipart body; a broken one (no boundary, bad framing, a dropped body) is a typed
    refusal, as on the federation endpoint."""
    try:
        return await read
    except BODY_ERRORS as exc:
        raise malformed_body(exc) from None


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await _parsed(part.read_chunk(1 << 20)):
        yield chunk


async def read_submission(
    request: web.Request,
) -> tuple[dict[str, Any], tuple[NewAttachment, ...] | AsyncIterator[NewAttachment]]:
    """A draft's fields and its attachments: a JSON body, or multipart/form-data with a "message" JSON part, then
    one "attachment" file part per file, read as the sender encrypts them (never buffered whole)."""
    if request.content_type != "multipart/form-data":
        return await _read_json(request), ()
    reader = await _parsed(request.multipart())
    first = await _parsed(reader.next())
    if not isinstance(first, BodyPartReader) or first.name != "message":
        raise InvalidMessage("the first form part must be 'message' (JSON)")
    raw = bytearray()
    while chunk := await _parsed(first.read_chunk(1 << 16)):
        raw += chunk
        if len(raw) > MAX_JSON:
            raise InvalidMessage("the 'message' part is too large")
    fields = parse_strict_json(bytes(raw))
    if not isinstance(fields, dict):
        raise InvalidMessage("the 'message' part must be a JSON object")

    async def attachments() -> AsyncIterator[NewAttachment]:
        while (part := await _parsed(reader.next())) is not None:
            if not isinstance(part, BodyPartReader) or part.name != "attachment" or not part.filename:
                raise InvalidMessage("each further form part must be an 'attachment' file")
            media_type = part.headers.get("Content-Type", "application/octet-stream")
            yield NewAttachment(part.filename, media_type, _part_chunks(part))

    return fields, attachments()


async def _submit(request: web.Request, **fixed: Any) -> web.Response:
    """JSON body, or multipart/form-data with attachments (:func:`read_submission`)."""
    gw, user = request.app[GATEWAY], _user(request)
    fields, attachments = await read_submission(request)
    message_id = await submit_message(gw, user, _draft(fields, **fixed), attachments)
    return _json({"id": message_id, "state": "queued"}, status=202)


async def post_message(request: web.Request) -> web.Response:
    return await _submit(request)


async def list_messages(request: web.Request) -> web.Response:
    box = request.query.get("box", "inbox")
    if box not in {"inbox", "outbox"}:
        raise InvalidMessage("box must be inbox or outbox")
    limit, offset = (
        bounded_param(request.query, "limit", 100, 1, 1000),
        bounded_param(request.query, "offset", 0, 0, 10**9),
    )
    direction = "in" if box == "inbox" else "out"
    rows = await visible_box(request.app[GATEWAY], _user(request), direction, limit=limit, offset=offset)
    return _json({"messages": [_summary(row) for row in rows]})


async def get_message(request: web.Request) -> web.Response:
    row = await visible_message(request.app[GATEWAY], _user(request), request.match_info["id"])
    return _json(_summary(row))


async def open_message_route(request: web.Request) -> web.Response:
    body = await _read_json(request)
    purpose = body.get("purpose", "review")
    if not isinstance(purpose, str):
        raise InvalidMessage("purpose must be a short lowercase word, e.g. 'review'")
    opened = await open_message(request.app[GATEWAY], _user(request), request.match_info["id"], purpose)
    payload = opened.envelope.payload
    return _json(
        {
            **_summary(opened.row),
            "from": payload.from_,
            "to": payload.to,
            "iat": payload.iat,
            "content": payload.content,
            "attachments": [
                {"position": i, "name": a.name, "media_type": a.media_type, "size": a.size, "sha256": a.sha256}
                for i, a in enumerate(payload.attachments)
            ],
        }
    )


async def get_attachment(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    ref, chunks = await attachment_stream(
        gw, _user(request), request.match_info["id"], int(request.match_info["position"])
    )
    # the media type comes from the sender's signed manifest: served only if it is a plain type/subtype, and never
    # rendered inline or sniffed into something else
    media_type = ref.media_type if _MEDIA_TYPE.fullmatch(ref.media_type) else "application/octet-stream"
    headers = {
        "Content-Type": media_type,
        "Content-Length": str(ref.size),
        "Content-Disposition": "attachment",
        "X-Content-Type-Options": "nosniff",
    }
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    try:
        async for chunk in chunks:
            await response.write(chunk)
    except (ComityError, FileStoreFailed) as failed:
        # the stream failed authentication, or the disk failed, after the headers were sent: no problem document can
        # follow them, so the connection is closed and the client sees a truncated body
        reason = failed.reason if isinstance(failed, FileStoreFailed) else failed.code
        get_logger(message_id=request.match_info["id"]).warning("attachment_download_cut", error=reason)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def _acted_on(request: web.Request, kind: MessageKind, doing: str, *, unseen: str | None = None) -> MessageRow:
    """The message an acknowledgement, a response or a consent is about, if the user may act on it; otherwise the
    attempt is ledgered as the submission's refusal would be, and answered as if there were no such message
    (decision 94), before anything about the message (its direction, its peer, its marking) shows in an answer."""
    gw, user = request.app[GATEWAY], _user(request)
    async with gw.reader.connect() as conn:
        original = await Messages.get(conn, request.match_info["id"])
        try:
            await check_case_access(gw, user, original, conn, doing, unseen=unseen)
        except AccessRefused as refused:
            error: AccessRefused | None = refused
        else:
            error = None
    if error is not None:
        await ledger_submit_refusal(
            gw, f"user:{user.username}", error, to=original.peer, kind=kind, marking=original.marking
        )
        raise error
    return original


async def acknowledge(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    original = await _acted_on(request, MessageKind.ACKNOWLEDGEMENT, "answering")
    body = await _read_json(request)
    if set(body) - ACKNOWLEDGEMENT_MEMBERS:
        raise InvalidMessage("an acknowledgement takes only 'note' and 'confidentiality'")
    if "note" in body and not isinstance(body["note"], str):
        raise InvalidMessage("'note' must be a string")
    content: dict[str, Any] = {"note": body["note"]} if "note" in body else {}
    if "confidentiality" in body:  # art. 46(20): whether we can keep the request confidential
        content["confidentiality"] = body["confidentiality"]  # checked before sealing (gateway/policy.py)
    draft = Draft(
        to=original.peer,
        kind=MessageKind.ACKNOWLEDGEMENT,
        marking=original.marking,
        content=content,
        in_reply_to=original.id,
    )
    message_id = await submit_message(gw, _user(request), draft)
    return _json({"id": message_id, "state": "queued"}, status=202)


async def respond(request: web.Request) -> web.Response:
    original = await _acted_on(request, MessageKind.RESPONSE, "answering")
    return await _submit(request, to=original.peer, kind="response", in_reply_to=original.id)


async def timeline(request: web.Request) -> web.Response:
    message_id = request.match_info["id"]
    await visible_message(request.app[GATEWAY], _user(request), message_id)
    events = await message_events(request.app[GATEWAY], _user(request), message_id)
    milestones = build_timeline(message_id, events)
    return _json(
        {
            "message_id": message_id,
            "milestones": [
                {"name": m.name, "time": format_time(m.time), "actor": m.actor, "since_previous_s": m.since_previous}
                for m in milestones
            ],
            "events": events,
        }
    )


async def consent(request: web.Request) -> web.Response:
    """As originator, consent to the content of a message we sent travelling on to a third authority."""
    gw = request.app[GATEWAY]
    original = await _acted_on(request, MessageKind.CONSENT, "consenting about")
    if original.direction != "out":
        raise InvalidMessage("only the originator of a message consents to its onward use")
    recipient = (await _read_json(request)).get("recipient")
    if not isinstance(recipient, str):
        raise InvalidMessage("send {'recipient': '<authority id>'}: the authority the content may go to")
    # an authority the directory does not list yet may be named: it can receive the content only once listed
    if validate_authority_id(recipient) in (gw.authority_id, original.peer):
        raise InvalidMessage("'recipient' must be a third authority: neither this one nor the one the message went to")
    draft = Draft(
        to=original.peer,
        kind=MessageKind.CONSENT,
        marking=original.marking,
        content={"consent": {"message_id": original.id, "recipient": recipient}},
    )
    message_id = await submit_message(gw, _user(request), draft)
    return _json({"id": message_id, "state": "queued"}, status=202)


async def assign_case(request: web.Request) -> web.Response:
    """A supervisor assigns (or reassigns, with "replace") an officer to a case; ledgered."""
    gw, supervisor = request.app[GATEWAY], _user(request)
    case_id = request.match_info["id"]
    body = await _read_json(request)
    username, replace = body.get("username"), body.get("replace", False)
    if not isinstance(username, str) or not isinstance(replace, bool):
        raise InvalidMessage("send {'username': '<officer>', 'replace': false}")
    async with gw.reader.connect() as conn:
        case = await Cases.get(conn, case_id)
        check_supervising(gw, supervisor, case, await case_marking(conn, case_id))  # first: the rest describes it
        officer = await Users.by_name(conn, username)
    if officer.role not in ("officer", "supervisor"):  # her own clearance is checked whenever she acts
        raise InvalidMessage(f"{username} is not an officer")

    async def unit(tx: Tx) -> Finish[list[str]]:
        now = tx.clock()
        previous = await Cases.assignee_names(tx.conn, case_id) if replace else []
        await Cases.assign(
            tx.conn, case_id, officer.id, supervisor.username, now, unit=supervisor.unit, replace=replace
        )
        actor = f"user:{supervisor.username}"
        for name in previous:  # a reassignment names the officers it took off the case
            if name != username:
                tx.record(EventType.CASE_UNASSIGNED, actor, message_id=case_id, subject=f"user:{name}")
        tx.record(EventType.CASE_ASSIGNED, actor, message_id=case_id, subject=f"user:{username}")
        return await done([name for name in previous if name != username])

    previous = await gw.commit(unit)
    return _json({"case_id": case_id, "assigned": username, "replaced": replace, "previous": previous})


async def case_event(request: web.Request) -> web.Response:
    """An officer moves a case through its life cycle; the move is ledgered and reported to the counterpart."""
    gw, user = request.app[GATEWAY], _user(request)
    moved = await apply_case_event(gw, user, request.match_info["id"], await _read_json(request))
    return _json(moved)


async def status_query(request: web.Request) -> web.Response:
    """The requesting officer asks the requested gateway where the case stands (art. 46(24)); it answers by itself."""
    gw = request.app[GATEWAY]
    case_id = request.match_info["id"]
    async with gw.reader.connect() as conn:
        await Cases.get(conn, case_id)
    opening = await _acted_on(request, MessageKind.STATUS_QUERY, "querying", unseen=f"no case {case_id}")
    if opening.direction != "out" or opening.kind != MessageKind.REQUEST.value:
        raise InvalidMessage("a status query is about a request we sent")
    draft = Draft(
        to=opening.peer,
        kind=MessageKind.STATUS_QUERY,
        marking=opening.marking,
        content={"status_query": {"case_id": case_id}},
        in_reply_to=case_id,
    )
    message_id = await submit_message(gw, _user(request), draft)
    return _json({"id": message_id, "state": "queued"}, status=202)


async def me(request: web.Request) -> web.Response:
    user = _user(request)
    return _json(
        {
            "username": user.username,
            "role": user.role,
            "authority": request.app[GATEWAY].authority_id,
            "clearance": user.clearance,
            "caveats": list(user.caveats),
            "unit": user.unit,
            "scopes": sorted(user.scopes),
        }
    )


def api_routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/me", me),
        web.post("/v1/messages", post_message),
        web.get("/v1/messages", list_messages),
        web.get("/v1/messages/{id}", get_message),
        web.post("/v1/messages/{id}/open", open_message_route),
        web.get("/v1/messages/{id}/attachments/{position:[0-9]+}", get_attachment),
        web.post("/v1/messages/{id}/acknowledge", acknowledge),
        web.post("/v1/messages/{id}/respond", respond),
        web.get("/v1/messages/{id}/timeline", timeline),
        web.post("/v1/messages/{id}/consent", consent),
        web.post("/v1/cases/{id}/assign", assign_case),
        web.post("/v1/cases/{id}/events", case_event),
        web.post("/v1/cases/{id}/status-query", status_query),
        *casework_routes(),
    ]
