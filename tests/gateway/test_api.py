"""The officer API: bearer tokens, roles, problem+json errors, and the OpenAPI document matching the router."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import structlog
from sqlalchemy import select

from gateway.api import ACKNOWLEDGEMENT_MEMBERS, DRAFT_MEMBERS, api_routes
from gateway.auth import auth_routes
from gateway.cli.request import example_request
from gateway.consultations_api import consultation_routes
from gateway.ledger_api import ledger_routes
from gateway.logs import configure_logging
from gateway.openapi import openapi_document
from gateway.stats_api import stats_routes
from protocol.requests import RequestType
from store.db import make_engine, make_reader
from store.tables import tokens
from tests.gateway.conftest import Pair, issue_token
from tests.gateway.test_exchange import REQUEST, wait_for


def _served_paths() -> set[tuple[str, str]]:
    served = set()
    for route in [*api_routes(), *consultation_routes(), *ledger_routes(), *auth_routes(), *stats_routes()]:
        assert isinstance(route, aiohttp.web.RouteDef)
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", route.path)
        served.add((route.method.lower(), path))
    return served | {("get", p) for p in ("/v1/openapi.json", "/healthz", "/readyz", "/metrics")}


def test_openapi_documents_exactly_what_is_served() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert documented == _served_paths()


def _schema(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema, its references resolved within the document."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def test_openapi_bodies_name_exactly_the_members_the_handlers_take() -> None:
    document = openapi_document()
    draft = document["components"]["schemas"]["Draft"]
    assert draft["additionalProperties"] is False and set(draft["properties"]) == DRAFT_MEMBERS
    acknowledge = document["paths"]["/v1/messages/{id}/acknowledge"]["post"]
    body = acknowledge["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False and set(body["properties"]) == ACKNOWLEDGEMENT_MEMBERS
    assert {"404", "422"} <= set(acknowledge["responses"])  # a hidden request; a 46(20) request without an answer


async def test_what_the_message_routes_serve_matches_the_openapi_document(pair: Pair) -> None:
    """Summaries as served, sent and received, validate against the document's schema, which admits no member it
    does not name; an acknowledgement with an answer outside its enum is refused before anything is sent, even to
    a request that does not ask for one (art. 46(20)): the receiver would refuse it."""
    document = openapi_document()
    summary = _schema(document, "MessageSummary")
    unasked = {**REQUEST, "marking": {"level": "CONFIDENTIAL", "caveats": []}}
    status, body = await pair.ar.call("POST", "/v1/messages", json=unasked)
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    for side, box in ((pair.ar, "outbox"), (pair.au, "inbox")):
        status, one = await side.call("GET", f"/v1/messages/{body['id']}")
        assert status == 200, one
        summary.validate(one)
        status, listed = await side.call("GET", f"/v1/messages?box={box}")
        assert status == 200 and listed["messages"], listed
        for item in listed["messages"]:
            summary.validate(item)
    with pytest.raises(jsonschema.ValidationError):
        summary.validate({**one, "undocumented": 1})
    # a thread's messages, one sharing a draft whose checklist the detail shows
    draft = example_request(RequestType.MLA_CRIMINAL).to_json()
    status, started = await pair.ar.call(
        "POST", "/v1/consultations", json={"to": "au.ag", "content": {"text": "before we ask"}, "draft_request": draft}
    )
    assert status == 202, started
    await wait_for(pair.ar, started["id"], "delivered")
    status, thread = await pair.au.call("GET", f"/v1/consultations/{started['id']}")
    assert status == 200 and "draft_check" in thread["messages"][0], thread
    _schema(document, "Consultation").validate(thread)

    before = await pair.au.call("GET", "/v1/messages?box=outbox")
    for bad in ({"confidentiality": "maybe"}, {"confidentiality": {"x": [1]}}, {"note": 7}, {"notes": "typo"}):
        status, problem = await pair.au.call("POST", f"/v1/messages/{body['id']}/acknowledge", json=bad)
        assert status == 400 and problem["code"] == "invalid-message", (bad, problem)
    assert await pair.au.call("GET", "/v1/messages?box=outbox") == before  # nothing queued
    status, original = await pair.au.call("GET", f"/v1/messages/{body['id']}")
    assert status == 200 and original["state"] != "acknowledged", original


async def test_openapi_is_served_without_a_token(pair: Pair) -> None:
    async with aiohttp.ClientSession() as session, session.get(pair.ar.api + "/v1/openapi.json") as response:
        assert response.status == 200
        assert (await response.json())["info"]["title"] == "Comity local API"


async def _anonymous(pair: Pair, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.request(method, pair.ar.api + path, **kwargs) as response:
        assert response.content_type == "application/problem+json"
        return response.status, await response.json(content_type=None)


async def test_requests_without_a_valid_token_get_problem_json(pair: Pair) -> None:
    status, problem = await _anonymous(pair, "GET", "/v1/messages")
    assert status == 401
    assert problem["type"] == "urn:comity:problem:unauthenticated"
    assert problem["code"] == "unauthenticated" and problem["status"] == 401
    status, problem = await _anonymous(pair, "GET", "/v1/messages", headers={"Authorization": "Bearer cmt_nope"})
    assert status == 401 and "unknown, expired or revoked" in problem["detail"]


async def test_tokens_are_stored_hashed(pair: Pair) -> None:
    async with pair.ar.gw.engine.connect() as conn:
        stored = [row.token_hash for row in await conn.execute(select(tokens.c.token_hash))]
    assert stored and pair.ar.token not in stored
    assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in stored)


async def test_bad_input_is_a_typed_problem_and_changes_nothing(pair: Pair) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({**REQUEST, "to": "zz.nobody"}, "unknown-authority"),
        ({**REQUEST, "kind": "gossip"}, "invalid-message"),
        ({**REQUEST, "marking": {"level": "TOP SECRET", "caveats": []}}, "marking-refused"),
        ({**REQUEST, "to": "ar.mj"}, "invalid-message"),
        ({**REQUEST, "surprise": 1}, "invalid-message"),
    ]
    for body, code in cases:
        status, problem = await pair.ar.call("POST", "/v1/messages", json=body)
        assert problem["code"] == code, (body, problem)
        assert 400 <= status < 500
    status, problem = await pair.ar.call("POST", "/v1/messages", data=b'{"to": "au.ag", "to": "au.ag"}')
    assert problem["code"] == "invalid-message" and "duplicate" in problem["detail"]
    status, listing = await pair.ar.call("GET", "/v1/messages?box=outbox")
    assert listing["messages"] == []


async def test_an_auditor_cannot_open_content(pair: Pair) -> None:
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    await wait_for(pair.ar, body["id"], "delivered")
    auditor = await asyncio.to_thread(issue_token, pair.ar.provisioned.config, "audrey", "auditor")
    headers = {"Authorization": f"Bearer {auditor}"}
    status, problem = await pair.ar.call("POST", f"/v1/messages/{body['id']}/open", json={}, headers=headers)
    assert status == 403 and problem["code"] == "forbidden"
    status, _ = await pair.ar.call("GET", f"/v1/messages/{body['id']}/attachments/0", headers=headers)
    assert status == 403


async def test_unknown_message_is_404(pair: Pair) -> None:
    status, problem = await pair.ar.call("GET", "/v1/messages/3a6111c6-c6a6-4c2d-9686-353aee01f1d0")
    assert status == 404 and problem["code"] == "not-found"
    status, problem = await pair.ar.call("GET", "/v1/nothing-here")
    assert status == 404 and problem["type"] == "urn:comity:problem:not-found"


async def test_health_readiness_and_metrics(pair: Pair) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(pair.ar.api + "/healthz") as response:
            assert response.status == 200
        async with session.get(pair.ar.api + "/readyz") as response:
            assert (await response.json())["directory_serial"] == 1
        async with session.get(pair.ar.api + "/metrics") as response:  # decision 122: not without a token
            assert response.status == 401 and response.content_type == "application/problem+json"
            assert "comity_" not in await response.text()
    status, problem = await pair.ar.call("GET", "/metrics")  # an officer's token: no metrics:read
    assert status == 403 and problem["code"] == "forbidden", problem
    assert 'comity_http_requests_total{listener="api"' in await pair.ar.metrics()


async def test_a_failing_database_is_a_503_to_retry_and_the_gateway_recovers(pair: Pair, tmp_path: Path) -> None:
    """The database going away (its disk, or its server) is not the request's fault: 503 store-unavailable with
    Retry-After, a warning without the driver's message, no traceback; once it is back, the next call succeeds."""
    gw = pair.ar.gw
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'comity.db'}"
        if gw.engine.dialect.name == "sqlite"
        else "postgresql+asyncpg://postgres@127.0.0.1:1/test"  # nothing listens there
    )
    gone = make_engine(url)
    working, gw.reader = gw.reader, make_reader(url, gone)  # every API call first looks its token up there
    buffer = io.StringIO()
    saved = structlog.get_config()
    configure_logging(level="info", stream=buffer)
    try:
        assert pair.ar.session is not None
        async with pair.ar.session.get(pair.ar.api + "/v1/messages") as response:
            assert response.status == 503
            assert response.content_type == "application/problem+json"
            assert response.headers["Retry-After"] == "1"
            problem = await response.json(content_type=None)
        assert problem["code"] == "store-unavailable" and problem["type"] == "urn:comity:problem:store-unavailable"
    finally:
        structlog.configure(**saved)
        await gw.reader.dispose()
        await gone.dispose()
        gw.reader = working
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    warnings = [line for line in lines if line["event"] == "store_unavailable"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning" and warnings[0]["path"] == "/v1/messages"
    assert not any("exception" in line or line["event"] == "unhandled_error" for line in lines)
    assert "127.0.0.1:1" not in buffer.getvalue() and "gone" not in buffer.getvalue()

    status, _ = await pair.ar.call("GET", "/v1/messages")
    assert status == 200
