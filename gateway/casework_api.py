"""The case-work routes of the local API (gateway/casework.py does the work) and their OpenAPI paths.

* ``GET /v1/cases/{id}/work``: assignees, next action, flags, dates and tasks, the oral request;
* ``PUT /v1/cases/{id}/next-action``, ``POST /v1/cases/{id}/flags``, ``DELETE /v1/cases/{id}/flags/{flag}``;
* ``POST /v1/cases/{id}/dates``, ``POST /v1/cases/{id}/dates/{item}/done``;
* ``POST /v1/cases/{id}/unassign`` (a supervisor of the case's unit);
* ``POST /v1/work/oral-requests`` (art. 46(14)); ``GET /v1/work/overdue``, ``GET /v1/work/upcoming?days=N``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import casework
from gateway.committer import Finish, Tx, done
from gateway.federation import GATEWAY
from gateway.openapi_parts import ID_PARAMETER as _ID
from gateway.openapi_parts import PROBLEM as _PROBLEM
from gateway.openapi_parts import json_ok
from gateway.params import bounded_param
from gateway.policy import case_marking, check_supervising
from protocol.casework import MAX_WINDOW_DAYS
from protocol.errors import InvalidMessage
from protocol.events import EventType
from store.cases import Cases
from store.errors import NotFound
from store.users import User, Users

__all__ = ["CASEWORK_OPENAPI_PATHS", "casework_routes"]


def _user(request: web.Request) -> User:
    from gateway.api import USER  # gateway.api imports this module

    user = request[USER]
    assert isinstance(user, User)
    return user


async def _body(request: web.Request) -> dict[str, Any]:
    from gateway.api import _read_json  # the one JSON body reader

    return await _read_json(request)


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def get_work(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return _json(await casework.case_work(gw, _user(request), request.match_info["id"]))


async def put_next_action(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return _json(await casework.set_next_action(gw, _user(request), request.match_info["id"], await _body(request)))


async def post_flag(request: web.Request) -> web.Response:
    body = await _body(request)
    if set(body) - {"flag"}:
        raise InvalidMessage("send {'flag': '<flag>'}")
    gw = request.app[GATEWAY]
    return _json(await casework.set_flag(gw, _user(request), request.match_info["id"], body.get("flag"), on=True))


async def delete_flag(request: web.Request) -> web.Response:
    gw, info = request.app[GATEWAY], request.match_info
    return _json(await casework.set_flag(gw, _user(request), info["id"], info["flag"], on=False))


async def post_date(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    added = await casework.add_date(gw, _user(request), request.match_info["id"], await _body(request))
    return _json(added, status=201)


async def post_date_done(request: web.Request) -> web.Response:
    gw, info = request.app[GATEWAY], request.match_info
    if len(info["item"]) > 9:  # beyond any row id (and PostgreSQL's integer)
        raise NotFound(f"case {info['id']} has no date or task {info['item'][:12]}")
    item = int(info["item"])
    return _json(await casework.complete_date(gw, _user(request), info["id"], item, await _body(request)))


async def post_oral_request(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return _json(await casework.record_oral_request(gw, _user(request), await _body(request)), status=201)


async def get_overdue(request: web.Request) -> web.Response:
    if set(request.query) - {"limit", "after"}:
        raise InvalidMessage("GET /v1/work/overdue takes only 'limit' and 'after'")
    items, following = await _due_page(request, days=None)
    return _json({"items": items, "next": following})


async def get_upcoming(request: web.Request) -> web.Response:
    if set(request.query) - {"days", "limit", "after"}:
        raise InvalidMessage("GET /v1/work/upcoming takes only 'days', 'limit' and 'after'")
    days = bounded_param(request.query, "days", 7, 0, MAX_WINDOW_DAYS)
    items, following = await _due_page(request, days=days)
    return _json({"days": days, "items": items, "next": following})


async def _due_page(request: web.Request, *, days: int | None) -> tuple[list[dict[str, Any]], str | None]:
    limit = bounded_param(request.query, "limit", casework.DUE_LIST_LIMIT, 1, casework.MAX_DUE_LIST_LIMIT)
    after = casework.due_cursor(request.query.get("after"))
    return await casework.due_list(request.app[GATEWAY], _user(request), days=days, limit=limit, after=after)


async def unassign(request: web.Request) -> web.Response:
    """A supervisor of the case's unit takes an officer off a case; ledgered."""
    gw, supervisor = request.app[GATEWAY], _user(request)
    case_id = request.match_info["id"]
    body = await _body(request)
    username = body.get("username")
    if not isinstance(username, str) or set(body) - {"username"}:
        raise InvalidMessage("send {'username': '<officer>'}")
    async with gw.reader.connect() as conn:
        case = await Cases.get(conn, case_id)
        check_supervising(gw, supervisor, case, await case_marking(conn, case_id))  # first: the rest describes it
        officer = await Users.by_name(conn, username)

    async def unit(tx: Tx) -> Finish[None]:
        if not await Cases.unassign(tx.conn, case_id, officer.id):
            raise NotFound(f"{username} is not assigned to case {case_id}")
        tx.record(
            EventType.CASE_UNASSIGNED, f"user:{supervisor.username}", message_id=case_id, subject=f"user:{username}"
        )
        return await done(None)

    await gw.commit(unit)
    return _json({"case_id": case_id, "unassigned": username})


def casework_routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/cases/{id}/work", get_work),
        web.put("/v1/cases/{id}/next-action", put_next_action),
        web.post("/v1/cases/{id}/flags", post_flag),
        web.delete("/v1/cases/{id}/flags/{flag}", delete_flag),
        web.post("/v1/cases/{id}/dates", post_date),
        web.post("/v1/cases/{id}/dates/{item:[0-9]+}/done", post_date_done),
        web.post("/v1/cases/{id}/unassign", unassign),
        web.post("/v1/work/oral-requests", post_oral_request),
        web.get("/v1/work/overdue", get_overdue),
        web.get("/v1/work/upcoming", get_upcoming),
    ]


# --- OpenAPI (gateway/openapi.py merges these) ---------------------------------------------------------------------

_ERRORS = {"400": _PROBLEM, "401": _PROBLEM, "403": _PROBLEM, "404": _PROBLEM}
_DAY = {"type": "string", "format": "date"}
_NOTE = {"type": ["string", "null"], "maxLength": 2000}
_ITEM = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "case_id": {"type": "string"},
        "kind": {"type": "string"},
        "due": _DAY,
        "state": {"enum": ["open", "overdue", "done"]},
        "note": _NOTE,
        "created_by": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "done_by": {"type": ["string", "null"]},
        "done_at": {"type": ["string", "null"], "format": "date-time"},
    },
}


def _ok(description: str, schema: dict[str, Any] | None = None, status: str = "200") -> dict[str, Any]:
    return {status: json_ok(description, schema or {"type": "object"}), **_ERRORS}


def _json_body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_LIST = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": _ITEM},
        # where the next page starts (its 'after'), or null on the last page
        "next": {"type": ["string", "null"], "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}:[0-9]+$"},
        "days": {"type": "integer", "description": "upcoming only: the window the items were chosen in"},
    },
}
_PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 500}},
    {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "the 'next' of the page before"},
]

CASEWORK_OPENAPI_PATHS: dict[str, Any] = {
    "/v1/cases/{id}/work": {
        "get": {
            "summary": "A case's work: assignees, next action, flags, critical dates and tasks, oral request",
            "parameters": [_ID],
            "responses": _ok("The case's work"),
        }
    },
    "/v1/cases/{id}/next-action": {
        "put": {
            "summary": "Set (or clear, with null) the next action of a case; ledgered without its text",
            "parameters": [_ID],
            "requestBody": _json_body({"text": _NOTE}),
            "responses": _ok("Set"),
        }
    },
    "/v1/cases/{id}/flags": {
        "post": {
            "summary": "Set a flag on a case (e.g. ministerial-decision-required); ledgered",
            "parameters": [_ID],
            "requestBody": _json_body({"flag": {"type": "string"}}, ["flag"]),
            "responses": _ok("Set (changed: false if it already was)"),
        }
    },
    "/v1/cases/{id}/flags/{flag}": {
        "delete": {
            "summary": "Clear a flag; ledgered",
            "parameters": [_ID, {"name": "flag", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _ok("Cleared (changed: false if it was not set)"),
        }
    },
    "/v1/cases/{id}/dates": {
        "post": {
            "summary": "Add a critical date or task; safe-conduct-ends may be computed from informed_on (art. 46(27))",
            "parameters": [_ID],
            "requestBody": _json_body(
                {
                    "kind": {"type": "string"},
                    "due": _DAY,
                    "informed_on": _DAY,
                    "agreed_days": {"type": "integer", "minimum": 1},
                    "note": _NOTE,
                },
                ["kind"],
            ),
            "responses": {**_ok("Added", _ITEM, "201"), "409": _PROBLEM},  # the case is closed (decision 105)
        }
    },
    "/v1/cases/{id}/dates/{item}/done": {
        "post": {
            "summary": "Mark a date or task done; a confirm-in-writing task may name the written request",
            "parameters": [
                _ID,
                {"name": "item", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}},
            ],
            "requestBody": _json_body({"message_id": {"type": "string", "format": "uuid"}}),
            "responses": {**_ok("Done", _ITEM), "409": _PROBLEM},
        }
    },
    "/v1/cases/{id}/unassign": {
        "post": {
            "summary": "A supervisor takes an officer off a case (ledgered)",
            "parameters": [_ID],
            "requestBody": _json_body({"username": {"type": "string"}}, ["username"]),
            "responses": _ok("Unassigned"),
        }
    },
    "/v1/work/oral-requests": {
        "post": {
            "summary": "Record an urgent request made or received orally (art. 46(14)): a new case and a task to "
            "confirm it in writing",
            "requestBody": _json_body(
                {
                    "peer": {"type": "string"},
                    "direction": {"enum": ["received", "made"]},
                    "on": _DAY,
                    "marking": {"type": "object"},
                    "note": _NOTE,
                },
                ["peer", "direction"],
            ),
            "responses": _ok("Recorded", {"type": "object"}, "201"),
        }
    },
    "/v1/work/overdue": {
        "get": {
            "summary": "Open dates and tasks past due, of the cases not closed that the caller may act on",
            "parameters": _PAGE,
            "responses": _ok("Overdue items, oldest first, a page at a time", _LIST),
        }
    },
    "/v1/work/upcoming": {
        "get": {
            "summary": "Open dates and tasks due from today up to 'days' ahead (default 7), of the cases not closed "
            "that the caller may act on",
            "parameters": [
                {"name": "days", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 366}},
                *_PAGE,
            ],
            "responses": _ok("Upcoming items, soonest first, a page at a time", _LIST),
        }
    },
}
