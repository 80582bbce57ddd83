"""End to end: two gateways exchange a request with an attachment and its response over mutual TLS."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
from typing import Any

import aiohttp
import pytest

from tests.gateway.conftest import Pair, Side

REQUEST = {
    "to": "au.ag",
    "kind": "request",
    "marking": {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]},
    "content": {"subject": "Bank records of a company", "text": "Please provide the records of account 1234."},
}


async def wait_for(side: Side, message_id: str, state: str, timeout: float = 20) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await side.call("GET", f"/v1/messages/{message_id}")
        if status == 200 and body["state"] == state:
            return dict(body)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{message_id} stayed {body.get('state')!r}, wanted {state!r}")
        await asyncio.sleep(0.05)


async def send_with_attachment(side: Side, draft: dict[str, Any], data: bytes, path: str = "/v1/messages") -> str:
    form = aiohttp.FormData()
    form.add_field("message", json.dumps(draft), content_type="application/json")
    form.add_field("attachment", io.BytesIO(data), filename="records.pdf", content_type="application/pdf")
    status, body = await side.call("POST", path, data=form)
    assert status == 202, body
    return str(body["id"])


async def test_request_receipt_acknowledgement_response(pair: Pair) -> None:
    attachment = os.urandom(3 * 1024 * 1024 + 17)
    request_id = await send_with_attachment(pair.ar, REQUEST, attachment)

    delivered = await wait_for(pair.ar, request_id, "delivered")
    assert delivered["received_at"] is not None
    status, inbox = await pair.au.call("GET", "/v1/messages?box=inbox")
    assert [m["id"] for m in inbox["messages"]] == [request_id]

    status, opened = await pair.au.call("POST", f"/v1/messages/{request_id}/open", json={"purpose": "review"})
    assert status == 200, opened
    assert opened["content"] == REQUEST["content"]
    assert opened["attachments"][0]["sha256"] == hashlib.sha256(attachment).hexdigest()
    status, data = await pair.au.call("GET", f"/v1/messages/{request_id}/attachments/0")
    assert status == 200 and hashlib.sha256(data).hexdigest() == hashlib.sha256(attachment).hexdigest()

    status, ack = await pair.au.call(
        "POST", f"/v1/messages/{request_id}/acknowledge", json={"confidentiality": "can-comply"}
    )
    assert status == 202, ack
    await wait_for(pair.ar, request_id, "acknowledged")

    answer = {
        "marking": {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]},
        "content": {"text": "Records attached."},
    }
    response_id = await send_with_attachment(pair.au, answer, b"statement", f"/v1/messages/{request_id}/respond")
    await wait_for(pair.ar, request_id, "answered")
    status, opened = await pair.ar.call("POST", f"/v1/messages/{response_id}/open", json={})
    assert status == 200 and opened["in_reply_to"] == request_id and opened["content"] == answer["content"]
    status, data = await pair.ar.call("GET", f"/v1/messages/{response_id}/attachments/0")
    assert data == b"statement"

    status, timeline = await pair.ar.call("GET", f"/v1/messages/{request_id}/timeline")
    names = [m["name"] for m in timeline["milestones"]]
    assert names == ["submitted", "sent", "received", "receipted", "acknowledged", "answered"] or names[:2] == [
        "submitted",
        "received",
    ], names
    assert {"submitted", "sent", "received", "receipted", "acknowledged", "answered"} <= set(names)


async def test_sender_reads_its_own_archive_copy(pair: Pair) -> None:
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202
    await wait_for(pair.ar, body["id"], "delivered")
    status, opened = await pair.ar.call("POST", f"/v1/messages/{body['id']}/open", json={})
    assert status == 200 and opened["content"] == REQUEST["content"]


async def test_a_submission_whose_envelope_would_be_too_large_is_refused_and_stores_nothing(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender seals at most the envelope size receivers accept (docs/protocol.md section 6): a larger one is
    refused at submission, nothing stored or ledgered, instead of being sent to a final refusal."""
    from crypto import envelope
    from tests.gateway.conftest import attachment_files, ledger

    monkeypatch.setattr(envelope, "DEFAULT_MAX_ENVELOPE_BYTES", 8192)  # a 4 MiB one would not pass the API's limit
    before = len(await ledger(pair.ar.gw))
    files = attachment_files(pair.ar.gw)
    draft = {**REQUEST, "content": {"subject": "Bank records", "text": "x" * 8192}}
    form = aiohttp.FormData()  # with a file: its encrypted copy must not stay behind either
    form.add_field("message", json.dumps(draft), content_type="application/json")
    form.add_field("attachment", io.BytesIO(b"records"), filename="records.pdf", content_type="application/pdf")
    status, problem = await pair.ar.call("POST", "/v1/messages", data=form)
    assert (status, problem["code"]) == (413, "envelope-too-large"), problem
    status, box = await pair.ar.call("GET", "/v1/messages?box=outbox")
    assert box["messages"] == []
    assert len(await ledger(pair.ar.gw)) == before and attachment_files(pair.ar.gw) == files
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)  # a small one still goes
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")


async def test_a_submission_with_more_attachments_than_a_receiver_takes_is_refused(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most MAX_ATTACHMENTS per message (check 15 on receipt): the sender refuses more at submission, keeping no
    file of those already encrypted (here the limit is 2)."""
    from gateway import sending
    from tests.gateway.conftest import attachment_files

    monkeypatch.setattr(sending, "MAX_ATTACHMENTS", 2)
    files = attachment_files(pair.ar.gw)
    form = aiohttp.FormData()
    form.add_field("message", json.dumps(REQUEST), content_type="application/json")
    for number in range(3):
        form.add_field("attachment", io.BytesIO(b"page %d" % number), filename=f"p{number}.pdf")
    status, problem = await pair.ar.call("POST", "/v1/messages", data=form)
    assert (status, problem["code"]) == (400, "invalid-message") and "at most 2 attachments" in problem["detail"]
    assert attachment_files(pair.ar.gw) == files
    status, box = await pair.ar.call("GET", "/v1/messages?box=outbox")
    assert box["messages"] == []


async def test_the_attachment_limit_is_on_the_ciphertext_on_both_sides(pair: Pair) -> None:
    """Both gateways take ``max_attachment_bytes`` as the largest ciphertext (``ct_size``, what the receiver
    checks): a file that fits once encrypted goes through; one byte more is refused by the sender, before anything
    is stored, instead of being sent to a final refusal (decision 111)."""
    from crypto.attachments import ciphertext_size
    from tests.gateway.conftest import attachment_files

    limit = ciphertext_size(1000)
    for side in (pair.ar, pair.au):
        await side.stop()
        await side.start(max_attachment_bytes=limit)
    fits = await send_with_attachment(pair.ar, REQUEST, os.urandom(1000))
    await wait_for(pair.ar, fits, "delivered")
    files = attachment_files(pair.ar.gw)
    form = aiohttp.FormData()
    form.add_field("message", json.dumps(REQUEST), content_type="application/json")
    form.add_field("attachment", io.BytesIO(os.urandom(1001)), filename="records.pdf", content_type="application/pdf")
    status, problem = await pair.ar.call("POST", "/v1/messages", data=form)
    assert (status, problem["code"]) == (413, "attachment-too-large"), problem
    assert "once encrypted" in problem["detail"]
    assert attachment_files(pair.ar.gw) == files
    status, box = await pair.ar.call("GET", "/v1/messages?box=outbox")
    assert [m["id"] for m in box["messages"]] == [fits]
