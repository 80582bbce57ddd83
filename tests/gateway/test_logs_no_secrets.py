"""Logs carry ids, peers, codes and timings: never content, passphrases, tokens or key material.

A full exchange (request with an attachment, open, acknowledge, respond with an attachment) runs with structlog
writing JSON lines to a buffer at debug level, with random canaries planted in every piece of content: subjects,
texts, attachment bytes and file names. Hostile deliveries and bad officer API calls carrying canaries run too.
Then no log line may contain a canary, the passphrase, an officer token, an attachment key or any private key
(JWK ``d``, raw bytes in base64url, base64 and hex, the TLS key PEM body), every line must be a JSON object, and the
lines about a message must be bound to its id and peer. Problem documents must not echo a canary either.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from crypto.envelope import open_envelope
from crypto.keys import AuthorityKeys
from gateway.logs import configure_logging
from store.messages import Messages
from tests.gateway.conftest import PASSPHRASE, Pair, Side
from tests.gateway.hostile import HostilePeer, make_attachment
from tests.gateway.test_exchange import wait_for


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """structlog as production configures it (JSON lines), at debug level, into a buffer; restored afterwards."""
    saved = structlog.get_config()
    buffer = io.StringIO()
    configure_logging(level="debug", stream=buffer)
    try:
        yield buffer
    finally:
        structlog.configure(**saved)


def canary() -> str:
    return uuid.uuid4().hex


def _key_material(side: Side) -> dict[str, str]:
    """Every private key of one gateway, as the strings a careless log line could carry."""
    keys = AuthorityKeys.unseal(side.gw.settings.keys_path.read_bytes(), PASSPHRASE.encode())
    found: dict[str, str] = {}
    for name in ("signing", "encryption", "archive"):
        d = str(getattr(keys, name).as_dict(private=True)["d"])
        raw = base64.urlsafe_b64decode(d + "=" * (-len(d) % 4))
        found[f"{side.gw.authority_id} {name} d"] = d
        found[f"{side.gw.authority_id} {name} hex"] = raw.hex()
        found[f"{side.gw.authority_id} {name} base64"] = base64.b64encode(raw).decode().rstrip("=")
    pem = side.gw.settings.tls_key_path.read_text()
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    found[f"{side.gw.authority_id} tls key pem"] = "".join(body)
    for number, line in enumerate(body):
        if len(line) >= 16:
            found[f"{side.gw.authority_id} tls key pem line {number}"] = line
    return found


async def _send(side: Side, path: str, draft: dict[str, Any], data: bytes, filename: str) -> str:
    form = aiohttp.FormData()
    form.add_field("message", json.dumps(draft), content_type="application/json")
    form.add_field("attachment", io.BytesIO(data), filename=filename, content_type="application/pdf")
    status, body = await side.call("POST", path, data=form)
    assert status == 202, body
    return str(body["id"])


async def _attachment_key(side: Side, message_id: str) -> str:
    """The secretstream key of a received message's first attachment (from the signed payload)."""
    gw = side.gw
    async with gw.engine.connect() as conn:
        row = await Messages.get(conn, message_id)
    opened = open_envelope(
        row.sealed,
        recipient_keys=gw.recipient_keys(),
        sender_keys=gw.peer(row.peer).all_signing_keys(),
        expected_recipient=gw.authority_id,
    )
    return opened.payload.attachments[0].key


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for line in buffer.getvalue().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)  # every line is one JSON object
        assert isinstance(record, dict), line
        assert isinstance(record.get("event"), str) and isinstance(record.get("level"), str), line
        assert isinstance(record.get("timestamp"), str), line
        records.append(record)
    return records


async def test_logs_and_problems_carry_no_secrets(log_buffer: io.StringIO, pair: Pair, tmp_path: Path) -> None:
    marks = {name: canary() for name in ("subject", "text", "bytes", "filename", "answer", "answer-bytes", "bad")}
    problems: list[str] = []
    hostile = HostilePeer.impersonating(
        data_dir=pair.ar.provisioned.data_dir,
        identity="ar.mj",
        passphrase=PASSPHRASE.encode(),
        target=pair.ar.gw.peer("au.ag"),
        target_cert=pair.au.provisioned.data_dir / "tls" / "cert.pem",
        url=f"https://127.0.0.1:{pair.au.provisioned.federation_port}",
    )

    # --- a full exchange ----------------------------------------------------------------------------------------
    request = {
        "to": "au.ag",
        "kind": "request",
        "marking": {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]},
        "content": {"subject": f"Records {marks['subject']}", "text": f"Please provide {marks['text']}"},
    }
    data = os.urandom(2000) + marks["bytes"].encode() + os.urandom(2000)
    request_id = await _send(pair.ar, "/v1/messages", request, data, f"{marks['filename']}.pdf")
    await wait_for(pair.ar, request_id, "delivered")

    status, opened = await pair.au.call("POST", f"/v1/messages/{request_id}/open", json={"purpose": "review"})
    assert status == 200 and opened["content"] == request["content"], opened
    status, got = await pair.au.call("GET", f"/v1/messages/{request_id}/attachments/0")
    assert status == 200 and got == data
    status, body = await pair.au.call(
        "POST", f"/v1/messages/{request_id}/acknowledge", json={"confidentiality": "can-comply"}
    )
    assert status == 202, body
    await wait_for(pair.ar, request_id, "acknowledged")
    answer = {"marking": request["marking"], "content": {"text": f"Attached {marks['answer']}"}}
    answer_data = marks["answer-bytes"].encode() * 10
    response_id = await _send(pair.au, f"/v1/messages/{request_id}/respond", answer, answer_data, "statement.pdf")
    await wait_for(pair.ar, request_id, "answered")
    status, opened = await pair.ar.call("POST", f"/v1/messages/{response_id}/open", json={})
    assert status == 200 and opened["content"] == answer["content"]
    attachment_keys = [await _attachment_key(pair.au, request_id), await _attachment_key(pair.ar, response_id)]

    # --- bad officer API calls carrying canaries ---------------------------------------------------------------
    bad = marks["bad"]
    bad_calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/messages", {"json": {**request, "to": "zz.nowhere", "content": {"text": bad}}}),
        ("POST", "/v1/messages", {"json": {**request, "kind": "no-such-kind", "content": {"text": bad}}}),
        ("POST", "/v1/messages", {"json": {**request, "marking": {"level": "NOPE"}, "content": {"text": bad}}}),
        (
            "POST",
            "/v1/messages",
            {"data": f'{{"content": {{"text": "{bad}"', "headers": {"Content-Type": "application/json"}},
        ),
        ("POST", "/v1/messages", {"json": [bad]}),
        ("POST", f"/v1/messages/{request_id}/respond", {"json": {"content": {"text": bad}}}),
        ("POST", f"/v1/messages/{request_id}/open", {"json": {"purpose": f"Not A Word {bad}"}}),
    ]
    for method, path, kwargs in bad_calls:
        status, body = await pair.ar.call(method, path, **kwargs)
        assert status >= 400, (path, body)
        problems.append(json.dumps(body))

    # --- hostile deliveries carrying canaries ------------------------------------------------------------------
    content = {"subject": f"hostile {bad}", "text": f"hostile {bad}"}
    secret_attachment = make_attachment(bad.encode() * 50, name=f"{bad}.pdf")
    hostile_cases = [
        await hostile.post(hostile.seal_with_header(hostile.payload(content=content), kind="consultation")),
        await hostile.post(hostile.seal(hostile.payload(content=content, to="zz.other"))),
        await hostile.post(hostile.seal(hostile.payload(content=content, iat=0))),
        await hostile.post_multipart(
            hostile.seal(hostile.payload(content=content, attachments=[secret_attachment.ref.model_dump()])),
            [secret_attachment.ciphertext[:-1]],
        ),
    ]
    for refused in hostile_cases:
        assert refused.status >= 400
        problems.append(refused.raw.decode("utf-8", "replace"))

    # --- what must never appear --------------------------------------------------------------------------------
    forbidden: dict[str, str] = {f"canary {name}": value for name, value in marks.items()}
    forbidden["passphrase"] = PASSPHRASE
    forbidden["ar.mj officer token"] = pair.ar.token
    forbidden["au.ag officer token"] = pair.au.token
    for number, key in enumerate([*attachment_keys, secret_attachment.ref.key]):
        forbidden[f"attachment key {number}"] = key
    forbidden.update(_key_material(pair.ar))
    forbidden.update(_key_material(pair.au))

    text = log_buffer.getvalue()
    records = _lines(log_buffer)
    assert records, "nothing was logged: the buffer is not where the gateway logs"
    leaks = [name for name, value in forbidden.items() if value in text]
    assert not leaks, f"log lines carry: {leaks}"
    for number, document in enumerate(problems):
        echoed = [name for name, value in forbidden.items() if value in document]
        assert not echoed, f"problem document {number} carries {echoed}: {document[:300]}"

    # --- lines about a message are bound to its id and peer ----------------------------------------------------
    by_event: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_event.setdefault(record["event"], []).append(record)
    for event in ("message_submitted", "envelope_received", "message_delivered"):
        assert by_event.get(event), f"no {event!r} line; events seen: {sorted(by_event)}"
        for record in by_event[event]:
            assert record.get("message_id") and record.get("peer") in {"ar.mj", "au.ag"}, record
    ids = {record.get("message_id") for record in by_event["envelope_received"]}
    assert {request_id, response_id} <= ids
    for record in by_event.get("envelope_refused", []):
        assert isinstance(record.get("code"), str), record
    assert len(by_event.get("envelope_refused", [])) >= len(hostile_cases)


def test_an_exception_is_logged_as_its_types_and_frames_never_its_messages(log_buffer: io.StringIO) -> None:
    """A driver's message may quote a row (PostgreSQL: "DETAIL: Failing row contains (...)"), so an unhandled
    error's log line names the types of its chain and where they were raised, and nothing they say."""
    secret = canary()
    try:
        try:
            raise ValueError(f'new row violates check constraint, DETAIL: Failing row contains ("{secret}")')
        except ValueError as driver_error:
            raise RuntimeError(f"statement failed: {secret}") from driver_error
    except RuntimeError:
        structlog.get_logger("comity").exception("unhandled_error", path="/v1/messages")
    assert secret not in log_buffer.getvalue()
    line = json.loads(log_buffer.getvalue().splitlines()[-1])
    assert line["event"] == "unhandled_error" and "exc_info" not in line
    first, cause = line["exception"].split("raised from, or while handling:")
    assert first.startswith("builtins.RuntimeError") and cause.strip().startswith("builtins.ValueError")
    assert "test_logs_no_secrets.py" in first and "in test_an_exception_is_logged" in cause


async def test_libraries_log_through_the_same_renderer_without_their_messages(
    log_buffer: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLAlchemy's pool and asyncio log through the standard library; asyncio formats the failed task, exception
    message included, into the message itself. Their records come out as JSON lines like ours: the logger, the
    template's first line and the exception's types, never the arguments or what the library formatted in."""
    secret = canary()

    async def fails() -> None:
        raise ValueError(f'DETAIL: Failing row contains ("{secret}")')

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.wait([task])
    # what asyncio does when such a task is collected without anyone reading its exception
    asyncio.get_running_loop().call_exception_handler(
        {"message": "Task exception was never retrieved", "exception": task.exception(), "future": task}
    )
    try:
        raise ConnectionResetError(f"connection lost while reading {secret}")
    except ConnectionResetError:
        logging.getLogger("sqlalchemy.pool.impl.AsyncAdaptedQueuePool").error(
            "Exception terminating connection %r", f"<conn {secret}>", exc_info=True
        )
    logging.getLogger("aiohttp.access").info("GET /v1/messages?token=%s", secret)  # below the libraries' threshold
    # arguments that do not fit their template (pytest's own capture would raise on it, so straight to our handler)
    ours = next(h for h in logging.getLogger().handlers if type(h).__module__ == "gateway.logs")
    ours.handle(
        logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling %s %s", (secret,), None)
    )

    def explode(value: str) -> None:
        raise ValueError("callback failed")

    # asyncio formats the callback and its arguments into its message: "Exception in callback explode('...')"
    asyncio.get_running_loop().call_soon(explode, f"callback argument {secret}")
    await asyncio.sleep(0.01)

    output = log_buffer.getvalue() + "".join(capsys.readouterr())
    assert secret not in output
    lines = [line for line in _lines(log_buffer) if "logger" in line]
    assert {line["logger"] for line in lines} == {
        "asyncio",
        "sqlalchemy.pool.impl.AsyncAdaptedQueuePool",
        "aiohttp.server",
    }
    by_event = {line["event"]: line for line in lines}
    asyncio_line = by_event["Task exception was never retrieved"]
    assert asyncio_line["level"] == "error" and asyncio_line["exception"].startswith("builtins.ValueError")
    callback = [line for line in lines if line["event"].startswith("Exception in callback ")]
    assert len(callback) == 1 and callback[0]["logger"] == "asyncio" and "(" not in callback[0]["event"]
    assert by_event["Error handling %s %s"]["logger"] == "aiohttp.server"
    pool_line = by_event["Exception terminating connection %r"]
    assert pool_line["exception"].startswith("builtins.ConnectionResetError") and "exc_info" not in pool_line
