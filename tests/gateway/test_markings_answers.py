"""Answers and onward messages keep the marking of what they answer, unless a supervisor records a downgrade with
a reason (signed content both sides see, ``marking.downgraded`` in both ledgers); a request asking for
confidentiality (UNCAC art. 46(20)) is acknowledged with whether the requested State can comply, and the requesting
officer sees that answer. Both the sending gateway and, for a sender that skips its check, the receiving gateway
enforce the downgrade rule.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.gateway.conftest import Pair
from tests.gateway.test_exchange import wait_for
from tests.gateway.test_markings import (
    as_user,
    assert_envelope_refused,
    assert_ledger_clean,
    assert_problem,
    canary,
    close_sessions,
    hostile_towards,
    ledger,
    one_entry,
    secret_content,
    send,
    status_query_from,
    stored,
)

STRICT = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}
LOWER = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}
CONF_4620 = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}


async def test_an_answer_below_the_original_marking_needs_a_supervisors_recorded_downgrade(pair: Pair) -> None:
    mark = canary()
    request_id = await send(
        pair.ar, {"to": "au.ag", "marking": STRICT, "content": secret_content(mark)}, delivered_to=pair.au
    )
    status, summary = await pair.au.call("GET", f"/v1/messages/{request_id}")
    otto = await as_user(pair.au, ("otto", "officer"))
    try:
        status, body = await pair.au.call("POST", f"/v1/cases/{summary['case_id']}/assign", json={"username": "otto"})
        assert status == 200, body
        before_au, before_ar = await stored(pair.au.gw), await stored(pair.ar.gw)
        respond = f"/v1/messages/{request_id}/respond"
        attempts: list[tuple[str, Any, dict[str, Any]]] = [
            ("otto", otto, {"marking": LOWER, "content": secret_content(mark)}),
            ("otto", otto, {"marking": LOWER, "content": secret_content(mark), "downgrade_reason": "released"}),
            ("bruce", pair.au, {"marking": LOWER, "content": secret_content(mark)}),
        ]
        for _, side, body in attempts:
            status, problem = await side.call("POST", respond, json=body)
            problem = assert_problem(status, problem, http=403, code="marking-refused", secrets=[mark])
            assert "records a downgrade with a reason" in problem["detail"], problem
        # onward: forwarding the request's content in a message marked lower is refused the same way
        onward = {"to": "ar.mj", "marking": LOWER, "content": {"text": "fwd"}, "forwards": [request_id]}
        status, problem = await pair.au.call("POST", "/v1/messages", json=onward)
        assert (
            "forwarded content is marked STRICTLY CONFIDENTIAL"
            in assert_problem(status, problem, http=403, code="marking-refused", secrets=[mark])["detail"]
        )

        added = await ledger(pair.au.gw, before_au.ledger)
        assert [(e["type"], e["actor"], e["reason"], e["kind"]) for e in added] == [
            ("message.submit_refused", "user:otto", "marking-refused", "response"),
            ("message.submit_refused", "user:otto", "marking-refused", "response"),
            ("message.submit_refused", "user:bruce", "marking-refused", "response"),
            ("message.submit_refused", "user:bruce", "marking-refused", "request"),
        ], added
        after_au = await stored(pair.au.gw)
        assert (after_au.messages, after_au.outbox) == (before_au.messages, 0)
        assert await stored(pair.ar.gw) == before_ar
        assert (await wait_for(pair.ar, request_id, "delivered"))["state"] == "delivered"  # not answered
    finally:
        await close_sessions(otto)

    # a supervisor records the downgrade with a reason: it travels signed in the content
    reason = f"released by the prosecutor {canary()}"
    status, body = await pair.au.call(
        "POST", respond, json={"marking": LOWER, "content": {"text": "answer"}, "downgrade_reason": reason}
    )
    assert status == 202, body
    response_id = body["id"]
    await wait_for(pair.ar, request_id, "answered")
    for side, actor in ((pair.au, "user:bruce"), (pair.ar, "peer:au.ag")):
        one_entry(
            await ledger(side.gw),
            "marking.downgraded",
            actor=actor,
            message_id=response_id,
            related_id=request_id,
            marking=LOWER,
            state="downgraded",
        )
        # both sides see the downgrade and its reason in the signed content; the ledger holds no free text
        status, opened = await side.call("POST", f"/v1/messages/{response_id}/open", json={"purpose": "review"})
        assert status == 200, opened
        downgrade = opened["content"]["marking_downgrade"]
        assert downgrade == {
            "from": "STRICTLY CONFIDENTIAL",
            "from_caveats": downgrade["from_caveats"],
            "reason": reason,
        }
        await assert_ledger_clean(side.gw, [mark, reason])


async def test_receiver_refuses_a_silently_downgraded_answer_from_a_sender_that_skips_its_check(pair: Pair) -> None:
    request_id = await send(pair.au, {"to": "ar.mj", "marking": STRICT, "content": {"text": "q"}}, delivered_to=pair.ar)
    hostile = hostile_towards(pair.ar, pair.au)  # ar.mj's keys: answers without ar.mj's sending-side check
    for content in (
        {"text": "silent"},
        {"text": "wrong from", "marking_downgrade": {"from": "CONFIDENTIAL", "reason": "no reason at all"}},
    ):
        mark = canary()
        before = await stored(pair.au.gw)
        payload = hostile.payload(
            kind="response", in_reply_to=request_id, marking=LOWER, content={**content, "secret": mark}
        )
        answer = await hostile.post(hostile.seal(payload))
        await assert_envelope_refused(
            pair.au, hostile, answer, before, http=403, code="marking-refused", secrets=[mark]
        )
        assert (await wait_for(pair.au, request_id, "delivered"))["state"] == "delivered"

    # a declared downgrade is accepted, and recorded on the receiving side under the peer
    downgrade = {"from": "STRICTLY CONFIDENTIAL", "reason": "released by the prosecutor"}
    payload = hostile.payload(
        kind="response", in_reply_to=request_id, marking=LOWER, content={"marking_downgrade": downgrade}
    )
    answer = await hostile.post(hostile.seal(payload))
    assert answer.status == 200, answer.raw[:300]
    await wait_for(pair.au, request_id, "answered")
    one_entry(
        await ledger(pair.au.gw),
        "marking.downgraded",
        actor="peer:ar.mj",
        message_id=payload.id,
        related_id=request_id,
    )


async def test_confidentiality_of_a_request_is_answered_and_the_requesting_officer_sees_it(pair: Pair) -> None:
    mark = canary()
    requests = {
        answer: await send(pair.ar, {"to": "au.ag", "marking": CONF_4620, "content": secret_content(mark)})
        for answer in ("cannot-comply", "can-comply")
    }
    for message_id in requests.values():
        await wait_for(pair.ar, message_id, "delivered")
    first = requests["cannot-comply"]
    before_au, before_ar = await stored(pair.au.gw), await stored(pair.ar.gw)
    for body, http, code in (
        ({}, 422, "confidentiality-answer-required"),
        ({"note": mark}, 422, "confidentiality-answer-required"),
        ({"confidentiality": "maybe"}, 400, "invalid-message"),
    ):
        status, problem = await pair.au.call("POST", f"/v1/messages/{first}/acknowledge", json=body)
        assert_problem(status, problem, http=http, code=code, secrets=[mark])
        assert "confidentiality" in problem["detail"], problem
    after_au = await stored(pair.au.gw)
    assert (after_au.messages, after_au.outbox) == (before_au.messages, 0)
    assert await stored(pair.ar.gw) == before_ar

    for answer, message_id in requests.items():
        status, body = await pair.au.call(
            "POST", f"/v1/messages/{message_id}/acknowledge", json={"confidentiality": answer}
        )
        assert status == 202, body
        acknowledged = await wait_for(pair.ar, message_id, "acknowledged")
        assert acknowledged["confidentiality_answer"] == answer  # what the requesting officer sees
        one_entry(
            await ledger(pair.ar.gw),
            "message.acknowledged",
            message_id=message_id,
            actor="peer:au.ag",
            state=answer,
            related_id=body["id"],
        )
        one_entry(await ledger(pair.au.gw), "message.acknowledged", message_id=message_id, actor="user:bruce")
    # the sending side's own record of its request shows the answer too, and no ledger carries content
    status, listed = await pair.ar.call("GET", "/v1/messages?box=outbox")
    answers = {m["id"]: m["confidentiality_answer"] for m in listed["messages"]}
    assert answers == {v: k for k, v in requests.items()}
    for side in (pair.ar, pair.au):
        await assert_ledger_clean(side.gw, [mark])


@pytest.mark.parametrize("caveat", ["uncac-46-20", "uncac-46-20:fact-only"])
async def test_an_acknowledgement_without_the_confidentiality_answer_is_ledgered(pair: Pair, caveat: str) -> None:
    marking = {"level": "CONFIDENTIAL", "caveats": [caveat]}  # a parameter does not lift art. 46(20)
    request_id = await send(
        pair.ar, {"to": "au.ag", "marking": marking, "content": {"text": "q"}}, delivered_to=pair.au
    )
    before = (await stored(pair.au.gw)).ledger
    status, problem = await pair.au.call("POST", f"/v1/messages/{request_id}/acknowledge", json={})
    assert status == 422 and problem["code"] == "confidentiality-answer-required", problem
    added = await ledger(pair.au.gw, before)
    assert [(e["type"], e["actor"]) for e in added] == [("message.submit_refused", "user:bruce")], added


@pytest.mark.parametrize("caveat", ["uncac-46-20", "uncac-46-20:fact-only"])
async def test_receiver_refuses_an_acknowledgement_without_the_confidentiality_answer(pair: Pair, caveat: str) -> None:
    """Section 7, check 19: a requested State that skips its own gateway's check still cannot acknowledge a request
    asking for confidentiality without saying whether it can comply."""
    marking = {"level": "CONFIDENTIAL", "caveats": [caveat]}
    request_id = await send(
        pair.ar, {"to": "au.ag", "marking": marking, "content": {"text": "q"}}, delivered_to=pair.au
    )
    hostile = hostile_towards(pair.au, pair.ar)  # au.ag's keys, without its sending-side check
    mark = canary()
    before = await stored(pair.ar.gw)
    silent = hostile.payload(kind="acknowledgement", in_reply_to=request_id, marking=marking, content={"note": mark})
    answer = await hostile.post(hostile.seal(silent))
    await assert_envelope_refused(
        pair.ar, hostile, answer, before, http=422, code="confidentiality-answer-required", secrets=[mark]
    )
    assert (await wait_for(pair.ar, request_id, "delivered"))["state"] == "delivered"
    # one that is also marked lower without a recorded downgrade fails check 19 first, as section 7 orders them
    lower = {"level": "UNCLASSIFIED", "caveats": []}
    silent = hostile.payload(kind="acknowledgement", in_reply_to=request_id, marking=lower, content={"note": mark})
    before = await stored(pair.ar.gw)
    answer = await hostile.post(hostile.seal(silent))
    await assert_envelope_refused(
        pair.ar, hostile, answer, before, http=422, code="confidentiality-answer-required", secrets=[mark]
    )

    answered = hostile.payload(
        kind="acknowledgement", in_reply_to=request_id, marking=marking, content={"confidentiality": "can-comply"}
    )
    answer = await hostile.post(hostile.seal(answered))
    assert answer.status == 200, answer.raw[:300]
    assert (await wait_for(pair.ar, request_id, "acknowledged"))["confidentiality_answer"] == "can-comply"


async def test_an_answer_cannot_silently_drop_a_caveat_of_what_it_answers(pair: Pair) -> None:
    request_id = await send(
        pair.ar, {"to": "au.ag", "marking": CONF_4620, "content": {"text": "q"}}, delivered_to=pair.au
    )
    body = {"marking": {"level": "CONFIDENTIAL", "caveats": []}, "content": {"text": "answer"}}
    status, problem = await pair.au.call("POST", f"/v1/messages/{request_id}/respond", json=body)
    assert_problem(status, problem, http=403, code="marking-refused")


async def test_only_a_supervisor_of_the_cases_unit_records_a_downgrade(pair: Pair) -> None:
    request_id = await send(pair.ar, {"to": "au.ag", "marking": STRICT, "content": {"text": "q"}}, delivered_to=pair.au)
    status, summary = await pair.au.call("GET", f"/v1/messages/{request_id}")
    status, body = await pair.au.call("POST", f"/v1/cases/{summary['case_id']}/assign", json={"username": "bruce"})
    assert status == 200, body  # the case now belongs to bruce's unit, mla
    sven = await as_user(pair.au, ("sven", "supervisor"), unit="other", clearance="UNCLASSIFIED", caveats=())
    try:
        body = {"marking": LOWER, "content": {"text": "answer"}, "downgrade_reason": "not my case"}
        status, problem = await sven.call("POST", f"/v1/messages/{request_id}/respond", json=body)
        # a supervisor of another unit, not cleared for the case, may not answer it at all, let alone downgrade it;
        # she is not told it exists (decision 94)
        assert_problem(status, problem, http=404, code="not-found")
    finally:
        await close_sessions(sven)


async def test_a_timeline_leaves_out_an_answer_its_reader_may_not_see(pair: Pair) -> None:
    """otto, assigned to a CONFIDENTIAL case and cleared for CONFIDENTIAL only, reads the request's timeline; the
    answer went out under STRICTLY CONFIDENTIAL, so neither its entries nor the request's entry naming it reach
    him (decision 94), while the supervisor who wrote it sees both (decision 110)."""
    request_id = await send(
        pair.ar, {"to": "au.ag", "marking": CONF_4620, "content": {"text": "q"}}, delivered_to=pair.au
    )
    otto = await as_user(pair.au, ("otto", "officer"), clearance="CONFIDENTIAL", caveats=("uncac-46-20",), unit="mla")
    try:
        status, body = await pair.au.call("POST", f"/v1/cases/{request_id}/assign", json={"username": "otto"})
        assert status == 200, body
        answer = {"marking": STRICT, "content": {"text": "answer"}}
        status, body = await pair.au.call("POST", f"/v1/messages/{request_id}/respond", json=answer)
        assert status == 202, body
        response_id = body["id"]
        await wait_for(pair.au, response_id, "delivered")

        def naming(timeline: dict[str, Any]) -> list[str]:
            return [e["type"] for e in timeline["events"] if response_id in (e.get("message_id"), e.get("related_id"))]

        status, full = await pair.au.call("GET", f"/v1/messages/{request_id}/timeline")
        assert status == 200 and "message.submitted" in naming(full) and "message.answered" in naming(full)
        assert "answered" in [m["name"] for m in full["milestones"]]
        status, _ = await otto.call("GET", f"/v1/messages/{response_id}")
        assert status == 404  # hidden from him ...
        status, shown = await otto.call("GET", f"/v1/messages/{request_id}/timeline")
        assert status == 200, shown
        assert naming(shown) == [] and response_id not in json.dumps(shown)  # ... here too
        assert "answered" not in [m["name"] for m in shown["milestones"]]
        assert {e["type"] for e in shown["events"]} >= {"message.received", "case.assigned"}
    finally:
        await close_sessions(otto)


async def test_the_automatic_status_report_is_marked_at_least_as_its_case(pair: Pair) -> None:
    """A peer that skips its own check asks, under UNCLASSIFIED, where its STRICTLY CONFIDENTIAL request stands:
    the report the gateway sends by itself carries the request's level and caveats, not the query's (decision
    110)."""
    case_id = await send(pair.ar, {"to": "au.ag", "marking": STRICT, "content": {"text": "q"}}, delivered_to=pair.au)
    query_id = await status_query_from(pair.ar, pair.au, case_id, {"level": "UNCLASSIFIED", "caveats": ["no-onward"]})

    async def report() -> dict[str, Any] | None:
        status, box = await pair.au.call("GET", "/v1/messages?box=outbox")
        assert status == 200, box
        found = [m for m in box["messages"] if m["in_reply_to"] == query_id]
        return found[0] if found else None

    for _ in range(200):
        if (found := await report()) is not None:
            break
        await asyncio.sleep(0.05)
    assert found is not None and found["case_id"] == case_id
    # the higher level and every caveat of both
    assert found["marking"] == {"level": "STRICTLY CONFIDENTIAL", "caveats": ["no-onward", "uncac-46-20"]}
