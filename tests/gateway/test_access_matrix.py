"""The written access matrix (docs/markings.md, "Access matrix") is what the API does.

The test reads the table from the document, so the document cannot drift: it must list exactly the routes the API
app serves, agree with gateway/auth.py ROUTE_SCOPES and store/users.py ROLE_SCOPES (and the ledger API's
LEDGER_ROLES), and every route walked with every role (officer, supervisor, auditor, admin) and without a token must
answer as the table says. No answer to an auditor, an admin or an anonymous caller may carry content: a canary is
planted in the subject, text and attachment of the message they are pointed at.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway.api import PUBLIC_PATHS
from gateway.auth import PUBLIC_AUTH_PATHS, ROUTE_SCOPES
from gateway.cli.request import example_request
from gateway.ledger_api import LEDGER_ROLES
from protocol.requests import RequestType
from store.users import ROLE_SCOPES
from tests.gateway.conftest import Pair, Side, issue_token
from tests.gateway.test_exchange import wait_for
from tests.gateway.test_markings import as_user, canary, close_sessions, post_form, secret_content, send

DOC = Path(__file__).resolve().parents[2] / "docs" / "markings.md"
ROLES = ("officer", "supervisor", "auditor", "admin")
COLUMNS = (*ROLES, "anonymous")
Route = tuple[str, str]


@dataclass(frozen=True)
class Row:
    scope: str  # a scope name, "any token" or "public"
    access: Mapping[str, str]  # column -> allowed | forbidden | unauthenticated


def read_matrix(text: str) -> dict[Route, Row]:
    """The table under '## Access matrix': | method | route | scope | officer | ... | anonymous |."""
    section = text.split("## Access matrix", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["method", "route", "scope", *COLUMNS], header
    matrix: dict[Route, Row] = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        method, route, scope, *access = cells
        assert len(access) == len(COLUMNS), line
        assert set(access) <= {"allowed", "forbidden", "unauthenticated"}, line
        assert (method, route) not in matrix, f"{method} {route} is listed twice"
        matrix[(method, route)] = Row(scope, dict(zip(COLUMNS, access, strict=True)))
    return matrix


def expected_access(route: Route, scope: str, column: str) -> str:
    """What ROUTE_SCOPES, ROLE_SCOPES and LEDGER_ROLES decide, independently of the document."""
    if scope == "public":
        return "allowed"
    if column == "anonymous":
        return "unauthenticated"
    needed = ROUTE_SCOPES[route]
    if needed is not None and needed not in ROLE_SCOPES[column]:
        return "forbidden"
    if route[1].startswith("/v1/ledger/") and column not in LEDGER_ROLES:
        return "forbidden"
    return "allowed"


def served_routes(side: Side) -> set[Route]:
    assert side.running is not None
    api = side.running.runners[1].app
    return {
        (route.method, route.resource.canonical)
        for route in api.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_the_matrix_agrees_with_route_scopes_and_role_scopes() -> None:
    matrix = read_matrix(DOC.read_text(encoding="utf-8"))
    public = PUBLIC_PATHS | PUBLIC_AUTH_PATHS
    for route, row in matrix.items():
        if row.scope == "public":
            assert route[1] in public, route
        else:
            assert route in ROUTE_SCOPES, f"{route} is in the document but has no scope in ROUTE_SCOPES"
            assert ROUTE_SCOPES[route] == (None if row.scope == "any token" else row.scope), route
        for column in COLUMNS:
            assert row.access[column] == expected_access(route, row.scope, column), (route, column)
    assert set(ROUTE_SCOPES) <= set(matrix), set(ROUTE_SCOPES) - set(matrix)


@dataclass(frozen=True)
class Call:
    path: str
    kwargs: dict[str, Any]
    success: frozenset[int]


async def test_every_route_with_every_role_answers_as_the_matrix_says(pair: Pair) -> None:
    matrix = read_matrix(DOC.read_text(encoding="utf-8"))
    assert served_routes(pair.au) == set(matrix), served_routes(pair.au) ^ set(matrix)

    # what there is to reach on au.ag: a received request with an attachment (canaries), a sent message
    mark = canary()
    marking = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    draft = {"to": "au.ag", "kind": "request", "marking": marking, "content": secret_content(mark)}
    status, body = await post_form(pair.ar, "/v1/messages", draft, mark.encode() * 10, f"{mark}.pdf")
    assert status == 202, body
    incoming = body["id"]
    await wait_for(pair.ar, incoming, "delivered")
    outgoing = await send(pair.au, {"to": "ar.mj", "content": {"text": "ours"}}, delivered_to=pair.ar)
    status, summary = await pair.au.call("GET", f"/v1/messages/{incoming}")
    case_id = summary["case_id"]
    outgoing_case = (await pair.au.call("GET", f"/v1/messages/{outgoing}"))[1]["case_id"]

    users: dict[str, Side] = {
        "officer": await as_user(pair.au, ("olga", "officer")),
        "supervisor": pair.au,  # bruce
        "auditor": await as_user(pair.au, ("audrey", "auditor"), clearance="UNCLASSIFIED", caveats=()),
        "admin": await as_user(pair.au, ("adam", "admin"), clearance="UNCLASSIFIED", caveats=()),
    }
    anonymous = Side(pair.au.provisioned, "", pair.au.running, aiohttp.ClientSession())
    # the matrix is about roles: the officer is assigned to both cases (case assignment is tested on its own)
    # a consultation thread ar.mj started with au.ag (a case of its own on au.ag), and a complete formal request
    status, body = await pair.ar.call(
        "POST", "/v1/consultations", json={"to": "au.ag", "marking": marking, "content": secret_content(mark)}
    )
    assert status == 202, body
    thread_id = body["id"]
    await wait_for(pair.ar, thread_id, "delivered")
    formal = example_request(RequestType.MLA_CRIMINAL).to_json()
    for assigned in (case_id, outgoing_case, thread_id):
        status, body = await pair.au.call("POST", f"/v1/cases/{assigned}/assign", json={"username": "olga"})
        assert status == 200, body
    # case work: a date to mark done, and a second officer to take off the case
    status, body = await pair.au.call(
        "POST", f"/v1/cases/{case_id}/dates", json={"kind": "hearing", "due": "2027-01-15"}
    )
    assert status == 201, body
    item = body["id"]
    await asyncio.to_thread(issue_token, pair.au.provisioned.config, "uma")
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/assign", json={"username": "uma"})
    assert status == 200, body

    ok, accepted = frozenset({200}), frozenset({202})
    calls: dict[Route, Call] = {
        ("GET", "/v1/me"): Call("/v1/me", {}, ok),
        ("GET", "/v1/messages"): Call("/v1/messages?box=inbox", {}, ok),
        ("GET", "/v1/messages/{id}"): Call(f"/v1/messages/{incoming}", {}, ok),
        ("GET", "/v1/messages/{id}/timeline"): Call(f"/v1/messages/{incoming}/timeline", {}, ok),
        ("POST", "/v1/messages"): Call(
            "/v1/messages", {"json": {"to": "ar.mj", "marking": marking, "content": {"text": "x"}}}, accepted
        ),
        ("POST", "/v1/messages/{id}/acknowledge"): Call(
            f"/v1/messages/{incoming}/acknowledge", {"json": {"confidentiality": "can-comply"}}, accepted
        ),
        ("POST", "/v1/messages/{id}/respond"): Call(
            f"/v1/messages/{incoming}/respond", {"json": {"marking": marking, "content": {"text": "r"}}}, accepted
        ),
        ("POST", "/v1/messages/{id}/consent"): Call(
            f"/v1/messages/{outgoing}/consent", {"json": {"recipient": "br.mjsp"}}, accepted
        ),
        ("POST", "/v1/messages/{id}/open"): Call(f"/v1/messages/{incoming}/open", {"json": {"purpose": "audit"}}, ok),
        ("GET", "/v1/messages/{id}/attachments/{position}"): Call(f"/v1/messages/{incoming}/attachments/0", {}, ok),
        ("POST", "/v1/cases/{id}/assign"): Call(f"/v1/cases/{case_id}/assign", {"json": {"username": "olga"}}, ok),
        # the first caller moves the case; a second gets the illegal transition: both reach the route
        ("POST", "/v1/cases/{id}/events"): Call(
            f"/v1/cases/{case_id}/events", {"json": {"event": "acknowledge"}}, frozenset({200, 409})
        ),
        ("POST", "/v1/cases/{id}/status-query"): Call(
            f"/v1/cases/{outgoing_case}/status-query", {"json": {}}, accepted
        ),
        ("GET", "/v1/cases/{id}/work"): Call(f"/v1/cases/{case_id}/work", {}, ok),
        ("PUT", "/v1/cases/{id}/next-action"): Call(f"/v1/cases/{case_id}/next-action", {"json": {"text": "t"}}, ok),
        ("POST", "/v1/cases/{id}/flags"): Call(f"/v1/cases/{case_id}/flags", {"json": {"flag": "urgent"}}, ok),
        ("DELETE", "/v1/cases/{id}/flags/{flag}"): Call(f"/v1/cases/{case_id}/flags/urgent", {}, ok),
        ("POST", "/v1/cases/{id}/dates"): Call(
            f"/v1/cases/{case_id}/dates", {"json": {"kind": "deadline", "due": "2027-02-01"}}, frozenset({201})
        ),
        # the first caller marks it done; a second gets the conflict: both reach the route
        ("POST", "/v1/cases/{id}/dates/{item}/done"): Call(
            f"/v1/cases/{case_id}/dates/{item}/done", {"json": {}}, frozenset({200, 409})
        ),
        ("POST", "/v1/cases/{id}/unassign"): Call(
            f"/v1/cases/{case_id}/unassign", {"json": {"username": "uma"}}, frozenset({200, 404})
        ),
        ("POST", "/v1/work/oral-requests"): Call(
            "/v1/work/oral-requests", {"json": {"peer": "ar.mj", "direction": "received"}}, frozenset({201})
        ),
        ("GET", "/v1/work/overdue"): Call("/v1/work/overdue", {}, ok),
        ("GET", "/v1/work/upcoming"): Call("/v1/work/upcoming?days=30", {}, ok),
        ("GET", "/v1/consultations"): Call("/v1/consultations", {}, ok),
        ("GET", "/v1/consultations/{id}"): Call(f"/v1/consultations/{thread_id}", {}, ok),
        ("POST", "/v1/consultations"): Call(
            "/v1/consultations", {"json": {"to": "ar.mj", "marking": marking, "content": {"text": "x"}}}, accepted
        ),
        ("POST", "/v1/consultations/{id}/messages"): Call(
            f"/v1/consultations/{thread_id}/messages", {"json": {"content": {"text": "r"}}}, accepted
        ),
        # the first caller converts the thread; a second is told it was converted: both reach the route
        ("POST", "/v1/consultations/{id}/convert"): Call(
            f"/v1/consultations/{thread_id}/convert", {"json": {"request": formal}}, frozenset({202, 409})
        ),
        ("GET", "/v1/ledger/checkpoint"): Call("/v1/ledger/checkpoint", {}, ok),
        ("GET", "/v1/ledger/checkpoints"): Call("/v1/ledger/checkpoints", {}, ok),
        ("GET", "/v1/ledger/entries"): Call("/v1/ledger/entries?start=0&end=3", {}, ok),
        ("GET", "/v1/ledger/proofs/inclusion"): Call("/v1/ledger/proofs/inclusion?index=0", {}, ok),
        ("GET", "/v1/ledger/proofs/consistency"): Call("/v1/ledger/proofs/consistency?from=1&to=2", {}, ok),
        ("GET", "/v1/stats"): Call("/v1/stats?direction=incoming", {}, ok),
        ("GET", "/v1/stats/{name}"): Call("/v1/stats/by-type?format=csv", {}, ok),
        ("POST", "/v1/auth/login"): Call(
            "/v1/auth/login", {"json": {"username": "nobody", "password": "not the password"}}, frozenset({401})
        ),
        ("GET", "/v1/openapi.json"): Call("/v1/openapi.json", {}, ok),
        ("GET", "/healthz"): Call("/healthz", {}, ok),
        ("GET", "/readyz"): Call("/readyz", {}, ok),
        ("GET", "/metrics"): Call("/metrics", {}, ok),
        ("POST", "/v1/auth/logout"): Call("/v1/auth/logout", {}, frozenset({204})),
    }
    assert set(calls) == set(matrix)
    # logout revokes the token it is called with: walk it last
    order = sorted(calls, key=lambda route: route == ("POST", "/v1/auth/logout"))
    mismatches: list[str] = []
    try:
        for column, side in [*users.items(), ("anonymous", anonymous)]:
            for route in order:
                call = calls[route]
                status, answer = await side.call(route[0], call.path, **call.kwargs)
                text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else json.dumps(answer)
                wanted = matrix[route].access[column]
                if wanted == "allowed":
                    good = status in call.success
                else:
                    good = status == {"forbidden": 403, "unauthenticated": 401}[wanted] and (
                        isinstance(answer, dict) and answer.get("code") == wanted
                    )
                if not good:
                    mismatches.append(f"{column} {route[0]} {call.path}: {status} {text[:200]}, wanted {wanted}")
                if column in ("auditor", "admin", "anonymous"):
                    assert mark not in text, f"{column} got content from {route}"
                    if matrix[route].scope != "public":  # the OpenAPI document describes content, holds none
                        assert not re.search(r'"content"\s*:', text), f"{column} got a content member from {route}"
    finally:
        await close_sessions(users["officer"], users["auditor"], users["admin"], anonymous)
    assert not mismatches, "\n".join(mismatches)
