"""Informal consultations (docs/requests.md, "Consultations"), end to end between real gateways on both backends:
a thread started, answered, a draft request shared and checked, the thread converted into a formal request that
keeps the link on both sides; the refusals (wrong peer, no clearance, someone else's thread, converting twice, bad
input); and a thread about a case as the consultation on record before a refusal (art. 46(26))."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.cli.request import example_request
from gateway.context import Gateway
from protocol.messages import new_message_id
from protocol.requests import RequestType, blank_request
from store.tables import consultation_drafts, consultations
from tests.gateway.conftest import Pair, Side
from tests.gateway.test_exchange import wait_for
from tests.gateway.test_markings import (
    Trio,
    as_user,
    assert_envelope_refused,
    assert_problem,
    canary,
    close_sessions,
    hostile_towards,
    ledger,
    one_entry,
    post_form,
    secret_content,
    stored,
    tomorrow,
    trio,  # noqa: F401 (the fixture)
)
from tests.gateway.test_requests_flow import case_state, formal, move, send_complete, until

MARKING = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}  # the example requests ask for art. 46(20)


async def start_thread(side: Side, **body: Any) -> str:
    status, answer = await side.call("POST", "/v1/consultations", json={"to": "au.ag", "marking": MARKING, **body})
    assert status == 202, answer
    assert answer["id"] == answer["thread_id"]
    await wait_for(side, answer["id"], "delivered")
    return str(answer["id"])


async def reply(side: Side, thread_id: str, **body: Any) -> str:
    status, answer = await side.call("POST", f"/v1/consultations/{thread_id}/messages", json=body)
    assert status == 202, answer
    assert answer["thread_id"] == thread_id
    await wait_for(side, answer["id"], "delivered")
    return str(answer["id"])


async def thread(side: Side, thread_id: str) -> dict[str, Any]:
    status, body = await side.call("GET", f"/v1/consultations/{thread_id}")
    assert status == 200, body
    return dict(body)


async def delivered_request(side: Side, marking: dict[str, Any], *, to: str) -> str:
    """A complete criminal-matters request under ``marking``, sent from ``side`` to ``to`` and delivered: its case."""
    request = {**formal(example_request(RequestType.MLA_CRIMINAL).to_json()), "marking": marking, "to": to}
    status, body = await side.call("POST", "/v1/messages", json=request)
    assert status == 202, body
    await wait_for(side, body["id"], "delivered")
    return str(body["id"])


async def counts(gw: Gateway) -> tuple[int, int]:
    async with gw.engine.connect() as conn:
        threads = (await conn.execute(select(func.count()).select_from(consultations))).scalar_one()
        drafts = (await conn.execute(select(func.count()).select_from(consultation_drafts))).scalar_one()
    return int(threads), int(drafts)


async def test_a_thread_shares_a_draft_and_becomes_a_formal_request_linked_on_both_sides(pair: Pair) -> None:
    thread_id = await start_thread(pair.ar, content={"subject": "Before we ask", "text": "Would you need X?"})
    # au.ag: an incoming thread is a case for a supervisor of the unit to assign, like an incoming request
    status, listed = await pair.au.call("GET", "/v1/consultations")
    assert status == 200 and [t["id"] for t in listed["consultations"]] == [thread_id], listed
    first = listed["consultations"][0]
    assert (first["peer"], first["direction"], first["state"], first["unit"]) == ("ar.mj", "in", "open", None)
    assert first["marking"] == MARKING and "subject" not in str(listed)
    status, opened = await pair.au.call("POST", f"/v1/messages/{thread_id}/open", json={"purpose": "review"})
    assert status == 200, opened
    assert opened["kind"] == "consultation"
    assert opened["content"]["consultation"] == {"thread_id": thread_id, "informal": True, "about": None}
    assert opened["content"]["subject"] == "Before we ask"

    answer = await reply(pair.au, thread_id, content={"text": "Yes, and the bank records"})
    # the requesting officer shares a draft for review: incomplete, but a draft is never refused as incomplete
    draft = {**blank_request(RequestType.MLA_CRIMINAL).to_json(), "confidentiality_requested": True}
    shared = await reply(pair.ar, thread_id, content={"text": "Draft attached"}, draft_request=draft)
    for side, direction in ((pair.ar, ["out", "in", "out"]), (pair.au, ["in", "out", "in"])):

        async def arrived(side: Side = side) -> bool:
            return len((await thread(side, thread_id))["messages"]) == 3

        await until(arrived)
        body = await thread(side, thread_id)
        assert [m["id"] for m in body["messages"]] == [thread_id, answer, shared]
        assert [m["direction"] for m in body["messages"]] == direction
        assert all(m["kind"] == "consultation" and m["case_id"] == thread_id for m in body["messages"])
        check = body["messages"][2]["draft_check"]
        assert check["request_type"] == "mla-criminal" and not check["complete"] and check["blocking"], check
        assert "marking" in check["warnings"]  # its formal request will need the caveat uncac-46-20 (decision 85)
        assert "draft_check" not in body["messages"][1]
    # a draft opens no formal case state on either side
    for side in (pair.ar, pair.au):
        assert await case_state(side, thread_id) == (None, None)

    # converting the shared (incomplete) draft is refused with the checklist; nothing changes
    before = len(await ledger(pair.ar.gw))
    status, body = await pair.ar.call("POST", f"/v1/consultations/{thread_id}/convert", json={"from_draft": shared})
    assert_problem(status, body, code="incomplete-request")
    entries = (await ledger(pair.ar.gw))[before:]
    assert [(e["type"], e.get("purpose") or e.get("reason")) for e in entries] == [
        ("message.opened", "conversion"),
        ("message.submit_refused", "incomplete-request"),
    ]
    assert (await thread(pair.ar, thread_id))["state"] == "open"

    formal = example_request(RequestType.MLA_CRIMINAL).to_json()
    status, body = await pair.ar.call("POST", f"/v1/consultations/{thread_id}/convert", json={"request": formal})
    assert status == 202 and body["consultation_id"] == thread_id, body
    request_id = body["id"]
    await wait_for(pair.ar, request_id, "delivered")
    assert await case_state(pair.au, request_id) == ("received", None)  # a formal case, its own life cycle
    for side in (pair.ar, pair.au):

        async def converted(side: Side = side) -> bool:
            return bool((await thread(side, thread_id))["state"] == "converted")

        await until(converted)
        assert (await thread(side, thread_id))["converted_request_id"] == request_id
    status, opened = await pair.au.call("POST", f"/v1/messages/{request_id}/open", json={"purpose": "review"})
    assert status == 200 and opened["content"]["request"]["consultation_id"] == thread_id, opened
    for side, actor in ((pair.ar, "user:alice"), (pair.au, "peer:ar.mj")):
        entries = await ledger(side.gw)
        one_entry(entries, "consultation.converted", actor=actor, message_id=thread_id, related_id=request_id)
        kinds = {
            e["message_id"]: e.get("kind") for e in entries if e["type"] in ("message.submitted", "message.received")
        }
        assert [kinds[m] for m in (thread_id, answer, shared)] == ["consultation"] * 3

    # converting twice is refused, whoever asks and however
    status, body = await pair.ar.call("POST", f"/v1/consultations/{thread_id}/convert", json={"request": formal})
    assert_problem(status, body, code="consultation-converted")
    linked = {**formal, "consultation_id": thread_id}
    draft_again = {"to": "au.ag", "kind": "request", "marking": MARKING, "content": {"request": linked}}
    status, body = await pair.ar.call("POST", "/v1/messages", json=draft_again)
    assert_problem(status, body, code="consultation-converted")
    # the discussion may go on in a converted thread
    await reply(pair.au, thread_id, content={"text": "Received, thank you"})


async def test_a_thread_about_a_case_is_the_consultation_on_record_before_a_refusal(pair: Pair) -> None:
    case_id = await send_complete(pair)
    for event in ("acknowledge", "begin_review"):
        assert (await move(pair.au, case_id, event))[0] == 200
    refusal = {"grounds": ["46(21)(b)"], "reasons": "essential interests"}
    status, body = await move(pair.au, case_id, "refuse", refusal=refusal)
    assert_problem(status, body, code="consultation-required")
    # an id that is no thread about this case is not a consultation on record
    status, body = await move(pair.au, case_id, "refuse", refusal=refusal, consultation_id=case_id)
    assert_problem(status, body, code="consultation-required")
    assert await case_state(pair.au, case_id) == ("under_review", None)

    status, answer = await pair.au.call(
        "POST",
        "/v1/consultations",
        json={"to": "ar.mj", "marking": MARKING, "about": case_id, "content": {"text": "Could you narrow it?"}},
    )
    assert status == 202, answer
    thread_id = answer["id"]
    await wait_for(pair.au, thread_id, "delivered")
    # ar.mj: the thread joins the unit and the officers of the case it is about (alice sent the request)
    status, listed = await pair.ar.call("GET", "/v1/consultations")
    assert [(t["id"], t["about"], t["unit"]) for t in listed["consultations"]] == [(thread_id, case_id, "mla")]
    one_entry(await ledger(pair.ar.gw), "case.assigned", actor="system", message_id=thread_id, related_id=case_id)
    status, narrowed = await pair.ar.call("GET", f"/v1/consultations?about={case_id}&state=open")
    assert status == 200 and [t["id"] for t in narrowed["consultations"]] == [thread_id], narrowed
    status, body = await pair.ar.call("GET", "/v1/consultations?state=closed-ish")
    assert_problem(status, body, code="invalid-message")
    await reply(pair.ar, thread_id, content={"text": "We cannot narrow it"})

    # a later thread about the case, marked above what olga (assigned to the case) is cleared for, is not hers to
    # cite: naming it is naming no thread, and without a name hers is the latest she may act on
    strict = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    status, answer = await pair.au.call(
        "POST", "/v1/consultations", json={"to": "ar.mj", "marking": strict, "about": case_id, "content": {}}
    )
    assert status == 202, answer
    await wait_for(pair.au, answer["id"], "delivered")
    olga = await as_user(pair.au, ("olga", "officer"), clearance="CONFIDENTIAL", caveats=("uncac-46-20",))
    try:
        for target in (case_id, thread_id, answer["id"]):  # the case and both threads: clearance decides
            status, assigned = await pair.au.call("POST", f"/v1/cases/{target}/assign", json={"username": "olga"})
            assert status == 200, assigned
        status, body = await move(olga, case_id, "refuse", refusal=refusal, consultation_id=answer["id"])
        assert_problem(status, body, code="consultation-required")
        status, body = await move(olga, case_id, "refuse", refusal=refusal)
    finally:
        await close_sessions(olga)
    assert status == 200 and body["state"] == "refused", body
    await wait_for(pair.au, body["report"], "delivered")
    status, opened = await pair.ar.call("POST", f"/v1/messages/{body['report']}/open", json={"purpose": "review"})
    assert status == 200 and opened["content"]["consultation_id"] == thread_id, opened


async def test_threads_are_refused_to_the_wrong_peer_and_to_officers_without_the_right(trio: Trio) -> None:  # noqa: F811
    ar, au, br = trio.ar, trio.au, trio.br
    mark = canary()
    marking = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    thread_id = await start_thread(ar, marking=marking, content=secret_content(mark))

    # wrong peer: a reply or a formal request naming the ar-au thread cannot go to br.mjsp
    confidential = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    consultation = {"thread_id": thread_id, "informal": True, "about": None}
    before = await stored(ar.gw)
    formal = {**example_request(RequestType.MLA_CRIMINAL).to_json(), "consultation_id": thread_id}
    for draft in (
        {"to": "br.mjsp", "kind": "request", "marking": confidential, "content": {"request": formal}},
        {"to": "br.mjsp", "kind": "consultation", "marking": confidential, "content": {"consultation": consultation}},
        {
            "to": "br.mjsp",
            "kind": "consultation",
            "in_reply_to": thread_id,
            "marking": confidential,
            "content": {"consultation": consultation},
        },
    ):
        status, body = await ar.call("POST", "/v1/messages", json=draft)
        assert_problem(status, body, code="invalid-message")
    after = await stored(ar.gw)
    assert (after.messages, after.outbox, after.ledger) == (before.messages, before.outbox, before.ledger)
    # ... nor can br.mjsp, skipping its own gateway's checks, write into it at au.ag
    hostile = hostile_towards(br, au)
    before = await stored(au.gw)
    payload = hostile.payload(
        kind="consultation",
        in_reply_to=thread_id,
        marking=confidential,
        content={"consultation": consultation, "text": mark},
    )
    answer = await hostile.post(hostile.seal(payload))
    await assert_envelope_refused(au, hostile, answer, before, http=400, code="invalid-message", secrets=[mark])

    # au.ag: an officer assigned to the thread but not cleared for it reads nothing and cannot answer
    olga = await as_user(au, ("olga", "officer"), clearance="CONFIDENTIAL")
    # ar.mj: another officer of the same unit, not assigned, cannot act on alice's thread
    bob = await as_user(ar, ("bob", "officer"))
    try:
        status, body = await au.call("POST", f"/v1/cases/{thread_id}/assign", json={"username": "olga"})
        assert status == 200, body
        # answered as if there were no such thread (decision 94), ledgered as the refusal it is
        status, body = await olga.call("GET", f"/v1/consultations/{thread_id}")
        assert_problem(status, body, code="not-found", secrets=[mark])
        status, body = await olga.call("POST", f"/v1/messages/{thread_id}/open", json={"purpose": "review"})
        assert_problem(status, body, code="not-found", secrets=[mark])
        before_au = len(await ledger(au.gw))
        status, body = await olga.call(
            "POST", f"/v1/consultations/{thread_id}/messages", json={"marking": marking, "content": {"text": mark}}
        )
        assert_problem(status, body, code="not-found", secrets=[mark])
        refused = (await ledger(au.gw))[before_au:]
        assert [(e["type"], e["actor"], e["reason"]) for e in refused] == [
            ("message.submit_refused", "user:olga", "forbidden")
        ]

        status, body = await bob.call("GET", "/v1/consultations")
        assert status == 200 and body["consultations"] == [], body
        before_ar = len(await ledger(ar.gw))
        status, body = await bob.call(
            "POST", f"/v1/consultations/{thread_id}/convert", json={"request": formal, "marking": marking}
        )
        assert_problem(status, body, code="not-found", secrets=[mark])
        refused = (await ledger(ar.gw))[before_ar:]
        assert [(e["type"], e["actor"], e["reason"]) for e in refused] == [
            ("message.submit_refused", "user:bob", "forbidden")
        ]
        assert (await thread(ar, thread_id))["state"] == "open"
        # a formal request coming out of the thread is not less protected than the thread
        status, body = await ar.call(
            "POST", f"/v1/consultations/{thread_id}/convert", json={"request": formal, "marking": confidential}
        )
        assert_problem(status, body, code="marking-refused", secrets=[mark])
        assert (await thread(ar, thread_id))["state"] == "open"
    finally:
        await close_sessions(olga, bob)


async def test_bad_input_changes_nothing(pair: Pair) -> None:
    mark = canary()
    case_id = await send_complete(pair)
    before, threads = await stored(pair.ar.gw), await counts(pair.ar.gw)
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/consultations", {"to": "au.ag", "content": {"consultation": mark}}, "invalid-message"),
        ("/v1/consultations", {"to": "au.ag", "content": {"request": mark}}, "invalid-message"),
        ("/v1/consultations", {"to": "au.ag", "content": {"text": mark}, "about": "x" + mark}, "invalid-message"),
        (
            "/v1/consultations",
            {"to": "au.ag", "content": {"text": mark}, "draft_request": {"type": mark}},
            "invalid-message",
        ),
        ("/v1/consultations", {"to": "au.ag", "content": {"text": mark}, "extra": mark}, "invalid-message"),
        ("/v1/consultations", {"content": {"text": mark}}, "invalid-message"),
        # about a case that is not a case shared with that peer (a message id that is no case)
        (
            "/v1/consultations",
            {"to": "au.ag", "content": {"text": mark}, "about": case_id.replace(case_id[-4:], "aaaa")},
            "invalid-message",
        ),
        # a consultation through the message route must name its thread
        ("/v1/messages", {"to": "au.ag", "kind": "consultation", "content": {"text": mark}}, "invalid-message"),
        (
            "/v1/messages",
            {"to": "au.ag", "kind": "request", "content": {"consultation": {"x": mark}}},
            "invalid-message",
        ),
    ]
    for path, body, code in bad:
        status, answer = await pair.ar.call("POST", path, json=body)
        assert_problem(status, answer, code=code, secrets=[mark])
    status, answer = await pair.ar.call("POST", f"/v1/consultations/{case_id}/convert", json={"request": {}})
    assert_problem(status, answer, code="not-found", secrets=[mark])
    after = await stored(pair.ar.gw)
    assert (after.messages, after.outbox, after.ledger) == (before.messages, before.outbox, before.ledger)
    assert await counts(pair.ar.gw) == threads


async def test_a_request_out_of_a_thread_the_receiver_converted_meanwhile_is_accepted(pair: Pair) -> None:
    """Both sides convert at once: each keeps its first conversion and the other's formal request still arrives."""
    thread_id = await start_thread(pair.ar, content={"text": "Shall we?"})
    formal = example_request(RequestType.MLA_CRIMINAL).to_json()
    status, body = await pair.au.call("POST", f"/v1/consultations/{thread_id}/convert", json={"request": formal})
    assert status == 202, body
    ours = body["id"]
    await wait_for(pair.au, ours, "delivered")
    # ar.mj's own conversion, crossing ours on the way (sent as its gateway would, before it received ours)
    hostile = hostile_towards(pair.ar, pair.au)
    crossing = hostile.payload(
        kind="request", marking=MARKING, content={"request": {**formal, "consultation_id": thread_id}}
    )
    answer = await hostile.post(hostile.seal(crossing))
    assert answer.status == 200, answer.raw
    assert await case_state(pair.au, crossing.id) == ("received", None)
    # bruce sent it; alice, at ar.mj, is not assigned to the case it opened there, so it is not named to her
    for side, named in ((pair.au, ours), (pair.ar, None)):
        body = await thread(side, thread_id)
        assert (body["state"], body["converted_request_id"]) == ("converted", named), body
    converted = [e for e in await ledger(pair.au.gw) if e["type"] == "consultation.converted"]
    assert [(e["actor"], e["related_id"]) for e in converted] == [("user:bruce", ours)]


async def test_a_thread_carries_attachments_like_any_message(pair: Pair) -> None:
    data = b"%PDF draft translation " * 4000
    thread = {"to": "au.ag", "marking": MARKING, "content": {"text": "The draft and its translation"}}
    status, body = await post_form(pair.ar, "/v1/consultations", thread, data, "translation.pdf")
    assert status == 202, body
    thread_id = body["id"]
    await wait_for(pair.ar, thread_id, "delivered")
    status, got = await pair.au.call("GET", f"/v1/messages/{thread_id}/attachments/0")
    assert status == 200 and got == data
    status, body = await post_form(
        pair.au, f"/v1/consultations/{thread_id}/messages", {"content": {"text": "annotated"}}, data[::-1], "a.pdf"
    )
    assert status == 202, body
    await wait_for(pair.au, body["id"], "delivered")
    status, got = await pair.ar.call("GET", f"/v1/messages/{body['id']}/attachments/0")
    assert status == 200 and got == data[::-1]


async def test_a_request_made_of_a_draft_keeps_the_drafts_marking(pair: Pair) -> None:
    """A draft shared above the thread's marking keeps its level and caveats in the formal request made of it: by
    default, and against an explicit lower marking (refused and ledgered, nothing sent)."""
    thread_id = await start_thread(pair.ar, content={"text": "Before we ask"})
    higher = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    draft = example_request(RequestType.MLA_CRIMINAL).to_json()
    shared = await reply(pair.ar, thread_id, marking=higher, content={"text": "Draft"}, draft_request=draft)

    before = len(await ledger(pair.ar.gw))
    lower = {"from_draft": shared, "marking": MARKING}
    status, body = await pair.ar.call("POST", f"/v1/consultations/{thread_id}/convert", json=lower)
    assert_problem(status, body, code="marking-refused")
    entries = (await ledger(pair.ar.gw))[before:]
    assert [(e["type"], e.get("purpose") or e.get("reason")) for e in entries] == [
        ("message.opened", "conversion"),
        ("message.submit_refused", "marking-refused"),
    ]
    assert (await thread(pair.ar, thread_id))["state"] == "open"

    status, body = await pair.ar.call("POST", f"/v1/consultations/{thread_id}/convert", json={"from_draft": shared})
    assert status == 202, body
    status, summary = await pair.ar.call("GET", f"/v1/messages/{body['id']}")
    assert status == 200 and summary["marking"] == higher, summary


async def test_an_officer_sees_of_a_thread_only_what_she_is_cleared_for(pair: Pair) -> None:
    """Decision 94 within a thread: olga (assigned, cleared to CONFIDENTIAL with the art. 46(20) caveat) sees a
    CONFIDENTIAL thread but not the STRICTLY CONFIDENTIAL reply in it (not in the thread's messages, not the default
    a reply answers, not answerable by id); a STRICTLY CONFIDENTIAL thread assigned to her is not listed at all."""
    ar, au = pair.ar, pair.au
    strict = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    thread_id = await start_thread(ar, content={"text": "a first question"})
    hidden = await reply(ar, thread_id, marking=strict, content={"text": "a closer question"})
    other_id = await start_thread(ar, marking=strict, content={"text": "another matter"})
    olga = await as_user(au, ("olga", "officer"), clearance="CONFIDENTIAL", caveats=("uncac-46-20",))
    try:
        for target in (thread_id, other_id):
            status, body = await au.call("POST", f"/v1/cases/{target}/assign", json={"username": "olga"})
            assert status == 200, body
        status, body = await olga.call("GET", "/v1/consultations")
        assert status == 200 and [t["id"] for t in body["consultations"]] == [thread_id], body
        shown = await thread(olga, thread_id)
        assert [m["id"] for m in shown["messages"]] == [thread_id], shown
        assert shown["last_message_at"] == shown["messages"][0]["created_at"], shown  # not the hidden reply's time
        assert [m["id"] for m in (await thread(au, thread_id))["messages"]] == [thread_id, hidden]  # bruce: both
        # her reply answers what she sees, not the hidden reply; naming that one is naming nothing
        nothing = "0f8fad5b-d9cb-469f-a165-70867728950e"
        answers = []
        for wanted in (hidden, nothing):
            status, body = await olga.call(
                "POST", f"/v1/consultations/{thread_id}/messages", json={"in_reply_to": wanted, "content": {}}
            )
            answers.append((status, str(body).replace(wanted, "<id>")))
        assert answers[0] == answers[1] and answers[0][0] == 400, answers
        status, body = await olga.call("POST", f"/v1/consultations/{thread_id}/messages", json={"content": {}})
        assert status == 202, body
        status, sent = await au.call("GET", f"/v1/messages/{body['id']}")
        assert sent["in_reply_to"] == thread_id, sent
        await wait_for(au, body["id"], "delivered")

        # ar.mj converts the thread into a request marked above what she is cleared for: the thread is converted
        # for her too, but does not name the request she may not know of; bruce sees it
        formal = example_request(RequestType.MLA_CRIMINAL).to_json()
        status, body = await ar.call(
            "POST", f"/v1/consultations/{thread_id}/convert", json={"request": formal, "marking": strict}
        )
        assert status == 202, body
        await wait_for(ar, body["id"], "delivered")
        assert (await thread(au, thread_id))["converted_request_id"] == body["id"]
        shown = await thread(olga, thread_id)
        assert shown["state"] == "converted" and shown["converted_request_id"] is None, shown
        status, listed = await olga.call("GET", "/v1/consultations")
        assert [(t["id"], t["converted_request_id"]) for t in listed["consultations"]] == [(thread_id, None)]
    finally:
        await close_sessions(olga)


async def test_a_hidden_reply_neither_dates_nor_moves_up_a_thread_in_an_officers_list(pair: Pair) -> None:
    """Decision 121: the list orders an officer's threads by the last message she may see, and shows its time; a
    reply marked above her clearance would otherwise tell her, by the thread's place and time, that it came."""
    ar, au = pair.ar, pair.au
    strict = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    older = await start_thread(ar, content={"text": "a first question"})
    newer = await start_thread(ar, content={"text": "a second question"})
    await reply(ar, older, marking=strict, content={"text": "a closer question"})
    olga = await as_user(au, ("olga", "officer"), clearance="CONFIDENTIAL", caveats=("uncac-46-20",))
    try:
        for target in (older, newer):
            status, body = await au.call("POST", f"/v1/cases/{target}/assign", json={"username": "olga"})
            assert status == 200, body
        status, everything = await au.call("GET", "/v1/consultations")
        assert status == 200 and [t["id"] for t in everything["consultations"]] == [older, newer], everything
        for limit, offset, wanted in ((100, 0, [newer, older]), (1, 0, [newer]), (1, 1, [older])):
            status, body = await olga.call("GET", f"/v1/consultations?limit={limit}&offset={offset}")
            assert status == 200 and [t["id"] for t in body["consultations"]] == wanted, body
        status, body = await olga.call("GET", "/v1/consultations")
        listed = {t["id"]: t["last_message_at"] for t in body["consultations"]}
        for target in (older, newer):
            assert listed[target] == (await thread(olga, target))["messages"][0]["created_at"], body
    finally:
        await close_sessions(olga)


async def test_a_thread_about_a_case_carries_at_least_the_cases_marking(pair: Pair) -> None:
    """Decision 145: a thread about a case went out CONFIDENTIAL by default, or lower if asked, whatever the case's
    marking: at the other end a supervisor not cleared for the case read the consultation about it. Now the default
    is at least the case's marking, and a lower one is refused (ledgered)."""
    strict = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-19", "uncac-46-20"]}
    case_id = await delivered_request(pair.ar, strict, to="au.ag")
    lower = {"to": "ar.mj", "about": case_id, "marking": MARKING, "content": {"text": "about it"}}
    status, problem = await pair.au.call("POST", "/v1/consultations", json=lower)
    assert_problem(status, problem, code="marking-refused")
    assert [e["type"] for e in (await ledger(pair.au.gw))[-1:]] == ["message.submit_refused"]
    unmarked = {key: value for key, value in lower.items() if key != "marking"}
    status, body = await pair.au.call("POST", "/v1/consultations", json=unmarked)
    assert status == 202, body
    status, summary = await pair.au.call("GET", f"/v1/messages/{body['id']}")
    assert summary["marking"] == strict, summary


async def test_a_thread_the_counterpart_does_not_hold_is_no_consultation_on_record(pair: Pair) -> None:
    """Art. 46(26): a refusal needs a consultation the counterpart also holds (decision 45); a thread still in our
    outbox counted (decision 145)."""
    case_id = await send_complete(pair)
    for event in ("acknowledge", "begin_review"):
        assert (await move(pair.au, case_id, event))[0] == 200
    await pair.ar.stop()  # the requesting authority is unreachable: the thread stays queued
    status, answer = await pair.au.call(
        "POST", "/v1/consultations", json={"to": "ar.mj", "marking": MARKING, "about": case_id}
    )
    assert status == 202, answer
    refusal = {"grounds": ["46(21)(b)"], "reasons": "essential interests"}
    for named in ({}, {"consultation_id": answer["id"]}):
        status, problem = await move(pair.au, case_id, "refuse", refusal=refusal, **named)
        assert status == 409 and problem["code"] in ("consultation-required", "consultation-not-on-record"), problem
    assert await case_state(pair.au, case_id) == ("under_review", None)
    await pair.ar.start()
    await wait_for(pair.au, answer["id"], "delivered", timeout=60)
    status, body = await move(pair.au, case_id, "refuse", refusal=refusal)
    assert status == 200 and body["state"] == "refused", body


async def test_a_request_from_a_draft_shared_lower_than_its_thread_defaults_to_the_thread(pair: Pair) -> None:
    """The default marking of a conversion is the higher of the thread's and the draft's: it took the draft's, so a
    draft shared in a (recorded) downgraded reply made the conversion, with no marking given, refused."""
    strict = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    thread_id = await start_thread(pair.ar, marking=strict, content={"text": "Before we ask"})
    lower = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    draft = example_request(RequestType.MLA_CRIMINAL).to_json()
    shared = await reply(
        pair.au, thread_id, marking=lower, downgrade_reason="only the draft, not the facts", draft_request=draft
    )
    status, body = await pair.au.call("POST", f"/v1/consultations/{thread_id}/convert", json={"from_draft": shared})
    assert status == 202, body
    status, summary = await pair.au.call("GET", f"/v1/messages/{body['id']}")
    assert summary["marking"] == strict, summary


async def test_a_thread_about_an_embargoed_case_does_not_inherit_the_embargo(pair: Pair) -> None:
    """The floor of a thread about a case leaves its embargo out: carried over, it closed the question to the very
    authority that set the embargo, and a marking without it was refused."""
    embargoed = {"level": "CONFIDENTIAL", "caveats": [f"embargo:{tomorrow().isoformat()}", "uncac-46-20"]}
    case_id = await delivered_request(pair.ar, embargoed, to="au.ag")
    question = {"to": "ar.mj", "about": case_id, "content": {"text": "may we start before the date?"}}
    for chosen in ({"marking": MARKING}, {}):
        status, body = await pair.au.call("POST", "/v1/consultations", json={**question, **chosen})
        assert status == 202, body
        await wait_for(pair.au, body["id"], "delivered")
        status, opened = await pair.ar.call("POST", f"/v1/messages/{body['id']}/open", json={"purpose": "review"})
        assert status == 200 and opened["marking"] == MARKING, opened


async def test_a_peers_thread_about_a_case_below_its_marking_is_refused(pair: Pair) -> None:
    """The receiver holds the floor too: a peer that skips it, or predates it, opened a CONFIDENTIAL thread about our
    STRICTLY CONFIDENTIAL case, which a supervisor cleared only for CONFIDENTIAL could then read."""
    strict = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    case_id = await delivered_request(pair.au, strict, to="ar.mj")
    hostile = hostile_towards(pair.ar, pair.au)
    thread_id = new_message_id()
    member = {"thread_id": thread_id, "informal": True, "about": case_id}
    payload = hostile.payload(
        id=thread_id, kind="consultation", marking=MARKING, content={"text": "about it", "consultation": member}
    )
    before = await stored(pair.au.gw)
    answer = await hostile.post(hostile.seal(payload))
    await assert_envelope_refused(pair.au, hostile, answer, before, http=403, code="marking-refused", secrets=[])


async def test_an_unseen_case_gives_a_thread_about_it_no_marking_of_its_own(trio: Trio) -> None:  # noqa: F811
    """The default marking of a thread about a case joined the case's marking before anyone checked the caller may
    act on it: naming a recipient accredited lower, an officer of another unit learnt the case's level. Now she gets
    what a case that does not exist gets."""
    strict = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    case_id = await delivered_request(trio.ar, strict, to="au.ag")
    eve = await as_user(trio.au, ("eve", "officer"), clearance="CONFIDENTIAL", unit="other")
    try:
        answers = []
        for about in (case_id, new_message_id()):
            status, problem = await eve.call("POST", "/v1/consultations", json={"to": "br.mjsp", "about": about})
            answers.append((status, problem["code"], problem["detail"].replace(about, "<id>")))
        assert answers[0] == answers[1] and answers[0][1] == "invalid-message", answers
    finally:
        await close_sessions(eve)


async def test_taking_a_shared_draft_or_forwarding_content_needs_content_open(pair: Pair) -> None:
    """Converting a thread from a shared draft decrypts the draft, and forwarding a message decrypts its content:
    both went with messages:write alone, so a token that may not open content had the draft opened in its name and
    its checklist answered, which decision 123 shows only to tokens that may (decision 165). Both are refused now,
    the conversion ledgered as a refused opening and the forward as a refused submission."""
    import asyncio

    from tests.gateway.conftest import scoped_token
    from tests.gateway.test_markings import with_token

    draft = {**blank_request(RequestType.EXTRADITION).to_json(), "confidentiality_requested": True}
    first = {"to": "ar.mj", "marking": MARKING, "content": {"text": "a draft"}, "draft_request": draft}
    status, started = await pair.au.call("POST", "/v1/consultations", json=first)
    assert status == 202, started
    thread_id = started["id"]
    await wait_for(pair.au, thread_id, "delivered")
    await close_sessions(await as_user(pair.ar, ("sam", "supervisor")))
    sam = with_token(
        pair.ar, await asyncio.to_thread(scoped_token, pair.ar.provisioned.config, "sam", "messages:write")
    )
    try:
        before = len(await ledger(pair.ar.gw))
        status, body = await sam.call("POST", f"/v1/consultations/{thread_id}/convert", json={"from_draft": thread_id})
        assert (status, body["code"]) == (403, "forbidden") and "checklist" not in body, body
        onward = {"to": "au.ag", "marking": MARKING, "content": {"text": "see below"}, "forwards": [thread_id]}
        status, body = await sam.call("POST", "/v1/messages", json=onward)
        assert (status, body["code"]) == (403, "forbidden"), body
        added = [(e["type"], e.get("actor"), e.get("purpose")) for e in (await ledger(pair.ar.gw))[before:]]
        assert added == [
            ("message.open_refused", "user:sam", "conversion"),
            ("message.submit_refused", "user:sam", None),
        ], added
    finally:
        await close_sessions(sam)


async def test_a_conversion_the_peer_refuses_for_good_opens_the_thread_again(pair: Pair) -> None:
    """The sending side marks a thread converted with the request's commit; when the peer refused that request for
    good, the thread stayed converted here and open there, and every later conversion was 409 for ever. The refusal
    now opens it again, ledgered (decision 166), and the next conversion goes."""
    from datetime import timedelta

    thread_id = await start_thread(pair.ar, content={"text": "Shall we?"})
    formal = example_request(RequestType.MLA_CRIMINAL).to_json()
    real = pair.au.gw.clock
    pair.au.gw.clock = lambda: real() + timedelta(days=31)  # it arrives too old: a final refusal, as any other
    try:
        status, body = await pair.ar.call("POST", f"/v1/consultations/{thread_id}/convert", json={"request": formal})
        assert status == 202, body
        refused = body["id"]
        await wait_for(pair.ar, refused, "refused")
    finally:
        pair.au.gw.clock = real
    for side in (pair.ar, pair.au):
        shown = await thread(side, thread_id)
        assert (shown["state"], shown["converted_request_id"]) == ("open", None), shown
    reopened = [e for e in await ledger(pair.ar.gw) if e["type"] == "consultation.reopened"]
    assert [(e["message_id"], e["related_id"], e["actor"]) for e in reopened] == [(thread_id, refused, "system")]
    status, body = await pair.ar.call("POST", f"/v1/consultations/{thread_id}/convert", json={"request": formal})
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    for side in (pair.ar, pair.au):
        shown = await thread(side, thread_id)
        assert (shown["state"], shown["converted_request_id"]) == ("converted", body["id"]), shown


async def test_a_reply_arriving_while_a_list_is_read_neither_skips_nor_repeats_a_thread(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An officer's list is read in pages of LIST_PAGE threads (500), which were ordered by the time of their last
    message: a reply arriving between two pages moved its thread into a page already read, so it was left out and
    another thread came twice. The pages now go by id, which nothing changes (decision 167)."""
    import gateway.consultations_api as consultations_api
    from store.consultations import Consultations

    threads = [await start_thread(pair.ar, content={"text": str(n)}) for n in range(4)]
    monkeypatch.setattr(consultations_api, "LIST_PAGE", 2)
    real, calls = Consultations.visible_to, []

    async def visible_to(conn: Any, user: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # between two pages of one listing, a reply comes into the thread started first
            await reply(pair.au, threads[0], content={"text": "late"})

            async def arrived() -> bool:
                return len((await thread(pair.ar, threads[0]))["messages"]) == 2

            await until(arrived)
        return await real(conn, user, **kwargs)

    monkeypatch.setattr(Consultations, "visible_to", staticmethod(visible_to))
    status, body = await pair.ar.call("GET", "/v1/consultations")
    assert status == 200, body
    listed = [t["id"] for t in body["consultations"]]
    assert len(calls) >= 2 and sorted(listed) == sorted(threads), listed


async def test_a_thread_names_the_case_it_is_about_only_to_whoever_may_know_that_case(pair: Pair) -> None:
    """A converted thread's request was hidden from an officer who may not know it (decision 94), but the case it is
    about was named to every officer on the thread: assigned to the thread and not to the case, she learnt that a
    request to that peer exists, under its id, while asking for it answered 404 (decision 167)."""
    case_id = await send_complete(pair)
    first = {"to": "ar.mj", "marking": MARKING, "about": case_id, "content": {}}
    status, answer = await pair.au.call("POST", "/v1/consultations", json=first)
    assert status == 202, answer
    thread_id = answer["id"]
    await wait_for(pair.au, thread_id, "delivered")
    sam = await as_user(pair.ar, ("sam", "supervisor"))
    dave = await as_user(pair.ar, ("dave", "officer"))
    try:
        status, body = await sam.call("POST", f"/v1/cases/{thread_id}/assign", json={"username": "dave"})
        assert status == 200, body
        assert (await dave.call("GET", f"/v1/messages/{case_id}"))[0] == 404
        status, body = await dave.call("GET", f"/v1/consultations/{thread_id}")
        assert status == 200 and body["about"] is None, body
        status, listed = await dave.call("GET", "/v1/consultations")
        assert status == 200 and [t["about"] for t in listed["consultations"]] == [None], listed
        status, body = await pair.ar.call("GET", f"/v1/consultations/{thread_id}")  # one who may: named
        assert status == 200 and body["about"] == case_id, body
    finally:
        await close_sessions(sam, dave)
