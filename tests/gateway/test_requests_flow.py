"""Requests complete the first time and tracked to the end: the checklist on sending (with a supervisor's override),
the life cycle reported to the counterpart as signed status reports, and status on demand (art. 46(24))."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.cli.request import example_request
from protocol.requests import RequestType, blank_request
from tests.gateway.conftest import Pair, Side
from tests.gateway.test_exchange import wait_for
from tests.gateway.test_markings import (
    as_user,
    assert_ledger_clean,
    assert_problem,
    canary,
    hostile_towards,
    ledger,
    status_query_from,
    stored,
)

MARKING = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}  # the example requests ask for art. 46(20)


def formal(request: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"to": "au.ag", "kind": "request", "marking": MARKING, "content": {"request": request}, **extra}


async def send_complete(pair: Pair) -> str:
    status, body = await pair.ar.call(
        "POST", "/v1/messages", json=formal(example_request(RequestType.MLA_CRIMINAL).to_json())
    )
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    return str(body["id"])


async def case_state(side: Side, case_id: str) -> tuple[str | None, str | None]:
    from store.cases import Cases

    async with side.gw.reader.connect() as conn:
        case = await Cases.get(conn, case_id)
    return case.state, case.peer_state


async def until(condition: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_an_incomplete_request_is_refused_with_the_checklist_and_ledgered(pair: Pair) -> None:
    before = len(await ledger(pair.ar.gw))
    status, body = await pair.ar.call(
        "POST", "/v1/messages", json=formal(blank_request(RequestType.MLA_CRIMINAL).to_json())
    )
    assert status == 422 and body["code"] == "incomplete-request", body
    missing = [item["element"] for item in body["checklist"]["items"] if item["status"] == "missing"]
    assert missing, body
    entries = (await ledger(pair.ar.gw))[before:]
    assert [(e["type"], e.get("reason")) for e in entries] == [("message.submit_refused", "incomplete-request")]
    _, outbox = await pair.ar.call("GET", "/v1/messages?box=outbox")
    assert outbox["messages"] == []
    # an officer's override reason changes nothing: only a supervisor overrides
    status, body = await pair.ar.call(
        "POST", "/v1/messages", json=formal(blank_request(RequestType.MLA_CRIMINAL).to_json(), override_reason="urgent")
    )
    assert status == 422 and body["code"] == "incomplete-request", body


async def test_a_supervisor_overrides_the_checklist_with_a_reason(pair: Pair) -> None:
    sam = await as_user(pair.ar, ("sam", "supervisor"))
    try:
        request = blank_request(RequestType.MLA_CRIMINAL).to_json()
        reason = "the deadline is tomorrow; details follow"
        status, body = await sam.call("POST", "/v1/messages", json=formal(request, override_reason=reason))
        assert status == 202, body
        message_id = body["id"]
        await wait_for(sam, message_id, "delivered")  # alice, an officer not on sam's case, does not see it
        overrides = [e for e in await ledger(pair.ar.gw) if e["type"] == "request.check_overridden"]
        assert [(e["actor"], e["message_id"]) for e in overrides] == [("user:sam", message_id)]
        assert reason not in str(await ledger(pair.ar.gw))
        status, opened = await pair.au.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "review"})
        assert status == 200, opened
        override = opened["content"]["check_override"]
        assert override["by"] == "sam" and override["reason"] == reason and override["blocking"]
    finally:
        assert sam.session is not None
        await sam.session.close()


async def test_a_request_goes_out_only_under_the_caveats_its_content_asks_for(pair: Pair) -> None:
    """A request asking for confidentiality (art. 46(20)) or stating a use limitation (46(19)) goes out only under
    the caveats that make both gateways act on it (protocol/requests.py ``required_caveats``): otherwise the
    requested side would never be asked the art. 46(20) answer, nor its content kept from third authorities. A
    supervisor's override of the checklist does not lift it; a caveat with a parameter counts by its name."""
    mark = canary()
    request = example_request(RequestType.MLA_CRIMINAL).to_json()  # complete, and asks for confidentiality
    limited = {**request, "use_limitation": f"Only for the proceedings FPO3-2026-0042 {mark}"}
    incomplete = {**blank_request(RequestType.MLA_CRIMINAL).to_json(), "confidentiality_requested": True}
    sam = await as_user(pair.ar, ("sam", "supervisor"))
    try:
        before_ar, before_au = await stored(pair.ar.gw), await stored(pair.au.gw)
        refused = [
            (request, [], "uncac-46-20"),
            (limited, ["uncac-46-20"], "uncac-46-19"),
            (incomplete, [], "uncac-46-20"),  # the override would lift the checklist: not this
        ]
        for content, caveats, missing in refused:
            marking = {"level": "CONFIDENTIAL", "caveats": caveats}
            draft = {**formal(content, override_reason="the deadline is tomorrow"), "marking": marking}
            status, body = await sam.call("POST", "/v1/messages", json=draft)
            problem = assert_problem(status, body, http=403, code="marking-refused", secrets=[mark])
            assert problem["detail"].endswith(f": mark it with the caveat {missing}"), problem
        added = await ledger(pair.ar.gw, before_ar.ledger)
        assert [(e["type"], e["reason"]) for e in added] == [("message.submit_refused", "marking-refused")] * 3
        for entry, (_, caveats, _) in zip(added, refused, strict=True):
            assert (entry["actor"], entry["to"], entry["kind"]) == ("user:sam", "au.ag", "request"), entry
            assert entry["marking"] == {"level": "CONFIDENTIAL", "caveats": caveats}, entry
        await assert_ledger_clean(pair.ar.gw, [mark])
        after_ar = await stored(pair.ar.gw)
        assert (after_ar.messages, after_ar.outbox, after_ar.files) == (before_ar.messages, 0, before_ar.files)
        assert await stored(pair.au.gw) == before_au

        # marked as it asks, an incomplete request meets the checklist, which shows the caveats in place
        caveated = {**formal(incomplete), "marking": {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20:x"]}}
        status, body = await sam.call("POST", "/v1/messages", json=caveated)
        assert status == 422 and body["code"] == "incomplete-request", body
        (item,) = [item for item in body["checklist"]["items"] if item["element"] == "marking"]
        assert (item["status"], item["blocking"], item["what_to_add"]) == ("present", True, ""), item

        marked = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-19:fpo3-2026-0042", "uncac-46-20"]}
        status, body = await sam.call("POST", "/v1/messages", json={**formal(limited), "marking": marked})
        assert status == 202, body
        await wait_for(sam, body["id"], "delivered")

        # the receiving gateway does not hold a sender to it: skipping it weakens only the sender's own request
        hostile = hostile_towards(pair.ar, pair.au)
        unmarked = hostile.payload(marking={"level": "CONFIDENTIAL", "caveats": []}, content={"request": request})
        assert (await hostile.post(hostile.seal(unmarked))).status == 200
    finally:
        assert sam.session is not None
        await sam.session.close()


async def move(side: Side, case_id: str, event: str, **extra: Any) -> tuple[int, Any]:
    return await side.call("POST", f"/v1/cases/{case_id}/events", json={"event": event, **extra})


async def test_a_full_life_cycle_is_reported_and_ledgered_on_both_sides(pair: Pair) -> None:
    case_id = await send_complete(pair)
    assert await case_state(pair.ar, case_id) == ("sent", None)
    assert await case_state(pair.au, case_id) == ("received", None)
    for event, state in [
        ("acknowledge", "acknowledged"),
        ("begin_review", "under_review"),
        ("begin_execution", "in_execution"),
        ("complete_execution", "executed"),
        ("close", "closed"),
    ]:
        status, body = await move(pair.au, case_id, event)
        assert status == 200 and body["state"] == state, body

        async def reported(state: str = state) -> bool:
            return await case_state(pair.ar, case_id) == (state, state)

        await until(reported)
    for side, actor in [(pair.au, "user:bruce"), (pair.ar, "peer:au.ag")]:
        changes = [e for e in await ledger(side.gw) if e["type"] == "case.state_changed"]
        assert [(e["state"], e["actor"], e["message_id"]) for e in changes] == [
            (state, actor, case_id) for state in ("acknowledged", "under_review", "in_execution", "executed", "closed")
        ]
        # the request's timeline ends with the case's closing, on both sides (there is no message.closed)
        status, timeline = await side.call("GET", f"/v1/messages/{case_id}/timeline")
        assert status == 200 and timeline["milestones"][-1]["name"] == "closed", timeline
    # the requesting side withdraws nothing once closed: the error names the state and the event
    status, body = await move(pair.ar, case_id, "withdraw")
    assert status == 409 and body["code"] == "illegal-transition", body
    assert "withdraw" in body["detail"] and "closed" in body["detail"]


async def consult_about(pair: Pair, case_id: str) -> str:
    """The requested side consults the requesting side in a thread about the case (art. 46(26))."""
    thread = {"to": "ar.mj", "marking": MARKING, "about": case_id, "content": {"text": "Can you narrow it?"}}
    status, body = await pair.au.call("POST", "/v1/consultations", json=thread)
    assert status == 202, body
    await wait_for(pair.au, body["id"], "delivered")
    return str(body["id"])


async def test_illegal_moves_and_refusals_without_a_valid_ground_are_refused(pair: Pair) -> None:
    case_id = await send_complete(pair)
    status, body = await move(pair.au, case_id, "complete_execution")
    assert status == 409 and body["code"] == "illegal-transition", body
    assert "complete_execution" in body["detail"] and "received" in body["detail"]
    status, body = await move(pair.au, case_id, "withdraw")  # the requesting side's event
    assert status == 409 and body["code"] == "transition-wrong-side", body
    for event in ("acknowledge", "begin_review"):
        assert (await move(pair.au, case_id, event))[0] == 200
    consulted = await consult_about(pair, case_id)
    status, body = await move(pair.au, case_id, "refuse", refusal={"grounds": [], "reasons": "no"})
    assert status == 422 and body["code"] == "refusal-ground-required", body
    status, body = await move(
        pair.au,
        case_id,
        "refuse",
        refusal={"grounds": ["bank-secrecy", "46(21)(b)"], "reasons": "banking law"},
        consultation_id=consulted,
    )
    assert status == 422 and body["code"] == "invalid-refusal-ground", body
    assert await case_state(pair.au, case_id) == ("under_review", None)
    refusal = {"grounds": ["46(21)(b)"], "reasons": "essential interests"}
    status, body = await move(pair.au, case_id, "refuse", refusal=refusal, consultation_id=consulted)
    assert status == 200 and body["state"] == "refused", body

    async def refused() -> bool:
        return await case_state(pair.ar, case_id) == ("refused", "refused")

    await until(refused)
    report = body["report"]
    await wait_for(pair.au, report, "delivered")
    status, opened = await pair.ar.call("POST", f"/v1/messages/{report}/open", json={"purpose": "review"})
    assert status == 200, opened
    assert opened["content"]["refusal"] == refusal and opened["content"]["status"]["event"] == "refuse"


async def status_answer(pair: Pair, case_id: str) -> dict[str, Any]:
    status, body = await pair.ar.call("POST", f"/v1/cases/{case_id}/status-query", json={})
    assert status == 202, body
    query_id = body["id"]
    found: dict[str, Any] = {}

    async def answered() -> bool:
        _, inbox = await pair.ar.call("GET", "/v1/messages?box=inbox")
        for message in inbox["messages"]:
            if message["kind"] == "status_report" and message["in_reply_to"] == query_id:
                found.update(message)
                return True
        return False

    await until(answered)
    status, opened = await pair.ar.call("POST", f"/v1/messages/{found['id']}/open", json={"purpose": "review"})
    assert status == 200, opened
    submitted = [
        e for e in await ledger(pair.au.gw) if e["type"] == "message.submitted" and e["message_id"] == found["id"]
    ]
    assert [e["actor"] for e in submitted] == ["system"]
    return dict(opened["content"]["status"])


async def test_a_status_query_is_answered_by_the_gateway_itself(pair: Pair) -> None:
    case_id = await send_complete(pair)
    assert (await move(pair.au, case_id, "acknowledge"))[0] == 200
    answer = await status_answer(pair, case_id)
    assert answer["state"] == "acknowledged" and answer["last_action_at"], answer

    await pair.au.stop()
    await pair.au.start(status_reveal="nothing")
    assert await status_answer(pair, case_id) == {}

    await pair.au.stop()
    await pair.au.start(status_reveal="date_only")
    assert set(await status_answer(pair, case_id)) == {"last_action_at"}


async def test_a_move_commits_with_its_status_report_or_not_at_all(pair: Pair, monkeypatch: Any) -> None:
    """The report that tells the counterpart is in the outbox in the move's own transaction: a report that cannot
    be made leaves the case where it was, with no ledger entry, rather than a move the counterpart never hears of."""
    import gateway.sending

    case_id = await send_complete(pair)
    before = len(await ledger(pair.au.gw))

    def broken_seal(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sealing failed")

    monkeypatch.setattr(gateway.sending, "seal_envelope", broken_seal)
    status, body = await move(pair.au, case_id, "acknowledge")
    assert status == 500 and body["code"] == "internal-error", body
    assert await case_state(pair.au, case_id) == ("received", None)
    assert [e["type"] for e in await ledger(pair.au.gw, before)] == []

    monkeypatch.undo()
    status, body = await move(pair.au, case_id, "acknowledge")
    assert status == 200, body
    entries = await ledger(pair.au.gw, before)
    assert [e["type"] for e in entries if e["type"] in ("case.state_changed", "message.submitted")] == [
        "case.state_changed",
        "message.submitted",
    ]
    report = next(e for e in entries if e["type"] == "message.submitted")
    assert report["message_id"] == body["report"] and report["kind"] == "status_report"

    async def reported() -> bool:
        return await case_state(pair.ar, case_id) == ("acknowledged", "acknowledged")

    await until(reported)


async def test_a_status_query_whose_answer_was_lost_is_answered_by_the_scan(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is made after the receive commit; a stop or a failure in between used to lose it for good. The
    scan each gateway runs (a few seconds after it starts, then every ten minutes) answers what is left, once
    (decision 113)."""
    import gateway.receiving
    from gateway.requests import answer_pending_status_queries

    assert pair.au.running is not None and pair.au.running.answers_task is not None
    assert not pair.au.running.answers_task.done()  # the scan runs beside the gateway
    case_id = await send_complete(pair)
    lost: list[str] = []
    monkeypatch.setattr(gateway.receiving, "schedule_status_answer", lambda gw, query_id, *_: lost.append(query_id))
    status, body = await pair.ar.call("POST", f"/v1/cases/{case_id}/status-query", json={})
    assert status == 202, body
    query_id = body["id"]
    await wait_for(pair.ar, query_id, "delivered")
    assert lost == [query_id]
    assert await answer_pending_status_queries(pair.au.gw) == 0  # too young: the answer after the commit may come
    if pair.au.gw.reader.dialect.name == "postgresql":
        from sqlalchemy import text

        lock = "SELECT pg_advisory_{}(hashtext('comity-status-answers'))"
        async with pair.au.gw.engine.connect() as other:  # another replica is scanning
            await other.execute(text(lock.format("lock")))
            assert await answer_pending_status_queries(pair.au.gw, min_age=0) == 0
            await other.execute(text(lock.format("unlock")))
    # two scans at once (two replicas started together, or one process) answer it once
    assert await asyncio.gather(*[answer_pending_status_queries(pair.au.gw, min_age=0) for _ in range(2)]) in (
        [1, 0],
        [0, 1],
    )
    assert await answer_pending_status_queries(pair.au.gw, min_age=0) == 0  # answered: not again
    status, box = await pair.au.call("GET", "/v1/messages?box=outbox")
    reports = [m for m in box["messages"] if m["kind"] == "status_report" and m["in_reply_to"] == query_id]
    assert len(reports) == 1, reports
    await wait_for(pair.au, reports[0]["id"], "delivered")
    # a query about a case we opened is not ours to answer (a peer that skips its checks sent it)
    await status_query_from(pair.au, pair.ar, case_id, MARKING)
    # nor one that names no case at all (it opened a case of its own)
    await status_query_from(pair.ar, pair.au, case_id, MARKING, names_the_case=False)
    for side in (pair.ar, pair.au):
        assert await answer_pending_status_queries(side.gw, min_age=0) == 0


async def test_an_automatic_answer_our_checks_refuse_is_tried_once_per_process(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refused answer ledgers a message.submit_refused: a query whose answer our own checks refuse (the
    peer's accreditation narrowed, say) is not tried again at every scan (decision 113)."""
    import gateway.receiving
    import gateway.sending
    from gateway.requests import answer_pending_status_queries
    from protocol.markings import MarkingRefused

    case_id = await send_complete(pair)
    monkeypatch.setattr(gateway.receiving, "schedule_status_answer", lambda *_: None)
    status, body = await pair.ar.call("POST", f"/v1/cases/{case_id}/status-query", json={})
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    tried: list[str] = []

    async def refused(gw: Any, user: Any, draft: Any, *args: Any, **kwargs: Any) -> str:
        tried.append(draft.in_reply_to)
        raise MarkingRefused("ar.mj is accredited up to UNCLASSIFIED, not CONFIDENTIAL")

    monkeypatch.setattr(gateway.sending, "submit_message", refused)
    for _ in range(3):
        assert await answer_pending_status_queries(pair.au.gw, min_age=0) == 0
    assert tried == [body["id"]]


async def test_a_request_under_embargo_is_not_refused_or_postponed_until_its_date(pair: Pair) -> None:
    """The grounds a refusal or postponement may give depend on the request's type, which its content says: the
    requested side checked them against it and answered, e.g., that 46(21)(a) is no ground to refuse an extradition
    request, to a supervisor refused the content under embargo. Refusing or postponing now waits for the date,
    ledgered as a refused status report; other moves go on."""
    from tests.gateway.test_markings import ledger, tomorrow

    request = example_request(RequestType.EXTRADITION).to_json()
    marking = {"level": "CONFIDENTIAL", "caveats": sorted(["uncac-46-20", f"embargo:{tomorrow().isoformat()}"])}
    draft = {"to": "au.ag", "kind": "request", "marking": marking, "content": {"request": request}}
    status, body = await pair.ar.call("POST", "/v1/messages", json=draft)
    assert status == 202, body
    request_id = body["id"]
    await wait_for(pair.ar, request_id, "delivered")
    for event in ("acknowledge", "begin_review"):
        status, body = await pair.au.call("POST", f"/v1/cases/{request_id}/events", json={"event": event})
        assert status == 200, body
    before = len(await ledger(pair.au.gw))
    for move in (
        {"event": "refuse", "refusal": {"grounds": ["46(21)(a)"], "reasons": "x"}},
        {"event": "postpone", "postponement": {"interfered_proceeding": "an inquiry", "reasons": "x"}},
    ):
        status, body = await pair.au.call("POST", f"/v1/cases/{request_id}/events", json=move)
        assert (status, body["code"]) == (403, "embargoed"), body
        assert "extradition" not in str(body) and "44(" not in str(body), body
    refused = [e.get("reason") for e in (await ledger(pair.au.gw))[before:] if e["type"] == "message.submit_refused"]
    assert refused == ["embargoed", "embargoed"]
    assert (await case_state(pair.au, request_id))[0] == "under_review"
