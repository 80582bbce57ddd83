"""The local API against an insider with a valid token: what a second review of it found (decision 93).

- a status report, the gateway's claim about where a case stands, cannot be written by hand through
  ``POST /v1/messages`` (it would move the counterpart's view of the case past every case-event check);
- assigning officers to a case, or taking them off it, needs clearance for the case's marking;
- an officer or supervisor sees a message's metadata (list, summary, timeline) only where she may act on it;
- a refused case event is ledgered like every refused submission;
- ids, numbers and tokens that name nothing get a typed problem, never a 500 (PostgreSQL refuses a NUL byte, a
  bigint overflows);
- an attachment is served as a download: a plain media type or none, never sniffed or rendered inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
from typing import Any

import aiohttp
import pytest

from gateway.cli.request import example_request
from gateway.context import Gateway
from protocol.requests import RequestType
from tests.gateway.conftest import Pair, Side, attachment_files, issue_token, ledger
from tests.gateway.hostile import make_attachment
from tests.gateway.test_exchange import REQUEST, wait_for
from tests.gateway.test_markings import assert_problem, hostile_towards, post_form

STRICT = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}


async def _received(pair: Pair, marking: dict[str, Any] | None = None) -> str:
    """A request from ar.mj, received by au.ag: its id, which is au.ag's case id."""
    status, body = await pair.ar.call(
        "POST", "/v1/messages", json={**REQUEST, "marking": marking or REQUEST["marking"]}
    )
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    return str(body["id"])


async def _as(side: Side, token: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.request(method, side.api + path, **kwargs) as response,
    ):
        return response.status, await response.json(content_type=None)


async def _case_unit(gw: Gateway, case_id: str) -> str | None:
    from sqlalchemy import select

    from store.tables import cases

    async with gw.engine.connect() as conn:
        unit: str | None = (await conn.execute(select(cases.c.unit).where(cases.c.id == case_id))).scalar_one()
    return unit


async def test_a_status_report_cannot_be_written_by_hand(pair: Pair) -> None:
    case_id = await _received(pair)
    report = {"status": {"state": "refused", "event": "refuse", "at": "2026-11-29T10:00:00.000000Z"}}
    before = len(await ledger(pair.au.gw))
    status, body = await pair.au.call(
        "POST", "/v1/messages", json={"to": "ar.mj", "kind": "status_report", "in_reply_to": case_id, "content": report}
    )
    assert_problem(status, body, code="invalid-message")
    assert "POST /v1/cases/{id}/events" in body["detail"]
    assert len(await ledger(pair.au.gw)) == before  # nothing sealed, sent or recorded
    # the checked move is refused too (a received request cannot be refused without consulting first)
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/events", json={"event": "refuse"})
    assert status in (400, 409), body
    status, body = await pair.ar.call("GET", f"/v1/messages/{case_id}")
    assert status == 200 and body["state"] != "refused"


async def test_assigning_needs_clearance_for_the_cases_marking(pair: Pair) -> None:
    config = pair.au.provisioned.config
    sid = await asyncio.to_thread(issue_token, config, "sid", "supervisor", clearance="UNCLASSIFIED", unit="tax")
    await asyncio.to_thread(issue_token, config, "olga")  # a fully cleared officer of unit mla
    case_id = await _received(pair, STRICT)

    # an uncleared supervisor can neither take the case for his unit nor take anyone off it: for him there is no
    # such case (decision 100)
    status, body = await _as(pair.au, sid, "POST", f"/v1/cases/{case_id}/assign", json={"username": "sid"})
    assert assert_problem(status, body, code="not-found")["detail"] == f"no case {case_id}"
    assert await _case_unit(pair.au.gw, case_id) is None  # still open to the cleared supervisors
    status, body = await _as(pair.au, sid, "POST", f"/v1/cases/{case_id}/unassign", json={"username": "olga"})
    assert assert_problem(status, body, code="not-found")["detail"] == f"no case {case_id}"

    # a cleared supervisor assigns; "replace" is a boolean
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/assign", json={"username": "olga", "replace": "no"})
    assert_problem(status, body, code="invalid-message")
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/assign", json={"username": "olga"})
    assert status == 200, body
    assert await _case_unit(pair.au.gw, case_id) == "mla"


async def test_a_refused_case_event_is_ledgered(pair: Pair) -> None:
    config = pair.au.provisioned.config
    olga = await asyncio.to_thread(issue_token, config, "olga")  # cleared, not assigned
    case_id = await _received(pair)
    before = len(await ledger(pair.au.gw))
    status, body = await _as(pair.au, olga, "POST", f"/v1/cases/{case_id}/events", json={"event": "acknowledge"})
    assert assert_problem(status, body, code="not-found")["detail"] == f"no case {case_id}"  # decision 100
    added = await ledger(pair.au.gw, before)
    assert [(e["type"], e["actor"], e["reason"], e["kind"], e["to"]) for e in added] == [
        ("message.submit_refused", "user:olga", "forbidden", "status_report", "ar.mj")
    ]


async def test_what_names_nothing_gets_a_typed_problem(pair: Pair) -> None:
    case_id = await _received(pair)
    auditor = await asyncio.to_thread(issue_token, pair.au.provisioned.config, "audrey", "auditor")
    for path in (
        "/v1/messages/%00",
        "/v1/messages/%00/timeline",
        f"/v1/messages/{case_id.upper()}",
        "/v1/cases/%00/work",
        "/v1/consultations/%00",
        f"/v1/messages/{case_id}/attachments/99999999999999999999",
    ):
        status, body = await pair.au.call("GET", path)
        assert_problem(status, body, code="not-found")
    for path, code in (
        ("/v1/ledger/checkpoints?after=99999999999999999999999", "invalid-message"),
        ("/v1/ledger/entries?start=100000000000000000000&end=100000000000000000001", "invalid-message"),
        ("/v1/ledger/proofs/inclusion?message_id=%00&size=1", "not-found"),
    ):
        status, body = await _as(pair.au, auditor, "GET", path)
        assert_problem(status, body, code=code)
    status, body = await pair.au.call("POST", "/v1/messages", json={**REQUEST, "to": "ar.mj", "in_reply_to": 5})
    assert_problem(status, body, code="invalid-message")
    # a token that cannot be one of ours (aiohttp hands the server its bytes as surrogates)
    status, body = await _as(pair.au, "cmt_\xff\xfe", "GET", "/v1/messages")
    assert_problem(status, body, code="unauthenticated")


async def test_an_attachment_is_served_as_a_download_of_a_plain_type(pair: Pair) -> None:
    hostile = hostile_towards(pair.ar, pair.au)
    served = {}
    for media_type, expected in (
        ("text/html", "text/html"),
        ("text/html\r\nSet-Cookie: taken=1", "application/octet-stream"),
        ("not a type", "application/octet-stream"),
    ):
        attachment = make_attachment(b"<script>alert(1)</script>", media_type=media_type)
        payload = hostile.payload(attachments=[attachment.ref.model_dump()])
        answer = await hostile.post_multipart(hostile.seal(payload), [attachment.ciphertext])
        assert answer.status == 200, answer.raw
        assert pair.au.session is not None
        url = f"{pair.au.api}/v1/messages/{payload.id}/attachments/0"
        async with pair.au.session.get(url) as response:
            assert response.status == 200
            served[media_type] = (
                response.headers["Content-Type"].split(";")[0],
                response.headers["Content-Disposition"],
                response.headers["X-Content-Type-Options"],
                "Set-Cookie" in response.headers,
                await response.read(),
            )
        assert served[media_type] == (expected, "attachment", "nosniff", False, b"<script>alert(1)</script>")


async def test_an_officer_knows_only_of_the_messages_she_may_act_on(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 94: listing, a message's summary and its timeline follow the rule of acting on it (clearance for
    its marking and caveats, and assignment to its case or supervision of the case's unit); a message hidden is
    `not-found`, as one that does not exist. Auditors and administrators see every message's metadata."""
    monkeypatch.setattr("gateway.reading.LIST_PAGE", 1)  # a listing that reads the box a row at a time, in keyset pages
    config = pair.au.provisioned.config
    ursula = await asyncio.to_thread(issue_token, config, "ursula", clearance="CONFIDENTIAL", caveats=("uncac-46-20",))
    olga = await asyncio.to_thread(issue_token, config, "olga")  # cleared for everything, in bruce's unit
    audrey = await asyncio.to_thread(issue_token, config, "audrey", "auditor")
    secret, plain = await _received(pair, STRICT), await _received(pair)

    async def inbox(token: str, query: str = "") -> list[str]:
        status, body = await _as(pair.au, token, "GET", "/v1/messages?box=inbox" + query)
        assert status == 200, body
        return [message["id"] for message in body["messages"]]

    async def seen(token: str, message_id: str) -> bool:
        status, body = await _as(pair.au, token, "GET", f"/v1/messages/{message_id}")
        status_t, body_t = await _as(pair.au, token, "GET", f"/v1/messages/{message_id}/timeline")
        assert (status, status_t) in ((200, 200), (404, 404)), (body, body_t)
        return status == 200

    assert await inbox(ursula) == [] and await inbox(olga) == []  # unassigned: triage is the supervisors'
    assert not await seen(ursula, secret) and not await seen(olga, secret)
    assert await inbox(pair.au.token) == [plain, secret] == await inbox(audrey)  # newest first
    assert await inbox(pair.au.token, "&limit=1&offset=1") == [secret]
    for case_id in (secret, plain):
        status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/assign", json={"username": "olga"})
        assert status == 200, body
        status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/assign", json={"username": "ursula"})
        assert status == 200, body
    assert await inbox(olga) == [plain, secret] and await seen(olga, secret)
    assert await inbox(ursula) == [plain] and not await seen(ursula, secret)  # assigned, not cleared for it


async def test_what_a_user_may_not_act_on_is_answered_as_what_does_not_exist(pair: Pair) -> None:
    """Decision 100, route by route: at au.ag, otto (an officer assigned to the case, cleared only to CONFIDENTIAL)
    and sid (a supervisor of another unit, not cleared) hold the ids of a STRICTLY CONFIDENTIAL request's case and of
    a consultation thread; whatever they send, each route answers them exactly as it answers an id that names
    nothing (the id aside): no status, code or detail tells them the case or thread exists, nor anything about it."""
    from tests.gateway.test_consultations import start_thread

    config = pair.au.provisioned.config
    otto = await asyncio.to_thread(issue_token, config, "otto", clearance="CONFIDENTIAL")
    sid = await asyncio.to_thread(issue_token, config, "sid", "supervisor", clearance="UNCLASSIFIED", unit="tax")
    case_id = await _received(pair, STRICT)
    thread_id = await start_thread(pair.ar, marking=STRICT, content={"text": "a first question"})
    for target in (case_id, thread_id):
        status, body = await pair.au.call("POST", f"/v1/cases/{target}/assign", json={"username": "otto"})
        assert status == 200, body
    nothing = "0f8fad5b-d9cb-469f-a165-70867728950e"
    answer = {"marking": STRICT, "content": {"text": "an answer"}}
    case_routes: list[tuple[str, str, Any]] = [
        ("GET", "/v1/messages/{id}", None),
        ("GET", "/v1/messages/{id}/timeline", None),
        ("POST", "/v1/messages/{id}/open", {"purpose": "review"}),
        ("GET", "/v1/messages/{id}/attachments/0", None),
        ("POST", "/v1/messages/{id}/acknowledge", {"confidentiality": "can-comply"}),
        ("POST", "/v1/messages/{id}/respond", answer),
        ("POST", "/v1/messages/{id}/consent", {"recipient": "br.mjsp"}),
        ("POST", "/v1/messages", {**answer, "to": "ar.mj", "kind": "response", "in_reply_to": "{id}"}),
        ("GET", "/v1/cases/{id}/work", None),
        ("PUT", "/v1/cases/{id}/next-action", {"text": "call them"}),
        ("POST", "/v1/cases/{id}/flags", {"flag": "urgent"}),
        ("POST", "/v1/cases/{id}/events", {"event": "acknowledge"}),
        ("POST", "/v1/cases/{id}/status-query", {}),
        ("POST", "/v1/cases/{id}/assign", {"username": "sid"}),
        ("POST", "/v1/cases/{id}/unassign", {"username": "otto"}),
        ("POST", "/v1/consultations", {"to": "ar.mj", "marking": STRICT, "about": "{id}", "content": {"text": "q"}}),
    ]
    formal = {**example_request(RequestType.MLA_CRIMINAL).to_json(), "consultation_id": "{id}"}
    thread_routes: list[tuple[str, str, Any]] = [
        ("POST", "/v1/messages", {"to": "ar.mj", "kind": "request", "marking": STRICT, "content": {"request": formal}}),
        ("GET", "/v1/consultations/{id}", None),
        ("POST", "/v1/consultations/{id}/messages", {"content": {"text": "a reply"}}),
        ("POST", "/v1/consultations/{id}/convert", {"request": {"type": "mla-criminal"}}),
    ]

    def fill(value: Any, target: str) -> Any:
        return None if value is None else json.loads(json.dumps(value).replace("{id}", target))

    compared = 0
    for who, token in (("otto", otto), ("sid", sid)):
        for target, routes in ((case_id, case_routes), (thread_id, thread_routes + case_routes[:8])):
            for method, path, body in routes:
                answers = []
                for used in (target, nothing):
                    status, got = await _as(pair.au, token, method, path.replace("{id}", used), json=fill(body, used))
                    answers.append((status, json.dumps(got, sort_keys=True).replace(used, "<id>")))
                assert answers[0] == answers[1], (who, method, path, answers)
                assert answers[0][0] in (400, 403, 404), (who, method, path, answers)  # never acted upon
                compared += 1
    assert compared == 2 * (len(case_routes) + len(thread_routes) + 8)
    # each attempt to change the case or its assignments is ledgered as such (decision 148): otto lacks the scope to
    # assign, sid the unit and clearance for everything; an id that names nothing is ledgered only when the scope
    # refused it, before any lookup (as an opening is)
    refused = [e for e in await ledger(pair.au.gw) if e["type"] == "case.refused"]
    assert sorted((e["message_id"], e["actor"], e["state"]) for e in refused if e["message_id"] == nothing) == [
        (nothing, "user:otto", "assigned"),
        (nothing, "user:otto", "unassigned"),
    ]
    tried = {(e["actor"], e["state"]) for e in refused if e["message_id"] == case_id}
    assert tried == {
        (f"user:{who}", state)
        for who in ("otto", "sid")
        for state in ("next-action", "flag-set", "assigned", "unassigned")
    }


async def test_a_broken_multipart_submission_is_a_typed_refusal(pair: Pair) -> None:
    """A form without a boundary, with an empty one, or whose body does not frame: 400 invalid-message on every
    route that takes attachments (it was a 500 and a traceback), and nothing queued."""
    thread_id = (await pair.ar.call("POST", "/v1/consultations", json={"to": "au.ag", "content": {}}))[1]["id"]
    await wait_for(pair.ar, thread_id, "delivered")
    before = await pair.ar.call("GET", "/v1/messages?box=outbox&limit=1000")
    headers = ("multipart/form-data", "multipart/form-data; boundary=", 'multipart/form-data; boundary=""')
    bodies = (b"--x\r\n", b"garbage")
    for path in ("/v1/messages", "/v1/consultations", f"/v1/consultations/{thread_id}/messages"):
        for content_type in (*headers, "multipart/form-data; boundary=x"):
            for body in bodies:
                assert pair.ar.session is not None
                async with pair.ar.session.post(
                    pair.ar.api + path, data=body, headers={"Content-Type": content_type}
                ) as response:
                    problem = await response.json(content_type=None)
                assert response.status == 400 and problem["code"] == "invalid-message", (path, content_type, problem)
    assert await pair.ar.call("GET", "/v1/messages?box=outbox&limit=1000") == before


async def test_asking_for_an_attachment_that_is_not_there_opens_nothing(pair: Pair) -> None:
    """An opening is ledgered when an attachment is served, not when the one asked for does not exist."""
    status, body = await post_form(pair.ar, "/v1/messages", REQUEST, b"%PDF evidence", "evidence.pdf")
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    before = len(await ledger(pair.au.gw))
    status, problem = await pair.au.call("GET", f"/v1/messages/{body['id']}/attachments/7")
    assert_problem(status, problem, code="not-found")
    assert await ledger(pair.au.gw, before) == []  # no message.opened for what was never shown
    status, data = await pair.au.call("GET", f"/v1/messages/{body['id']}/attachments/0")
    assert status == 200 and data == b"%PDF evidence"
    opened = [(e["type"], e["actor"], e["message_id"], e["purpose"]) for e in await ledger(pair.au.gw, before)]
    assert opened == [("message.opened", "user:bruce", body["id"], "attachment")]


async def _raw_get(side: Side, path: str) -> bytes:
    """Everything the API writes back on one connection to one GET, read until it closes or goes quiet."""
    from urllib.parse import urlsplit

    address = urlsplit(side.api)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {side.token}\r\n\r\n".encode())
    await writer.drain()
    raw = b""
    with contextlib.suppress(TimeoutError):
        while chunk := await asyncio.wait_for(reader.read(65536), 2):
            raw += chunk
    writer.close()
    return raw


async def test_an_attachment_the_disk_cannot_give_back_is_a_503_or_a_cut_download_and_no_opening(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored file that is gone (a restore without the attachments directory) is answered 503 before anything is
    ledgered; a disk failing under the download cuts it short. Before, the API sent 200 and its headers, then the
    middleware's 500 document on the same connection: its first bytes were saved as the file, the rest was read
    as the next response, and the ledger recorded an opening of content nobody could read."""
    from gateway import files, reading

    status, body = await post_form(pair.ar, "/v1/messages", REQUEST, b"%PDF evidence", "evidence.pdf")
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    path = f"/v1/messages/{body['id']}/attachments/0"
    stored = list((pair.au.gw.settings.attachments_path / "in").iterdir())
    kept = {file: file.read_bytes() for file in stored}
    for file in stored:
        file.unlink()
    before = len(await ledger(pair.au.gw))
    raw = await _raw_get(pair.au, path)
    assert raw.startswith(b"HTTP/1.1 503 ") and raw.count(b"HTTP/1.1 ") == 1, raw
    assert b"store-unavailable" in raw and b"attachments" not in raw  # the errno's name, never a path
    assert await ledger(pair.au.gw, before) == []
    for file, data in kept.items():
        file.write_bytes(data)

    real = files.read_chunks

    async def failing(path: Any, *args: Any) -> Any:
        async for chunk in real(path, *args):
            yield chunk
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(reading, "read_chunks", failing)
    raw = await _raw_get(pair.au, path)
    head, _, served = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and raw.count(b"HTTP/1.1 ") == 1, raw
    assert b"Content-Length: 13" in head and len(served) < 13, raw  # cut short, and nothing after it
    monkeypatch.setattr(reading, "read_chunks", real)
    status, data = await pair.au.call("GET", path)
    assert status == 200 and data == b"%PDF evidence"


async def test_an_attachment_that_is_not_what_its_signed_manifest_says_is_never_served_whole(pair: Pair) -> None:
    """A peer's manifest names a plaintext SHA-256 its bytes do not have, with every size and the ciphertext digest
    right and every chunk authentic: the receiver, which does not decrypt on arrival (decision 6), receipts it, and
    the officer's download must fail (protocol.md 8.1). Before, the last chunk went out as soon as it authenticated,
    before size and digests were checked, so the whole file was served and looked complete."""
    hostile = hostile_towards(pair.ar, pair.au)
    attachment = make_attachment(b"the real records")
    ref = attachment.ref.model_copy(update={"sha256": "0" * 64})
    payload = hostile.payload(attachments=[ref.model_dump()])
    answer = await hostile.post_multipart(hostile.seal(payload), [attachment.ciphertext])
    assert answer.status == 200, answer.raw
    raw = await _raw_get(pair.au, f"/v1/messages/{payload.id}/attachments/0")
    head, _, served = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 16" in head, raw
    assert served == b"", raw  # the one chunk was held back, and the connection closed
    honest = make_attachment(b"the real records")
    payload = hostile.payload(attachments=[honest.ref.model_dump()])
    assert (await hostile.post_multipart(hostile.seal(payload), [honest.ciphertext])).status == 200
    assert (await pair.au.call("GET", f"/v1/messages/{payload.id}/attachments/0")) == (200, b"the real records")


async def test_a_file_name_that_is_not_utf8_is_refused_before_it_is_encrypted(pair: Pair) -> None:
    """Decision 143's rule for names the signed manifest cannot carry: refused as the submission is read, never as
    `attachment-corrupt` (tampering) after the whole upload was encrypted. A byte that is not UTF-8 in a form
    part's file name reaches the gateway as a lone surrogate, which passed the length check."""
    boundary = "XyZboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\nContent-Type: application/json\r\n\r\n'
    body = (head + json.dumps(REQUEST) + f"\r\n--{boundary}\r\n").encode() + (
        b'Content-Disposition: form-data; name="attachment"; filename="a\xffb.pdf"\r\n'
        b"Content-Type: application/pdf\r\n\r\n" + b"x" * 5000 + f"\r\n--{boundary}--\r\n".encode()
    )
    status, answer = await pair.ar.call(
        "POST", "/v1/messages", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert_problem(status, answer, code="invalid-message")
    assert attachment_files(pair.ar.gw) == ()


async def test_a_consent_names_a_third_authority(pair: Pair) -> None:
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    for recipient in ("ar.mj", "au.ag"):  # ourselves; the authority the message went to
        status, problem = await pair.ar.call(
            "POST", f"/v1/messages/{body['id']}/consent", json={"recipient": recipient}
        )
        assert_problem(status, problem, code="invalid-message")


async def test_a_draft_shared_under_an_embargo_shows_no_checklist_before_the_date(pair: Pair) -> None:
    """The checklist of a shared draft (its request type, which elements it holds) comes from its content: not
    before the embargo ends, and not to a token that may not open content."""
    from tests.gateway.test_markings import tomorrow

    draft = example_request(RequestType.EXTRADITION).to_json()
    threads = {}
    for name, caveats in (("embargoed", [f"embargo:{tomorrow().isoformat()}"]), ("open", [])):
        status, body = await pair.ar.call(
            "POST",
            "/v1/consultations",
            json={
                "to": "au.ag",
                "marking": {"level": "CONFIDENTIAL", "caveats": caveats},
                "content": {"text": "before we ask"},
                "draft_request": draft,
            },
        )
        assert status == 202, body
        await wait_for(pair.ar, body["id"], "delivered")
        threads[name] = body["id"]
    status, opened = await pair.au.call("POST", f"/v1/messages/{threads['embargoed']}/open", json={})
    assert_problem(status, opened, code="embargoed")
    shown = {}
    for name, thread_id in threads.items():
        status, detail = await pair.au.call("GET", f"/v1/consultations/{thread_id}")
        assert status == 200, detail
        shown[name] = detail["messages"][0].get("draft_check")
    assert shown["embargoed"] is None and shown["open"]["request_type"] == "extradition", shown
    token = await asyncio.to_thread(_metadata_token, pair.au)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(f"{pair.au.api}/v1/consultations/{threads['open']}") as response,
    ):
        detail = await response.json()
    assert response.status == 200 and "draft_check" not in detail["messages"][0], detail


def _metadata_token(side: Side) -> str:
    """A token of bruce (the supervisor) limited to messages:read, with the real command."""
    from click.testing import CliRunner

    from gateway.cli import main

    args = ["user", "token", "bruce", "--scope", "messages:read", "--days", "1"]
    result = CliRunner().invoke(main, [*args, "--config", str(side.provisioned.config)])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


async def test_an_attachment_the_manifest_could_not_name_is_refused_before_it_is_encrypted(pair: Pair) -> None:
    """A file name over 255 characters or a media type over 127 (what a manifest entry holds) was encrypted whole,
    then refused as attachment-corrupt, the code of a tampered ciphertext: now invalid-message, nothing written."""
    before = await pair.ar.call("GET", "/v1/messages?box=outbox&limit=1000")
    for filename, media_type in (("x" * 256 + ".pdf", "application/pdf"), ("a.pdf", "application/" + "x" * 120)):
        form = aiohttp.FormData()
        form.add_field("message", json.dumps(REQUEST), content_type="application/json")
        form.add_field("attachment", b"%PDF " * 1000, filename=filename, content_type=media_type)
        assert pair.ar.session is not None
        async with pair.ar.session.post(pair.ar.api + "/v1/messages", data=form) as response:
            problem = await response.json(content_type=None)
        assert_problem(response.status, problem, code="invalid-message")
    assert attachment_files(pair.ar.gw) == ()
    assert await pair.ar.call("GET", "/v1/messages?box=outbox&limit=1000") == before


async def test_content_may_not_carry_the_members_the_gateway_writes_itself(pair: Pair) -> None:
    """Decision 145: 'forwarded', 'marking_downgrade' and 'check_override' are written by the gateway from what it
    checked ('forwards', 'downgrade_reason', 'override_reason'). Written by hand they were signed and sent as they
    were: use-limited content forwarded without consent and below its marking, or a supervisor's downgrade faked."""
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    item = {"message_id": body["id"], "from": "au.ag", "content": {"text": "what it said"}}
    written = {
        "forwarded": [item],
        "marking_downgrade": {"from": "STRICTLY CONFIDENTIAL", "from_caveats": [], "reason": "a supervisor agreed"},
        "check_override": "the checklist is wrong",
    }
    before = await pair.ar.call("GET", "/v1/messages?box=outbox&limit=1000"), len(await ledger(pair.ar.gw))
    for name, value in written.items():
        content = {"text": "fyi", name: value}
        for path, draft in (
            ("/v1/messages", {"to": "au.ag", "kind": "request", "content": content}),
            ("/v1/consultations", {"to": "au.ag", "content": content}),
        ):
            status, problem = await pair.ar.call("POST", path, json=draft)
            assert_problem(status, problem, code="invalid-message")
            assert name in problem["detail"], problem
    assert (await pair.ar.call("GET", "/v1/messages?box=outbox&limit=1000"), len(await ledger(pair.ar.gw))) == before


async def test_a_forwarded_item_must_name_a_message_and_an_authority(pair: Pair) -> None:
    """A peer's forwarded item whose message id held a NUL byte was receipted; forwarding that message on, with its
    originator's consent, then looked the id up and PostgreSQL failed with a 500. Now the envelope is refused."""
    hostile = hostile_towards(pair.ar, pair.au)
    for item in (
        {"message_id": "x\u0000y", "from": "ar.mj", "content": {}},
        {"message_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "from": "AR.MJ", "content": {}},
    ):
        payload = hostile.payload(kind="response", content={"text": "m", "forwarded": [item]})
        answer = await hostile.post(hostile.seal(payload))
        assert answer.status == 400 and answer.document["code"] == "invalid-message", answer.raw[:300]
