"""Confidentiality markings, enforced where data could leave: the sending gateway, the receiving gateway, and onward
use of limited content (docs/markings.md lists every enforcement point with the test that proves it).

Every refusal is checked for: the HTTP status and problem+json code; the ledger entry it adds (type, actor, reason),
read from the gateway's ``ledger_entries`` table; that nothing was stored or queued (outbox, messages, attachment
files) on the refusing side and nothing reached the peer; and that the random canary planted in the content appears
neither in the problem document nor in any ledger entry. Opening, embargo, downgrade and art. 46(20) answers are in
tests/gateway/test_markings_opening.py and tests/gateway/test_markings_answers.py; they share the helpers here.

A third authority, ``br.mjsp`` (Brazil), is accredited only up to CONFIDENTIAL and honours only the UNCAC caveats
46(19) and 46(20): the recipient below the sender's marking.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from crypto.receipts import verify_refusal
from gateway.context import Gateway
from gateway.problems import status_for
from gateway.provision import AuthoritySpec, provision
from store.tables import attachments, consents, ledger_entries, messages, outbox
from tests.conftest import DatabaseFactory
from tests.gateway.conftest import AR, AU, PASSPHRASE, Pair, Side, attachment_files, issue_token, ledger
from tests.gateway.hostile import Answer, HostilePeer
from tests.gateway.test_exchange import wait_for

BR = AuthoritySpec(
    "br.mjsp",
    "Ministério da Justiça e Segurança Pública",
    "BR",
    ("pt", "en"),
    max_level="CONFIDENTIAL",
    caveats=("uncac-46-19", "uncac-46-20"),
)

# --- shared helpers ---------------------------------------------------------------------------------------------


def canary() -> str:
    return f"cnry{uuid.uuid4().hex}"


def secret_content(mark: str) -> dict[str, str]:
    """Content whose subject line and text both carry ``mark``."""
    return {"subject": f"Subject {mark}", "text": f"Confidential text {mark}"}


def tomorrow() -> date:
    """Tomorrow in UTC, the calendar gateways compare embargo dates in."""
    return datetime.now(UTC).date() + timedelta(days=1)


@dataclass(frozen=True)
class Stored:
    """What a gateway holds: row counts and the attachment files on disk."""

    messages: int
    outbox: int
    attachments: int
    consents: int
    ledger: int
    files: tuple[str, ...]


async def stored(gw: Gateway) -> Stored:
    async with gw.engine.connect() as conn:

        async def count(table: Any) -> int:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

        return Stored(
            await count(messages),
            await count(outbox),
            await count(attachments),
            await count(consents),
            await count(ledger_entries),
            attachment_files(gw),
        )


async def ledger_text(gw: Gateway) -> str:
    """Every stored ledger entry, as text, for canary searches."""
    async with gw.engine.connect() as conn:
        rows = (await conn.execute(select(ledger_entries.c.entry).order_by(ledger_entries.c.idx))).all()
    return "\n".join(bytes(row.entry).decode("utf-8") for row in rows)


def assert_problem(
    status: int, body: Any, *, code: str, http: int | None = None, secrets: Iterable[str] = ()
) -> dict[str, Any]:
    """A problem+json document with this code and status (default: the code's status in gateway/problems.py),
    echoing none of ``secrets``."""
    http = http if http is not None else status_for(code)[0]
    assert status == http, (status, body)
    assert isinstance(body, dict), body
    assert body["type"] == f"urn:comity:problem:{code}" and body["code"] == code and body["status"] == http, body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    text = json.dumps(body, ensure_ascii=False)
    for secret in secrets:
        assert secret not in text, f"problem document echoes a canary: {text[:300]}"
    return body


async def assert_ledger_clean(gw: Gateway, secrets: Iterable[str]) -> None:
    text = await ledger_text(gw)
    for secret in secrets:
        assert secret not in text, f"{gw.authority_id}'s ledger carries a canary"


def one_entry(entries: list[dict[str, Any]], type: str, **expected: Any) -> dict[str, Any]:
    """The one entry of ``type`` among ``entries`` whose members include every ``expected`` value."""
    matching = [
        entry
        for entry in entries
        if entry["type"] == type and all(entry.get(name) == value for name, value in expected.items())
    ]
    assert len(matching) == 1, (type, expected, [entry for entry in entries if entry["type"] == type])
    return matching[0]


async def post_form(side: Side, path: str, draft: dict[str, Any], data: bytes, filename: str) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("message", json.dumps(draft), content_type="application/json")
    form.add_field("attachment", io.BytesIO(data), filename=filename, content_type="application/pdf")
    return await side.call("POST", path, data=form)


async def send(side: Side, draft: dict[str, Any], *, delivered_to: Side | None = None) -> str:
    """Submit ``draft`` (JSON) and, when ``delivered_to`` is given, wait until that side holds it."""
    status, body = await side.call("POST", "/v1/messages", json=draft)
    assert status == 202, body
    message_id = str(body["id"])
    if delivered_to is not None:
        await wait_for(side, message_id, "delivered")
    return message_id


async def as_user(base: Side, config_user: tuple[str, str], **options: Any) -> Side:
    """A user created on ``base``'s gateway with the real command (``(name, role)``), with a session of its own on
    the same running gateway; close it with ``side.session.close()``."""
    name, role = config_user
    return with_token(base, await asyncio.to_thread(issue_token, base.provisioned.config, name, role, **options))


def with_token(base: Side, token: str) -> Side:
    """``base``'s running gateway, called with ``token`` in a session of its own; close it with
    :func:`close_sessions`."""
    side = Side(base.provisioned, token, base.running)
    side.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
    return side


async def close_sessions(*sides: Side) -> None:
    for side in sides:
        if side.session is not None:
            await side.session.close()
            side.session = None


def hostile_towards(sender: Side, target: Side) -> HostilePeer:
    """``sender``'s real TLS identity and keys, pointed at ``target``'s federation port: a peer that skips the
    sending gateway's checks."""
    return HostilePeer.impersonating(
        data_dir=sender.provisioned.data_dir,
        identity=sender.gw.authority_id,
        passphrase=PASSPHRASE.encode(),
        target=sender.gw.peer(target.gw.authority_id),
        target_cert=target.provisioned.data_dir / "tls" / "cert.pem",
        url=f"https://127.0.0.1:{target.provisioned.federation_port}",
    )


async def status_query_from(
    sender: Side, target: Side, case_id: str, marking: dict[str, Any], *, names_the_case: bool = True
) -> str:
    """A status query about ``case_id`` from ``sender``'s gateway, skipping its checks (its ``in_reply_to`` names
    the case unless ``names_the_case`` is false), accepted by ``target``; its id."""
    hostile = hostile_towards(sender, target)
    query = hostile.payload(
        kind="status_query",
        in_reply_to=case_id if names_the_case else None,
        marking=marking,
        content={"status_query": {"case_id": case_id}},
    )
    answer = await hostile.post(hostile.seal(query))
    assert answer.status == 200, answer.raw[:300]
    return query.id


async def assert_envelope_refused(
    target: Side, hostile: HostilePeer, answer: Answer, before: Stored, *, http: int, code: str, secrets: list[str]
) -> None:
    """A clean federation refusal: problem+json, a signed refusal, nothing stored, one ``message.refused`` entry."""
    problem = assert_problem(answer.status, answer.document, http=http, code=code, secrets=secrets)
    assert answer.content_type == "application/problem+json"
    for secret in secrets:
        assert secret not in answer.raw.decode("utf-8", "replace")
    refusal = verify_refusal(problem["refusal"], hostile.target.all_signing_keys())
    assert refusal.code == code and refusal.from_ == target.gw.authority_id and refusal.to == hostile.identity
    after = await stored(target.gw)
    assert (after.messages, after.attachments, after.files) == (before.messages, before.attachments, before.files)
    added = await ledger(target.gw, before.ledger)
    assert [entry["type"] for entry in added] == ["message.refused"], added
    assert added[0]["reason"] == code and added[0]["actor"] == f"peer:{hostile.identity}", added[0]
    await assert_ledger_clean(target.gw, secrets)


# --- three authorities, one accredited below the others ---------------------------------------------------------


@dataclass
class Trio:
    ar: Side  # alice, officer of unit mla
    au: Side  # bruce, supervisor of unit mla
    br: Side  # carla, supervisor of unit mla; br.mjsp is accredited up to CONFIDENTIAL, UNCAC caveats only


@pytest.fixture
async def trio(databases: DatabaseFactory, tmp_path: Path) -> AsyncIterator[Trio]:
    urls = [await databases.new("ar"), await databases.new("au"), await databases.new("br")]
    ar, au, br = await asyncio.to_thread(
        provision, tmp_path / "work", [AR, AU, BR], passphrase=PASSPHRASE, database_urls=urls
    )
    tokens = [
        await asyncio.to_thread(issue_token, ar.config, "alice"),
        await asyncio.to_thread(issue_token, au.config, "bruce", "supervisor"),
        await asyncio.to_thread(issue_token, br.config, "carla", "supervisor"),
    ]
    sides = Trio(Side(ar, tokens[0]), Side(au, tokens[1]), Side(br, tokens[2]))
    for side in (sides.ar, sides.au, sides.br):
        await side.start()
    try:
        yield sides
    finally:
        for side in (sides.ar, sides.au, sides.br):
            await side.stop()


# --- 1. the sending gateway: the recipient's accreditation in the directory --------------------------------------


async def test_sender_refuses_marking_beyond_recipient_accreditation(trio: Trio) -> None:
    mark = canary()
    before_ar, before_br = await stored(trio.ar.gw), await stored(trio.br.gw)
    refused = [
        ({"level": "STRICTLY CONFIDENTIAL", "caveats": []}, "br.mjsp is accredited up to CONFIDENTIAL"),
        ({"level": "CONFIDENTIAL", "caveats": ["no-onward"]}, "does not honour the caveat 'no-onward'"),
        ({"level": "CONFIDENTIAL", "caveats": [f"embargo:{tomorrow()}"]}, "does not honour the caveat 'embargo'"),
    ]
    for marking, detail in refused:
        draft = {"to": "br.mjsp", "kind": "request", "marking": marking, "content": secret_content(mark)}
        # with an attachment: refused before a byte of it is encrypted to disk
        status, body = await post_form(trio.ar, "/v1/messages", draft, mark.encode() * 100, f"{mark}.pdf")
        problem = assert_problem(status, body, http=403, code="marking-refused", secrets=[mark])
        assert detail in problem["detail"], problem

    # ledgered on the sending side, one entry per refusal; nothing sealed, stored or queued
    added = await ledger(trio.ar.gw, before_ar.ledger)
    assert [entry["type"] for entry in added] == ["message.submit_refused"] * len(refused), added
    for entry, (marking, _) in zip(added, refused, strict=True):
        assert entry["actor"] == "user:alice" and entry["reason"] == "marking-refused", entry
        assert entry["to"] == "br.mjsp" and entry["kind"] == "request" and entry["marking"] == marking, entry
        assert "message_id" not in entry
    after_ar = await stored(trio.ar.gw)
    assert (after_ar.messages, after_ar.outbox, after_ar.attachments, after_ar.files) == (0, 0, 0, ())
    await assert_ledger_clean(trio.ar.gw, [mark])
    # nothing reached br.mjsp
    assert await stored(trio.br.gw) == before_br

    # within the accreditation the same sender and recipient exchange normally
    allowed = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    await send(trio.ar, {"to": "br.mjsp", "marking": allowed, "content": {"text": "ok"}}, delivered_to=trio.br)


# --- 2. the receiving gateway: its own accreditation, whatever the sender checked ---------------------------------


async def test_receiver_refuses_marking_beyond_its_accreditation_from_a_sender_that_skips_its_check(
    trio: Trio,
) -> None:
    hostile = hostile_towards(trio.ar, trio.br)  # ar.mj's real keys and certificate, no sending-side check
    for marking in (
        {"level": "STRICTLY CONFIDENTIAL", "caveats": []},
        {"level": "CONFIDENTIAL", "caveats": ["no-onward"]},
        {"level": "CONFIDENTIAL", "caveats": [f"embargo:{tomorrow()}"]},
        {"level": "TOP SECRET", "caveats": []},
    ):
        mark = canary()
        before = await stored(trio.br.gw)
        payload = hostile.payload(marking=marking, content=secret_content(mark))
        answer = await hostile.post(hostile.seal(payload))
        await assert_envelope_refused(
            trio.br, hostile, answer, before, http=403, code="marking-refused", secrets=[mark]
        )

    # an envelope whose routing header understates the signed marking is refused too, and stores nothing
    mark = canary()
    before = await stored(trio.br.gw)
    payload = hostile.payload(marking={"level": "STRICTLY CONFIDENTIAL", "caveats": []}, content=secret_content(mark))
    lying = hostile.seal_with_header(payload, marking={"level": "CONFIDENTIAL", "caveats": []})
    answer = await hostile.post(lying)
    await assert_envelope_refused(trio.br, hostile, answer, before, http=400, code="header-mismatch", secrets=[mark])

    # the sender's side never saw any of it: the hostile peer bypassed ar.mj's gateway entirely
    assert (await stored(trio.ar.gw)).messages == 0


# --- 6. onward use of limited content: only with the originator's signed consent ----------------------------------


async def test_a_caveat_with_a_parameter_limits_onward_use_by_its_name(trio: Trio) -> None:
    """A parameter narrows a caveat (here the proceedings the use is limited to); it never lifts it: content marked
    ``uncac-46-19:proc-17`` goes on, even under the same marking, only with the originator's consent."""
    mark = canary()
    limited = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-19:proc-17"]}
    message_id = await send(
        trio.ar, {"to": "au.ag", "marking": limited, "content": secret_content(mark)}, delivered_to=trio.au
    )
    onward = {"to": "br.mjsp", "marking": limited, "content": {"text": "see the forwarded request"}}
    before_br = await stored(trio.br.gw)
    status, body = await trio.au.call("POST", "/v1/messages", json={**onward, "forwards": [message_id]})
    problem = assert_problem(status, body, code="consent-required", secrets=[mark])
    assert "ar.mj must consent before its content goes to br.mjsp" in problem["detail"], problem
    assert await stored(trio.br.gw) == before_br


async def test_limited_content_goes_to_a_third_authority_only_with_the_originators_signed_consent(
    trio: Trio,
) -> None:
    mark = canary()
    limited = {}
    for caveat in ("uncac-46-19", "no-onward"):
        draft = {
            "to": "au.ag",
            "marking": {"level": "CONFIDENTIAL", "caveats": [caveat]},
            "content": secret_content(mark),
        }
        limited[caveat] = await send(trio.ar, draft, delivered_to=trio.au)

    def onward(message_id: str) -> dict[str, Any]:
        return {
            "to": "br.mjsp",
            "marking": {"level": "CONFIDENTIAL", "caveats": ["uncac-46-19"]},
            "content": {"text": "see the forwarded request"},
            "forwards": [message_id],
        }

    before_au, before_br = await stored(trio.au.gw), await stored(trio.br.gw)
    for caveat, message_id in limited.items():
        status, body = await trio.au.call("POST", "/v1/messages", json=onward(message_id))
        problem = assert_problem(status, body, code="consent-required", secrets=[mark])
        assert "ar.mj must consent" in problem["detail"], (caveat, problem)
    added = await ledger(trio.au.gw, before_au.ledger)
    assert [entry["type"] for entry in added] == ["message.submit_refused"] * 2, added
    for entry in added:
        assert entry["actor"] == "user:bruce" and entry["reason"] == "consent-required" and entry["to"] == "br.mjsp"
    after_au = await stored(trio.au.gw)
    assert (after_au.messages, after_au.outbox, after_au.files) == (before_au.messages, 0, before_au.files)
    assert await stored(trio.br.gw) == before_br

    # the originator consents, for one message and one recipient, in a signed consent message
    status, body = await trio.ar.call(
        "POST", f"/v1/messages/{limited['uncac-46-19']}/consent", json={"recipient": "br.mjsp"}
    )
    assert status == 202, body
    consent_id = body["id"]
    await wait_for(trio.ar, consent_id, "delivered")
    one_entry(
        await ledger(trio.au.gw, after_au.ledger),
        "consent.received",
        actor="peer:ar.mj",
        message_id=limited["uncac-46-19"],
        related_id=consent_id,
        to="br.mjsp",
    )

    forwarded = await send(trio.au, onward(limited["uncac-46-19"]), delivered_to=trio.br)
    status, opened = await trio.br.call("POST", f"/v1/messages/{forwarded}/open", json={"purpose": "review"})
    assert status == 200, opened
    assert opened["content"]["forwarded"] == [
        {"message_id": limited["uncac-46-19"], "from": "ar.mj", "content": secret_content(mark)}
    ]
    # a consent covers that message only: the no-onward one stays refused
    status, body = await trio.au.call("POST", "/v1/messages", json=onward(limited["no-onward"]))
    assert_problem(status, body, code="consent-required", secrets=[mark])
    for side in (trio.ar, trio.au, trio.br):
        await assert_ledger_clean(side.gw, [mark])


async def test_a_forward_keeps_every_caveat_of_what_it_forwards(trio: Trio) -> None:
    """A consent lets use-limited content travel to one recipient; it lifts none of its caveats: the forward is
    refused below them, even back to the originator, goes out under them, and so stays closed at home to an
    officer not authorised for them (decision 110)."""
    mark = canary()
    limited = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-19"]}
    source = await send(
        trio.ar, {"to": "au.ag", "marking": limited, "content": secret_content(mark)}, delivered_to=trio.au
    )
    status, body = await trio.ar.call("POST", f"/v1/messages/{source}/consent", json={"recipient": "br.mjsp"})
    assert status == 202, body
    await wait_for(trio.ar, body["id"], "delivered")
    for _ in range(200):
        if any(e["type"] == "consent.received" for e in await ledger(trio.au.gw)):
            break
        await asyncio.sleep(0.05)
    bare = {"level": "CONFIDENTIAL", "caveats": []}
    for to in ("br.mjsp", "ar.mj"):
        onward = {"to": to, "marking": bare, "content": {"text": "fyi"}, "forwards": [source]}
        status, body = await trio.au.call("POST", "/v1/messages", json=onward)
        assert_problem(status, body, code="marking-refused", secrets=[mark])
    onward = {"to": "br.mjsp", "marking": limited, "content": {"text": "fyi"}, "forwards": [source]}
    forward = await send(trio.au, onward, delivered_to=trio.br)
    status, summary = await trio.br.call("GET", f"/v1/messages/{forward}")
    assert status == 200 and summary["marking"] == limited, summary
    # the source's content was decrypted to go on: its ledger says by whom, in which message, to whom
    one_entry(
        await ledger(trio.au.gw),
        "message.opened",
        actor="user:bruce",
        message_id=source,
        purpose="forward",
        related_id=forward,
        to="br.mjsp",
    )
    una = await as_user(trio.au, ("una", "officer"), caveats=("uncac-46-20",), unit="mla")
    try:
        status, body = await trio.au.call("POST", f"/v1/cases/{forward}/assign", json={"username": "una"})
        assert status == 200, body
        for message_id in (source, forward):  # neither the source nor the forward opens for her
            status, body = await una.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "review"})
            assert status == 404, body
    finally:
        await close_sessions(una)
    for side in (trio.ar, trio.au, trio.br):
        await assert_ledger_clean(side.gw, [mark])


async def test_content_forwarded_in_turn_needs_its_own_originators_consent(trio: Trio) -> None:
    """ar.mj's gateway (skipping its checks) sends au.ag a use-limited message carrying content of br.mjsp and of
    an authority au.ag never heard from, and consents to its going to br.mjsp: ar.mj's consent covers ar.mj's
    part; br.mjsp's own content may go back to br.mjsp, the other's may not go anywhere (decision 110)."""
    hostile = hostile_towards(trio.ar, trio.au)
    limited = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-19"]}
    carried = [{"message_id": str(uuid.uuid4()), "from": "br.mjsp", "content": {"text": "of br"}}]
    others = [*carried, {"message_id": str(uuid.uuid4()), "from": "zz.other", "content": {"text": "of zz"}}]
    ids = {}
    for name, forwarded in (("br", carried), ("zz", others)):
        payload = hostile.payload(kind="request", marking=limited, content={"text": "x", "forwarded": forwarded})
        assert (await hostile.post(hostile.seal(payload))).status == 200
        consent = hostile.payload(
            kind="consent", marking=limited, content={"consent": {"message_id": payload.id, "recipient": "br.mjsp"}}
        )
        assert (await hostile.post(hostile.seal(consent))).status == 200
        ids[name] = payload.id
    onward = {"to": "br.mjsp", "marking": limited, "content": {"text": "fyi"}}
    await send(trio.au, {**onward, "forwards": [ids["br"]]}, delivered_to=trio.br)
    status, body = await trio.au.call("POST", "/v1/messages", json={**onward, "forwards": [ids["zz"]]})
    problem = assert_problem(status, body, code="consent-required")
    assert "zz.other must consent before it goes to br.mjsp" in problem["detail"], problem


async def test_a_consent_goes_only_to_whom_its_message_went_under_at_least_its_marking(trio: Trio) -> None:
    """A consent names a message and where its content may go: only the message's originator sends it, only to
    the authority the message was sent to, and never under a lower marking than the message's (decision 110)."""
    limited = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-19"]}
    ours = await send(trio.ar, {"to": "au.ag", "marking": limited, "content": {"text": "q"}}, delivered_to=trio.au)

    def consent(to: str, marking: dict[str, Any], recipient: str = "br.mjsp") -> dict[str, Any]:
        content = {"consent": {"message_id": ours, "recipient": recipient}}
        return {"to": to, "kind": "consent", "marking": marking, "content": content}

    before = await stored(trio.ar.gw)
    for draft, code in (
        (consent("au.ag", {"level": "UNCLASSIFIED", "caveats": []}), "marking-refused"),
        (consent("au.ag", {"level": "CONFIDENTIAL", "caveats": []}), "marking-refused"),
        (consent("br.mjsp", limited), "invalid-message"),  # the message went to au.ag, not br.mjsp
    ):
        status, body = await trio.ar.call("POST", "/v1/messages", json=draft)
        assert_problem(status, body, code=code)
    after = await stored(trio.ar.gw)
    assert (after.messages, after.outbox) == (before.messages, before.outbox)
    # au.ag received it: not its message to consent about, even back to its originator
    status, body = await trio.au.call("POST", "/v1/messages", json=consent("ar.mj", limited, recipient="au.ag"))
    assert_problem(status, body, code="invalid-message")
    await send(trio.ar, consent("au.ag", limited), delivered_to=trio.au)


async def test_a_receiver_refuses_a_consent_about_a_message_the_sender_never_sent_it(pair: Pair) -> None:
    """Only the originator consents: a peer cannot consent about content someone else sent us."""
    own = await send(pair.au, {"to": "ar.mj", "content": {"text": "our own request"}}, delivered_to=pair.ar)
    hostile = hostile_towards(pair.ar, pair.au)
    before = await stored(pair.au.gw)
    payload = hostile.payload(kind="consent", content={"consent": {"message_id": own, "recipient": "br.mjsp"}})
    answer = await hostile.post(hostile.seal(payload))
    await assert_envelope_refused(pair.au, hostile, answer, before, http=400, code="invalid-message", secrets=[])
    assert (await stored(pair.au.gw)).consents == 0


__all__ = [
    "BR",
    "Stored",
    "Trio",
    "assert_envelope_refused",
    "assert_ledger_clean",
    "as_user",
    "assert_problem",
    "close_sessions",
    "canary",
    "hostile_towards",
    "status_query_from",
    "ledger",
    "ledger_text",
    "one_entry",
    "post_form",
    "secret_content",
    "send",
    "stored",
    "tomorrow",
    "trio",
]
