"""Opening content: clearance at or above the marking's level, authorisation for every caveat, an assignment to the
case (or supervision of its unit), and no embargo still running on the receiving side (gateway/policy.py
``check_opening``). Every opening and every refused opening is a ledger event naming the user and the purpose.

au.ag receives a STRICTLY CONFIDENTIAL request under art. 46(20) with an attachment from ar.mj; its users are
bruce (supervisor, unit mla, from the ``pair`` fixture) and, created here with the real command:

* olga: officer of unit mla, cleared only up to CONFIDENTIAL;
* omar: officer of unit mla, STRICTLY CONFIDENTIAL but not authorised for the art. 46(20) caveat;
* otto: officer of unit mla, fully cleared, not assigned to the case until bruce assigns him;
* sven: supervisor of unit "other", fully cleared.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, time
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.context import utcnow
from gateway.problems import status_for
from tests.gateway.conftest import Pair, Side
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
    post_form,
    secret_content,
    stored,
    tomorrow,
)

STRICT_4620 = {"level": "STRICTLY CONFIDENTIAL", "caveats": ["uncac-46-20"]}


async def _user(pair: Pair, name: str, role: str = "officer", **options: Any) -> Side:
    return await as_user(pair.au, (name, role), **options)


async def _deliver(pair: Pair, marking: dict[str, Any], mark: str) -> str:
    draft = {"to": "au.ag", "kind": "request", "marking": marking, "content": secret_content(mark)}
    status, body = await post_form(pair.ar, "/v1/messages", draft, b"%PDF " + mark.encode() * 20, "records.pdf")
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    return str(body["id"])


async def test_opening_needs_clearance_caveat_authorisation_and_case_assignment(pair: Pair) -> None:
    mark = canary()
    message_id = await _deliver(pair, STRICT_4620, mark)
    users = {
        "olga": await _user(pair, "olga", clearance="CONFIDENTIAL"),
        "omar": await _user(pair, "omar", caveats=("uncac-46-19",)),
        "otto": await _user(pair, "otto"),
        "sven": await _user(pair, "sven", "supervisor", unit="other"),
    }
    try:
        status, summary = await pair.au.call("GET", f"/v1/messages/{message_id}")
        case_id = summary["case_id"]
        for name in ("olga", "omar"):  # assigned, so clearance or caveat is what is missing
            status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/assign", json={"username": name})
            assert status == 200, body

        # each is answered as if there were no such message (decision 94): neither that it exists nor its marking
        for name in ("olga", "omar", "otto", "sven"):
            before = (await stored(pair.au.gw)).ledger
            status, body = await users[name].call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "review"})
            problem = assert_problem(status, body, http=404, code="not-found", secrets=[mark])
            assert problem["detail"] == f"no message {message_id}", (name, problem)
            assert "content" not in problem
            added = await ledger(pair.au.gw, before)
            assert len(added) == 1, added
            entry = added[0]
            assert entry["type"] == "message.open_refused" and entry["actor"] == f"user:{name}", entry
            assert entry["reason"] == "forbidden" and entry["purpose"] == "review", entry
            assert entry["message_id"] == message_id, entry
            # the attachment is the same content behind the same check
            status, body = await users[name].call("GET", f"/v1/messages/{message_id}/attachments/0")
            problem = assert_problem(status, body, http=404, code="not-found", secrets=[mark])
            assert problem["detail"] == f"no message {message_id}", (name, problem)
            added = await ledger(pair.au.gw, before)
            assert added[-1]["type"] == "message.open_refused" and added[-1]["purpose"] == "attachment", added

        # once assigned, otto opens; bruce supervises unit mla, so he opens without an assignment
        status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/assign", json={"username": "otto"})
        assert status == 200, body
        before = (await stored(pair.au.gw)).ledger
        for _name, side, purpose in (("otto", users["otto"], "execution"), ("bruce", pair.au, "review")):
            status, opened = await side.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": purpose})
            assert status == 200 and opened["content"] == secret_content(mark), opened
            status, data = await side.call("GET", f"/v1/messages/{message_id}/attachments/0")
            assert status == 200 and mark.encode() in data
        opened_entries = [entry for entry in await ledger(pair.au.gw, before) if entry["type"] == "message.opened"]
        assert [(e["actor"], e["purpose"], e["message_id"]) for e in opened_entries] == [
            ("user:otto", "execution", message_id),
            ("user:otto", "attachment", message_id),
            ("user:bruce", "review", message_id),
            ("user:bruce", "attachment", message_id),
        ]
        await assert_ledger_clean(pair.au.gw, [mark])
    finally:
        await close_sessions(*users.values())


async def test_an_unassigned_incoming_case_is_open_to_every_cleared_supervisor_until_it_has_a_unit(pair: Pair) -> None:
    """Triage: a received case has no unit until a supervisor assigns it, so any supervisor cleared for it may open
    it (docs/security.md 1.4 keeps this open by design), each opening ledgered under her name; an officer may not.
    Once assigned, the case is its unit's: a supervisor of another unit is refused."""
    mark = canary()
    message_id = await _deliver(pair, STRICT_4620, mark)
    users = {
        "sven": await _user(pair, "sven", "supervisor", unit="other"),
        "otto": await _user(pair, "otto"),
    }
    try:
        before = (await stored(pair.au.gw)).ledger
        status, opened = await users["sven"].call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "triage"})
        assert status == 200 and opened["content"] == secret_content(mark), opened
        entries = [(e["type"], e["actor"], e["purpose"]) for e in await ledger(pair.au.gw, before)]
        assert entries == [("message.opened", "user:sven", "triage")]
        status, body = await users["otto"].call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "triage"})
        assert_problem(status, body, http=404, code="not-found", secrets=[mark])

        status, summary = await pair.au.call("GET", f"/v1/messages/{message_id}")
        status, body = await pair.au.call("POST", f"/v1/cases/{summary['case_id']}/assign", json={"username": "otto"})
        assert status == 200, body
        status, body = await users["sven"].call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "triage"})
        problem = assert_problem(status, body, http=404, code="not-found", secrets=[mark])
        assert problem["detail"] == f"no message {message_id}", problem
        status, opened = await users["otto"].call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "work"})
        assert status == 200, opened
    finally:
        await close_sessions(*users.values())


@pytest.mark.parametrize("role", ["auditor", "admin"])
async def test_auditors_and_admins_never_open_content(pair: Pair, role: str) -> None:
    mark = canary()
    message_id = await _deliver(pair, {"level": "CONFIDENTIAL", "caveats": []}, mark)
    side = await _user(pair, f"x-{role}", role)
    try:
        for method, path, kwargs in (
            ("POST", f"/v1/messages/{message_id}/open", {"json": {"purpose": "audit"}}),
            ("GET", f"/v1/messages/{message_id}/attachments/0", {}),
        ):
            status, body = await side.call(method, path, **kwargs)
            assert_problem(status, body, http=403, code="forbidden", secrets=[mark])
        # what they may read is metadata: the summary and the timeline carry no content
        for path in (f"/v1/messages/{message_id}", f"/v1/messages/{message_id}/timeline", "/v1/messages?box=inbox"):
            status, body = await side.call("GET", path)
            assert status == 200 and mark not in str(body), body
    finally:
        await close_sessions(side)


async def test_an_auditors_attempt_to_open_content_is_ledgered(pair: Pair) -> None:
    message_id = await _deliver(pair, {"level": "CONFIDENTIAL", "caveats": []}, canary())
    side = await _user(pair, "audrey", "auditor")
    try:
        before = (await stored(pair.au.gw)).ledger
        status, body = await side.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "audit"})
        assert_problem(status, body, http=403, code="forbidden")
        added = await ledger(pair.au.gw, before)
        assert [(e["type"], e["actor"], e.get("reason")) for e in added] == [
            ("message.open_refused", "user:audrey", "forbidden")
        ], added
    finally:
        await close_sessions(side)


@pytest.mark.parametrize("caveat", ["embargo", "embargo:soon", "embargo:2027-02-30"])
async def test_an_embargo_without_a_real_date_is_refused_before_anything_is_stored(pair: Pair, caveat: str) -> None:
    """Content received under such an embargo could never be opened, yet its sender would hold a signed receipt:
    both gateways refuse the marking (the sender's own check, and section 7 check 8 for a sender that skips it)."""
    mark = canary()
    marking = {"level": "CONFIDENTIAL", "caveats": [caveat]}
    before_ar, before_au = await stored(pair.ar.gw), await stored(pair.au.gw)
    status, body = await pair.ar.call(
        "POST", "/v1/messages", json={"to": "au.ag", "marking": marking, "content": secret_content(mark)}
    )
    problem = assert_problem(status, body, http=403, code="marking-refused", secrets=[mark])
    assert "an embargo caveat must carry a date: embargo:YYYY-MM-DD" in problem["detail"], problem
    after_ar = await stored(pair.ar.gw)
    assert (after_ar.messages, after_ar.outbox) == (before_ar.messages, 0)

    hostile = hostile_towards(pair.ar, pair.au)
    payload = hostile.payload(marking=marking, content=secret_content(mark))
    answer = await hostile.post(hostile.seal(payload))
    await assert_envelope_refused(pair.au, hostile, answer, before_au, http=403, code="marking-refused", secrets=[mark])


async def test_embargo_keeps_content_closed_to_the_receivers_users_until_the_date(pair: Pair) -> None:
    mark = canary()
    until = tomorrow()
    message_id = await _deliver(pair, {"level": "CONFIDENTIAL", "caveats": [f"embargo:{until}"]}, mark)
    before = (await stored(pair.au.gw)).ledger
    status, body = await pair.au.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "review"})
    problem = assert_problem(status, body, code="embargoed", secrets=[mark])
    assert f"under embargo until {until.isoformat()}" in problem["detail"], problem
    status, body = await pair.au.call("GET", f"/v1/messages/{message_id}/attachments/0")
    assert_problem(status, body, code="embargoed", secrets=[mark])
    added = await ledger(pair.au.gw, before)
    assert [(e["type"], e["actor"], e["reason"], e["purpose"]) for e in added] == [
        ("message.open_refused", "user:bruce", "embargoed", "review"),
        ("message.open_refused", "user:bruce", "embargoed", "attachment"),
    ], added

    # the originator keeps reading its own archive copy: the embargo binds the receiver
    status, opened = await pair.ar.call("POST", f"/v1/messages/{message_id}/open", json={})
    assert status == 200 and opened["content"] == secret_content(mark)

    # from the date on, the receiver's users open it (and the opening is ledgered); the first second of the date,
    # with a token still valid then (the fixture's one-day token is not, if it was issued before midnight UTC and
    # ``until`` computed after it)
    later = datetime.combine(until, time(0, 0, 1), tzinfo=UTC)
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["user", "token", "bruce", "--days", "2", "--config", str(pair.au.provisioned.config)]
    )
    assert result.exit_code == 0, result.output
    assert pair.au.session is not None
    await pair.au.session.close()
    pair.au.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {result.stdout.split()[-1]}"})
    pair.au.gw.clock = lambda: later
    try:
        status, opened = await pair.au.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "review"})
        assert status == 200 and opened["content"] == secret_content(mark), opened
    finally:
        pair.au.gw.clock = utcnow
    last = (await ledger(pair.au.gw, before))[-1]
    assert (last["type"], last["actor"], last["purpose"]) == ("message.opened", "user:bruce", "review"), last
    await assert_ledger_clean(pair.au.gw, [mark])


def test_policy_refusals_are_http_403() -> None:
    """Consent and embargo refusals refuse a well-formed request: 403, like the other policy refusals."""
    assert status_for("consent-required")[0] == 403
    assert status_for("embargoed")[0] == 403


async def test_a_message_a_user_may_not_act_on_is_answered_as_one_that_does_not_exist(pair: Pair) -> None:
    """Decision 94: olga (cleared to CONFIDENTIAL), holding the id of a STRICTLY CONFIDENTIAL request, gets on every
    message route the very answer she gets for an id that names nothing: not that it exists, not its marking, peer
    or direction. What she tried to act on is still ledgered as refused."""
    mark = canary()
    message_id = await _deliver(pair, STRICT_4620, mark)
    nothing = "0f8fad5b-d9cb-469f-a165-70867728950e"
    olga = await _user(pair, "olga", clearance="CONFIDENTIAL")
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "", None),
        ("GET", "/timeline", None),
        ("POST", "/open", {"purpose": "review"}),
        ("GET", "/attachments/0", None),
        ("POST", "/acknowledge", {"confidentiality": "can-comply"}),
        ("POST", "/respond", {"marking": STRICT_4620, "content": {"text": mark}}),
        ("POST", "/consent", {"recipient": "br.mjsp"}),
    ]
    try:
        before = (await stored(pair.au.gw)).ledger
        for method, tail, body in routes:
            answers = []
            for target in (message_id, nothing):
                status, problem = await olga.call(method, f"/v1/messages/{target}{tail}", json=body)
                assert_problem(status, problem, http=404, code="not-found", secrets=[mark])
                answers.append(json.dumps(problem).replace(target, "<id>"))
            assert answers[0] == answers[1], (method, tail, answers)
        added = [(e["type"], e["actor"], e["reason"], e.get("kind")) for e in await ledger(pair.au.gw, before)]
        assert added == [
            ("message.open_refused", "user:olga", "forbidden", None),
            ("message.open_refused", "user:olga", "forbidden", None),
            ("message.submit_refused", "user:olga", "forbidden", "acknowledgement"),
            ("message.submit_refused", "user:olga", "forbidden", "response"),
            ("message.submit_refused", "user:olga", "forbidden", "consent"),
        ], added
        await assert_ledger_clean(pair.au.gw, [mark])
    finally:
        await close_sessions(olga)


async def test_a_case_that_a_user_without_a_unit_opened_or_assigned_is_not_open_to_every_supervisor(
    pair: Pair,
) -> None:
    """Known gap 2, closed by decision 115: a case opened or assigned by a user without a unit belongs to the users
    without a unit (the empty unit), not to nobody. Before, it kept no unit, which reads as an incoming case
    awaiting triage: every supervisor of every unit could open it, for good."""
    mark = canary()
    message_id = await _deliver(pair, STRICT_4620, mark)
    users = {
        "nina": await _user(pair, "nina", unit=""),
        "sara": await _user(pair, "sara", "supervisor", unit=""),
        "sven": await _user(pair, "sven", "supervisor", unit="other"),
    }
    try:
        status, summary = await users["sven"].call("GET", f"/v1/messages/{message_id}")
        assert status == 200, summary  # triage: an incoming case nobody was assigned yet
        case_id = summary["case_id"]
        status, body = await users["sara"].call("POST", f"/v1/cases/{case_id}/assign", json={"username": "nina"})
        assert status == 200, body
        status, case = await users["sara"].call("GET", f"/v1/cases/{case_id}/work")
        assert status == 200 and case["unit"] == "", case
        for name in ("sara", "nina"):
            status, opened = await users[name].call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "w"})
            assert status == 200 and opened["content"] == secret_content(mark), opened
        for side in (users["sven"], pair.au):  # supervisors of the units "other" and "mla"
            status, body = await side.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "triage"})
            assert_problem(status, body, http=404, code="not-found", secrets=[mark])

        draft = {"to": "ar.mj", "kind": "request", "marking": STRICT_4620, "content": secret_content(mark)}
        status, sent = await users["nina"].call("POST", "/v1/messages", json=draft)
        assert status == 202, sent
        status, body = await users["sara"].call("GET", f"/v1/messages/{sent['id']}")
        assert status == 200 and body["case_id"] == sent["id"], body
        status, case = await users["sara"].call("GET", f"/v1/cases/{sent['id']}/work")
        assert status == 200 and case["unit"] == "", case
        for side in (users["sven"], pair.au):
            status, body = await side.call("GET", f"/v1/messages/{sent['id']}")
            assert_problem(status, body, http=404, code="not-found", secrets=[mark])
    finally:
        await close_sessions(*users.values())
