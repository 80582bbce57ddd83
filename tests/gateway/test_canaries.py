"""No content or subject line reaches logs, error bodies, metric labels or either ledger (a property test).

Hypothesis draws the subject, the text, an attachment's name and its bytes (any Unicode, quotes, control characters,
newlines); each gets a random hex canary appended, so that an escaped copy (JSON ``\\uXXXX``, Prometheus label
escaping) is still found. Each example runs a full exchange through the real gateways (request with an attachment,
open, download, acknowledgement under art. 46(20), response with an attachment, opening on the requesting side) and a
set of bad calls carrying canaries (refusals of the officer API, policy refusals that are ledgered, hostile
deliveries). Then the canaries must appear in none of: the structlog JSON lines and the stdlib log records (debug
level), the problem documents returned, the ``/metrics`` text of both gateways, every ledger entry of both gateways,
the stored envelopes (encrypted at rest) and the attachment files (encrypted at rest).
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import pytest
import structlog
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from gateway.cli.request import example_request
from gateway.context import Gateway
from gateway.logs import configure_logging
from protocol.requests import RequestType, blank_request
from store.tables import messages
from tests.gateway.conftest import Pair, Side
from tests.gateway.test_exchange import wait_for
from tests.gateway.test_markings import hostile_towards, ledger_text, post_form

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
NAME = st.text(st.characters(categories=["L", "N"], include_characters=" -_."), max_size=20)
MARKING = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}


@dataclass
class Logs:
    structured: io.StringIO = field(default_factory=io.StringIO)
    records: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.structured.getvalue() + "\n".join(self.records)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record))


@pytest.fixture
def logs() -> Iterator[Logs]:
    """structlog as production configures it, at debug, into a buffer; stdlib logging (aiohttp, SQLAlchemy,
    asyncio) at debug into a list; both restored afterwards."""
    saved = structlog.get_config()
    captured = Logs()
    configure_logging(level="debug", stream=captured.structured)
    handler = _Collect(captured.records)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        structlog.configure(**saved)


def _forms(value: str) -> set[str]:
    """The ways a string could be written out: as is, and JSON-escaped (ASCII or not)."""
    return {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}


async def _stored_bytes(gw: Gateway) -> list[bytes]:
    async with gw.engine.connect() as conn:
        rows = (await conn.execute(select(messages.c.sealed, messages.c.archive))).all()
    blobs = [bytes(part) for row in rows for part in (row.sealed, row.archive) if part is not None]
    root = gw.settings.attachments_path
    return blobs + [path.read_bytes() for path in root.rglob("*") if path.is_file()]


async def _metrics(side: Side) -> str:
    return await side.metrics()


async def _exchange(pair: Pair, subject: str, text: str, filename: str, data: bytes, answer: str) -> tuple[str, str]:
    """A full exchange; returns (request id, response id)."""
    request = {"to": "au.ag", "kind": "request", "marking": MARKING, "content": {"subject": subject, "text": text}}
    status, body = await post_form(pair.ar, "/v1/messages", request, data, filename)
    assert status == 202, body
    request_id = body["id"]
    await wait_for(pair.ar, request_id, "delivered")
    status, opened = await pair.au.call("POST", f"/v1/messages/{request_id}/open", json={"purpose": "review"})
    assert status == 200 and opened["content"] == request["content"], opened
    assert unquote(opened["attachments"][0]["name"]) == filename  # aiohttp's form percent-encodes non-ASCII names
    status, got = await pair.au.call("GET", f"/v1/messages/{request_id}/attachments/0")
    assert status == 200 and got == data
    status, body = await pair.au.call(
        "POST", f"/v1/messages/{request_id}/acknowledge", json={"confidentiality": "can-comply", "note": answer}
    )
    assert status == 202, body
    await wait_for(pair.ar, request_id, "acknowledged")
    reply = {"marking": MARKING, "content": {"subject": f"Re: {subject}", "text": answer}}
    status, body = await post_form(pair.au, f"/v1/messages/{request_id}/respond", reply, data[::-1], filename)
    assert status == 202, body
    response_id = body["id"]
    await wait_for(pair.ar, request_id, "answered")
    status, opened = await pair.ar.call("POST", f"/v1/messages/{response_id}/open", json={"purpose": "review"})
    assert status == 200 and opened["content"] == reply["content"], opened
    return request_id, response_id


async def _bad_calls(pair: Pair, request_id: str, secret: str) -> list[str]:
    """Refused calls whose bodies carry ``secret``; returns every problem document as text."""
    content = {"subject": secret, "text": secret}
    draft = {"to": "au.ag", "marking": MARKING, "content": content}
    lower = {"level": "UNCLASSIFIED", "caveats": []}
    calls: list[tuple[Side, str, str, dict[str, object]]] = [
        (pair.ar, "POST", "/v1/messages", {"json": {**draft, "to": "zz.nowhere"}}),
        (pair.ar, "POST", "/v1/messages", {"json": {**draft, "marking": {"level": "NOPE", "caveats": []}}}),
        (pair.ar, "POST", "/v1/messages", {"json": {**draft, "marking": {"level": "CONFIDENTIAL", "caveats": ["zz"]}}}),
        (pair.ar, "POST", "/v1/messages", {"json": {**draft, "kind": "gossip"}}),
        (pair.ar, "POST", "/v1/messages", {"json": {**draft, "forwards": [f"x{secret}"]}}),
        (pair.ar, "POST", "/v1/messages", {"json": {**draft, "extra": secret}}),
        (
            pair.ar,
            "POST",
            "/v1/messages",
            {"data": json.dumps(draft)[:-3].encode(), "headers": {"Content-Type": "application/json"}},
        ),
        (pair.au, "POST", f"/v1/messages/{request_id}/respond", {"json": {"marking": lower, "content": content}}),
        (pair.au, "POST", f"/v1/messages/{request_id}/acknowledge", {"json": {"confidentiality": f"maybe {secret}"}}),
        (pair.au, "POST", f"/v1/messages/{request_id}/open", {"json": {"purpose": f"Not A Word {secret}"}}),
        (pair.au, "POST", f"/v1/messages/{request_id}/consent", {"json": {"recipient": f"Not An Id {secret}"}}),
        (
            pair.au,
            "POST",
            "/v1/messages",
            {"json": {**draft, "to": "ar.mj", "forwards": [request_id], "marking": lower}},
        ),
    ]
    problems: list[str] = []
    for side, method, path, kwargs in calls:
        status, body = await side.call(method, path, **kwargs)
        assert 400 <= status < 500, (path, status, body)
        problems.append(json.dumps(body, ensure_ascii=False))
    hostile = hostile_towards(pair.ar, pair.au)
    for payload in (
        hostile.payload(content=content, marking={"level": "CONFIDENTIAL", "caveats": ["zz-unknown"]}),
        hostile.payload(content=content, iat=0),
        hostile.payload(content=content, kind="response", in_reply_to=request_id),
    ):
        answer = await hostile.post(hostile.seal(payload))
        problems.append(answer.raw.decode("utf-8", "replace"))
    return problems


@settings(
    max_examples=5,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: each example runs real gateways for seconds
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(subject=TEXT, text=TEXT, name=NAME, blob=st.binary(max_size=200))
async def test_no_canary_reaches_logs_problems_metrics_or_ledgers(
    pair: Pair, logs: Logs, subject: str, text: str, name: str, blob: bytes
) -> None:
    marks = {part: uuid.uuid4().hex for part in ("subject", "text", "name", "bytes", "answer", "bad")}
    values = {
        "subject": subject + marks["subject"],
        "text": text + marks["text"],
        "name": f"{name}{marks['name']}.pdf",
        "answer": f"{text}{marks['answer']}",
        "bad": f"{subject}{marks['bad']}",
    }
    data = blob + marks["bytes"].encode() + blob
    request_id, _ = await _exchange(pair, values["subject"], values["text"], values["name"], data, values["answer"])
    problems = await _bad_calls(pair, request_id, values["bad"])

    needles = {f"canary {part}": mark for part, mark in marks.items()}
    for part, value in values.items():
        for number, form in enumerate(sorted(_forms(value))):
            if len(form) >= 16:
                needles[f"{part} form {number}"] = form
    outputs = {
        "logs": logs.text(),
        "problem documents": "\n".join(problems),
        "ar.mj metrics": await _metrics(pair.ar),
        "au.ag metrics": await _metrics(pair.au),
        "ar.mj ledger": await ledger_text(pair.ar.gw),
        "au.ag ledger": await ledger_text(pair.au.gw),
    }
    assert "message_submitted" in outputs["logs"], "nothing was logged: the buffer is not where the gateway logs"
    leaks = [f"{needle} in {where}" for where, text in outputs.items() for needle, v in needles.items() if v in text]
    assert not leaks, leaks
    # plaintext exists only in memory: envelopes and attachment files at rest carry no canary either
    for side in (pair.ar, pair.au):
        for blob_at_rest in await _stored_bytes(side.gw):
            assert not any(mark.encode() in blob_at_rest for mark in marks.values()), side.gw.authority_id


async def test_no_consultation_subject_or_text_reaches_logs_problems_or_ledgers(pair: Pair, logs: Logs) -> None:
    """A thread, a reply, a shared draft and its conversion carry canaries in every free-form place; bad calls on
    the consultation routes carry them too. None reaches the logs, the problem documents or either ledger."""
    marks = {part: uuid.uuid4().hex for part in ("subject", "text", "reply", "draft", "formal", "bad")}
    draft = blank_request(RequestType.MLA_CRIMINAL).to_json()
    draft["summary_of_facts"] = f"facts {marks['draft']}"
    status, body = await pair.ar.call(
        "POST",
        "/v1/consultations",
        json={
            "to": "au.ag",
            "marking": MARKING,
            "content": {"subject": f"Subject {marks['subject']}", "text": f"Text {marks['text']}"},
            "draft_request": draft,
        },
    )
    assert status == 202, body
    thread_id = body["id"]
    await wait_for(pair.ar, thread_id, "delivered")
    status, body = await pair.au.call(
        "POST", f"/v1/consultations/{thread_id}/messages", json={"content": {"text": f"Reply {marks['reply']}"}}
    )
    assert status == 202, body
    await wait_for(pair.au, body["id"], "delivered")
    formal = example_request(RequestType.MLA_CRIMINAL).to_json()
    formal["summary_of_facts"] = f"facts {marks['formal']}"
    status, body = await pair.ar.call("POST", f"/v1/consultations/{thread_id}/convert", json={"request": formal})
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    for side in (pair.ar, pair.au):
        status, listed = await side.call("GET", f"/v1/consultations/{thread_id}")
        assert status == 200 and not any(mark in json.dumps(listed) for mark in marks.values()), listed

    bad = marks["bad"]
    calls: list[tuple[Side, str, dict[str, object]]] = [
        (pair.ar, "/v1/consultations", {"to": "au.ag", "content": {"consultation": bad}}),
        (pair.ar, "/v1/consultations", {"to": "au.ag", "content": {"text": bad}, "about": bad}),
        (pair.ar, "/v1/consultations", {"to": "au.ag", "content": {"text": bad}, "draft_request": {"type": bad}}),
        (pair.ar, "/v1/consultations", {"to": "zz.nowhere", "content": {"text": bad}}),
        (pair.ar, f"/v1/consultations/{thread_id}/messages", {"in_reply_to": bad, "content": {"text": bad}}),
        (pair.ar, f"/v1/consultations/{thread_id}/convert", {"request": {**formal, "purpose": bad}}),
        (pair.au, f"/v1/consultations/{thread_id}/convert", {"from_draft": bad}),
    ]
    problems = []
    for side, path, payload in calls:
        status, body = await side.call("POST", path, json=payload)
        assert 400 <= status < 500, (path, status, body)
        problems.append(json.dumps(body, ensure_ascii=False))
        assert bad not in problems[-1], (path, body)
    outputs = {
        "logs": logs.text(),
        "problem documents": "\n".join(problems),
        "ar.mj ledger": await ledger_text(pair.ar.gw),
        "au.ag ledger": await ledger_text(pair.au.gw),
        "ar.mj metrics": await _metrics(pair.ar),
        "au.ag metrics": await _metrics(pair.au),
    }
    assert "message_submitted" in outputs["logs"]
    leaks = [f"{part} in {where}" for where, text in outputs.items() for part, mark in marks.items() if mark in text]
    assert not leaks, leaks
