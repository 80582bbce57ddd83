"""Case work through the API on both backends: next action, flags, critical dates and tasks, the overdue and upcoming
lists limited to the cases a user may act on, oral urgent requests confirmed in writing (art. 46(14)), reassignment;
refusals that write nothing and ledger nothing; no note in the ledger or the logs."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

import gateway.cli.case
from gateway.audit import AuditState, DatabaseSource, load_trust, verify_ledger
from tests.gateway.conftest import Pair, Side, issue_token
from tests.gateway.test_audit import _signed_up_to_head
from tests.gateway.test_logs_no_secrets import log_buffer  # noqa: F401 (a fixture)
from tests.gateway.test_markings import as_user, assert_problem, canary, close_sessions, ledger, send

MARKING = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}


def today() -> date:
    return datetime.now(UTC).date()


def day(offset: int) -> str:
    return (today() + timedelta(days=offset)).isoformat()


async def incoming_case(pair: Pair, **draft: Any) -> tuple[str, str]:
    """A request from ar.mj received by au.ag: (message id, its case id on au.ag)."""
    message = await send(
        pair.ar, {"to": "au.ag", "marking": MARKING, "content": {"text": "req"}, **draft}, delivered_to=pair.au
    )
    status, summary = await pair.au.call("GET", f"/v1/messages/{message}")
    assert status == 200, summary
    return message, str(summary["case_id"])


async def audit_accepts(side: Side) -> None:
    """The independent auditor (comity audit verify) accepts every entry, case-work ones included."""
    await _signed_up_to_head(side)
    data = side.provisioned.data_dir
    trust = load_trust(data / "directory.jws", data / "directory-key.jwk", side.gw.authority_id)
    source = DatabaseSource(side.gw.settings.database_dsn)
    await source.open()
    try:
        summary = await verify_ledger(source, trust, AuditState(None))
    finally:
        await source.close()
    assert summary.entries == len(await ledger(side.gw))


async def officer(pair: Pair, name: str, case_id: str | None = None, **options: Any) -> Side:
    side = await as_user(pair.au, (name, "officer"), **options)
    if case_id is not None:
        status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/assign", json={"username": name})
        assert status == 200, body
    return side


async def test_what_is_overdue_follows_the_authoritys_own_calendar(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A date due today on the date line's east side (UTC-12) is overdue already on its west side (UTC+14), the two
    calendars 26 hours apart: "today" is the authority's own date (the time_zone setting, decision 119), for the
    lists, a new item's state, and its notification."""
    from zoneinfo import ZoneInfo

    west, east = ZoneInfo("Etc/GMT+12"), ZoneInfo("Etc/GMT-14")  # POSIX signs: GMT+12 is UTC-12
    local = datetime.now(UTC).astimezone(west)
    if local.hour == 23 and local.minute >= 58:  # the west's day must not change under the test
        await asyncio.sleep((60 - local.minute) * 60 - local.second + 1)
    due = datetime.now(UTC).astimezone(west).date()
    assert datetime.now(UTC).astimezone(east).date() > due
    _, case_id = await incoming_case(pair)
    olga = await officer(pair, "olga", case_id)
    gw = pair.au.gw
    try:
        seen = {}
        for zone in ("Etc/GMT+12", "Etc/GMT-14"):
            monkeypatch.setattr(gw, "settings", gw.settings.model_copy(update={"time_zone": zone}))
            status, added = await olga.call(
                "POST", f"/v1/cases/{case_id}/dates", json={"kind": "hearing", "due": due.isoformat()}
            )
            assert status == 201, added
            overdue = (await olga.call("GET", "/v1/work/overdue"))[1]["items"]
            upcoming = (await olga.call("GET", "/v1/work/upcoming?days=1"))[1]["items"]
            seen[zone] = (added["state"], len(overdue), len(upcoming))
            await olga.call("POST", f"/v1/cases/{case_id}/dates/{added['id']}/done", json={})
        assert seen == {"Etc/GMT+12": ("open", 0, 1), "Etc/GMT-14": ("overdue", 1, 0)}, seen
    finally:
        await close_sessions(olga)


async def test_the_due_lists_come_a_page_at_a_time_of_what_the_caller_may_see(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """limit and after page the overdue and upcoming lists; a page holds only items of cases the caller may act on,
    however many of other cases' come between them (the store is read two items at a time here)."""
    monkeypatch.setattr("gateway.casework.PAGE", 2)
    _, mine = await incoming_case(pair)
    _, other = await incoming_case(pair)
    olga = await officer(pair, "olga", mine)
    try:
        expected = []
        for offset in range(-6, 0):  # an item of each case every day
            for case_id in (mine, other):
                status, body = await pair.au.call(
                    "POST", f"/v1/cases/{case_id}/dates", json={"kind": "deadline", "due": day(offset)}
                )
                assert status == 201, body
                if case_id == mine:
                    expected.append(body["id"])
        for path in ("/v1/work/overdue", "/v1/work/upcoming?days=0"):
            seen, after, pages = [], None, 0
            while True:
                query = f"{'&' if '?' in path else '?'}limit=4" + (f"&after={after}" if after else "")
                status, body = await olga.call("GET", path + query)
                assert status == 200 and len(body["items"]) <= 4, body
                seen += [item["id"] for item in body["items"]]
                pages += 1
                after = body["next"]
                if after is None:
                    break
            assert (seen, pages) == ((expected, 2) if "overdue" in path else ([], 1))
        bad_values = ("limit=0", "limit=1001", "after=2026-01-01", "after=yesterday:3", "after=2026-01-01:\u0663")
        for bad in (*bad_values, f"after=2026-01-01:{2**31}"):  # past the id column: not a query's error (a 500)
            status, body = await olga.call("GET", f"/v1/work/overdue?{bad}")
            assert status == 400 and body["code"] in ("invalid-message", "invalid-work-date"), (bad, body)
    finally:
        await close_sessions(olga)


async def test_an_officer_works_a_case_and_sees_only_its_own_lists(
    pair: Pair,
    log_buffer: io.StringIO,  # noqa: F811 (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the lists read open items a page at a time; one item a page shows the pages join up (and access is decided
    # per page, so another case's items coming first never hide the caller's)
    monkeypatch.setattr("gateway.casework.PAGE", 1)
    _, case_id = await incoming_case(pair)
    olga = await officer(pair, "olga", case_id)
    otto = await officer(pair, "otto")  # not assigned
    mark = canary()
    try:
        if True:
            status, body = await olga.call("PUT", f"/v1/cases/{case_id}/next-action", json={"text": f"call {mark}"})
            assert status == 200 and body["next_action"] == f"call {mark}", body
            status, body = await olga.call("POST", f"/v1/cases/{case_id}/flags", json={"flag": "urgent"})
            assert status == 200 and body["changed"], body
            status, body = await olga.call(
                "POST", f"/v1/cases/{case_id}/flags", json={"flag": "ministerial-decision-required"}
            )
            assert status == 200, body
            status, body = await olga.call("DELETE", f"/v1/cases/{case_id}/flags/urgent")
            assert status == 200 and body["changed"], body
            status, body = await olga.call("DELETE", f"/v1/cases/{case_id}/flags/urgent")
            assert status == 200 and not body["changed"], body
            added = {}
            for kind, extra in [
                ("deadline", {"due": day(-2)}),
                ("hearing", {"due": day(3)}),
                ("statute-of-limitations", {"due": day(400)}),
                ("safe-conduct-ends", {"informed_on": day(-1)}),
            ]:
                status, body = await olga.call(
                    "POST", f"/v1/cases/{case_id}/dates", json={"kind": kind, "note": f"{kind} {mark}", **extra}
                )
                assert status == 201, body
                added[kind] = body
            assert added["safe-conduct-ends"]["due"] == day(14)  # art. 46(27): 15 days after being informed
            assert added["deadline"]["state"] == "overdue"
            status, work = await olga.call("GET", f"/v1/cases/{case_id}/work")
        assert status == 200, work
        assert work["assignees"] == ["olga"] and work["next_action"]["text"] == f"call {mark}"
        assert [f["flag"] for f in work["flags"]] == ["ministerial-decision-required"]
        assert [d["kind"] for d in work["dates"]] == [
            "deadline",
            "hearing",
            "safe-conduct-ends",
            "statute-of-limitations",
        ]

        status, late = await olga.call("GET", "/v1/work/overdue")
        assert status == 200 and [i["id"] for i in late["items"]] == [added["deadline"]["id"]], late
        status, soon = await olga.call("GET", "/v1/work/upcoming?days=14")
        assert [i["kind"] for i in soon["items"]] == ["hearing", "safe-conduct-ends"], soon
        status, soon = await olga.call("GET", "/v1/work/upcoming")  # seven days by default
        assert soon["days"] == 7 and [i["kind"] for i in soon["items"]] == ["hearing"], soon
        # an officer not on the case sees none of it; the supervisor of the unit sees it all
        for path in ("/v1/work/overdue", "/v1/work/upcoming?days=30"):
            status, body = await otto.call("GET", path)
            assert status == 200 and body["items"] == [], body
        status, body = await pair.au.call("GET", "/v1/work/overdue")
        assert [i["id"] for i in body["items"]] == [added["deadline"]["id"]], body

        status, body = await olga.call("POST", f"/v1/cases/{case_id}/dates/{added['deadline']['id']}/done", json={})
        assert status == 200 and body["state"] == "done" and body["done_by"] == "olga", body
        status, body = await olga.call("POST", f"/v1/cases/{case_id}/dates/{added['deadline']['id']}/done", json={})
        assert_problem(status, body, code="conflict")
        assert (await olga.call("GET", "/v1/work/overdue"))[1]["items"] == []

        entries = [
            e
            for e in await ledger(pair.au.gw)
            if e.get("message_id") == case_id and e["type"].startswith("case.") and e["type"] != "case.assigned"
        ]
        summary = [(e["type"], e.get("state"), e.get("reason"), e.get("subject")) for e in entries]
        assert summary == [
            ("case.next_action", "set", None, None),
            ("case.flag", "set", "urgent", None),
            ("case.flag", "set", "ministerial-decision-required", None),
            ("case.flag", "cleared", "urgent", None),
            ("case.date", "added", "deadline", f"due:{day(-2)}"),
            ("case.date", "added", "hearing", f"due:{day(3)}"),
            ("case.date", "added", "statute-of-limitations", f"due:{day(400)}"),
            ("case.date", "added", "safe-conduct-ends", f"due:{day(14)}"),
            ("case.date", "done", "deadline", f"due:{day(-2)}"),
        ]
        assert all(e["actor"] == "user:olga" for e in entries)
        assert mark not in str(await ledger(pair.au.gw))
        assert mark not in log_buffer.getvalue()
        assert case_id in log_buffer.getvalue()  # the buffer did catch the gateway's logs
        await audit_accepts(pair.au)
    finally:
        await close_sessions(olga, otto)


async def test_refusals_write_nothing_and_ledger_only_attempts_on_a_case(pair: Pair) -> None:
    _, case_id = await incoming_case(pair)
    olga = await officer(pair, "olga", case_id)
    otto = await officer(pair, "otto")  # not assigned
    # assigned, but not cleared for the case's caveat
    uma = await officer(pair, "uma", case_id, caveats=("embargo",))
    auditor = await as_user(pair.au, ("audrey", "auditor"), clearance="UNCLASSIFIED", caveats=())
    mark = canary()
    try:
        before = len(await ledger(pair.au.gw))
        dates = f"/v1/cases/{case_id}/dates"
        bad = [
            (olga, "POST", dates, {"kind": "birthday", "due": day(1), "note": mark}, "unknown-work-kind"),
            (olga, "POST", dates, {"kind": "confirm-in-writing", "due": day(1)}, "unknown-work-kind"),
            (olga, "POST", dates, {"kind": "hearing", "due": "2026-02-30", "note": mark}, "invalid-work-date"),
            (olga, "POST", dates, {"kind": "hearing", "due": f"{day(1)}T10:00:00Z"}, "invalid-work-date"),
            (olga, "POST", dates, {"kind": "hearing"}, "invalid-work-date"),
            (olga, "POST", dates, {"kind": "hearing", "due": day(1), "colour": "red"}, "invalid-message"),
            (
                olga,
                "POST",
                dates,
                {"kind": "safe-conduct-ends", "informed_on": day(0), "agreed_days": 0},
                "invalid-work-date",
            ),
            (olga, "POST", f"/v1/cases/{case_id}/flags", {"flag": "very-urgent"}, "unknown-work-kind"),
            (olga, "PUT", f"/v1/cases/{case_id}/next-action", {"text": "x" * 2001}, "invalid-message"),
            # an officer or supervisor who may not act on the case is not told it exists (decision 94)
            (otto, "POST", dates, {"kind": "hearing", "due": day(1), "note": mark}, "not-found"),
            (otto, "PUT", f"/v1/cases/{case_id}/next-action", {"text": mark}, "not-found"),
            (otto, "GET", f"/v1/cases/{case_id}/work", None, "not-found"),
            (uma, "POST", f"/v1/cases/{case_id}/flags", {"flag": "urgent"}, "not-found"),
            (uma, "GET", f"/v1/cases/{case_id}/work", None, "not-found"),
            (auditor, "GET", f"/v1/cases/{case_id}/work", None, "forbidden"),
            (auditor, "POST", dates, {"kind": "hearing", "due": day(1)}, "forbidden"),
            (olga, "POST", f"/v1/cases/{case_id}/unassign", {"username": "uma"}, "forbidden"),
            (
                olga,
                "POST",
                "/v1/cases/0f8fad5b-d9cb-469f-a165-70867728950e/dates",
                {"kind": "hearing", "due": day(1)},
                "not-found",
            ),
            (olga, "POST", f"{dates}/999999/done", {}, "not-found"),
            (olga, "POST", f"{dates}/99999999999999/done", {}, "not-found"),
            (olga, "GET", "/v1/work/upcoming?days=-1", None, "invalid-message"),
            (olga, "GET", "/v1/work/upcoming?days=400", None, "invalid-message"),
            (olga, "GET", "/v1/work/upcoming?days=\u00b2", None, "invalid-message"),  # a digit, not an ASCII one
            (olga, "GET", "/v1/work/upcoming?days=" + "9" * 5000, None, "invalid-message"),
            (olga, "GET", "/v1/consultations?limit=\u00b2", None, "invalid-message"),
            (olga, "POST", dates, {"kind": "safe-conduct-ends", "informed_on": "9999-12-31"}, "invalid-work-date"),
            (olga, "POST", dates, {"kind": "hearing", "due": "0001-01-01"}, "invalid-work-date"),
            (
                olga,
                "POST",
                "/v1/work/oral-requests",
                {"peer": "zz.nobody", "direction": "received"},
                "unknown-authority",
            ),
            (olga, "POST", "/v1/work/oral-requests", {"peer": "ar.mj", "direction": "sideways"}, "invalid-message"),
            (olga, "POST", "/v1/work/oral-requests", {"peer": "au.ag", "direction": "received"}, "invalid-message"),
            (
                olga,
                "POST",
                "/v1/work/oral-requests",
                {"peer": "ar.mj", "direction": "made", "on": day(1)},
                "invalid-work-date",
            ),
            (
                olga,
                "POST",
                "/v1/work/oral-requests",
                {"peer": "ar.mj", "direction": "made", "marking": {"level": "COSMIC", "caveats": []}},
                "marking-refused",
            ),
            (  # an embargo without a real day could never be lifted (decision 83)
                olga,
                "POST",
                "/v1/work/oral-requests",
                {
                    "peer": "ar.mj",
                    "direction": "made",
                    "marking": {"level": "CONFIDENTIAL", "caveats": ["embargo:soon"]},
                },
                "marking-refused",
            ),
            (
                uma,
                "POST",
                "/v1/work/oral-requests",
                {"peer": "ar.mj", "direction": "made", "marking": MARKING},
                "forbidden",
            ),
        ]
        for side, method, path, body, code in bad:
            kwargs = {} if body is None else {"json": body}
            status, answer = await side.call(method, path, **kwargs)
            assert_problem(status, answer, code=code, secrets=[mark])
        # nothing ledgered but the attempts on the case by someone who may not act on it: reading the work needs what
        # opening content needs and is evidence like any attempt to open content (decision 123); so are attempts to
        # change it or its assignments (decision 148), refused by scope (gateway/api.py auth_middleware), clearance
        # or assignment, and answered as if there were no case; a change refused for what it asks for is not
        added = [
            (e["type"], e["actor"], e.get("reason"), e["message_id"], e.get("state"))
            for e in (await ledger(pair.au.gw))[before:]
        ]
        assert added == [
            ("case.refused", "user:otto", "forbidden", case_id, "date-added"),
            ("case.refused", "user:otto", "forbidden", case_id, "next-action"),
            ("message.open_refused", "user:otto", "forbidden", case_id, None),
            ("case.refused", "user:uma", "forbidden", case_id, "flag-set"),
            ("message.open_refused", "user:uma", "forbidden", case_id, None),
            ("message.open_refused", "user:audrey", "forbidden", case_id, None),
            ("case.refused", "user:audrey", "forbidden", case_id, "date-added"),
            ("case.refused", "user:olga", "forbidden", case_id, "unassigned"),
        ]
        assert mark not in str(await ledger(pair.au.gw))
        status, work = await olga.call("GET", f"/v1/cases/{case_id}/work")
        assert work["dates"] == [] and work["flags"] == [] and work["next_action"] is None, work
    finally:
        await close_sessions(olga, otto, uma, auditor)


async def test_a_token_without_content_open_gets_no_note_from_marking_a_date_done(pair: Pair) -> None:
    """Notes are read like content, through content:open routes only (decision 34): marking a date done needs
    messages:write, and its answer gave the note another officer wrote (decision 165)."""
    from tests.gateway.conftest import scoped_token
    from tests.gateway.test_markings import with_token

    _, case_id = await incoming_case(pair)
    olga = await officer(pair, "olga", case_id)
    writer = with_token(
        pair.au, await asyncio.to_thread(scoped_token, pair.au.provisioned.config, "olga", "messages:write")
    )
    mark = canary()
    dates = f"/v1/cases/{case_id}/dates"
    try:
        status, first = await olga.call("POST", dates, json={"kind": "hearing", "due": day(3), "note": f"w {mark}"})
        assert status == 201, first
        status, second = await olga.call("POST", dates, json={"kind": "deadline", "due": day(4), "note": f"d {mark}"})
        assert status == 201, second
        status, done = await writer.call("POST", f"{dates}/{first['id']}/done", json={})
        assert status == 200 and done["note"] is None and mark not in str(done), done
        status, done = await olga.call("POST", f"{dates}/{second['id']}/done", json={})  # content:open: shown
        assert status == 200 and done["note"] == f"d {mark}", done
    finally:
        await close_sessions(olga, writer)


async def test_an_oral_urgent_request_opens_a_task_closed_by_linking_the_written_request(pair: Pair) -> None:
    olga = await officer(pair, "olga")
    mark = canary()
    try:
        status, oral = await olga.call(
            "POST",
            "/v1/work/oral-requests",
            json={"peer": "ar.mj", "direction": "received", "marking": MARKING, "note": f"phoned {mark}"},
        )
        assert status == 201, oral
        oral_case, task = oral["case_id"], oral["task"]
        assert task["kind"] == "confirm-in-writing" and task["due"] == day(3) and task["note"] == f"phoned {mark}"
        status, work = await olga.call("GET", f"/v1/cases/{oral_case}/work")
        assert work["assignees"] == ["olga"] and work["oral_request"]["direction"] == "received", work
        assert work["marking"] == MARKING and work["unit"] == "mla"
        status, soon = await olga.call("GET", "/v1/work/upcoming?days=3")
        assert [i["id"] for i in soon["items"]] == [task["id"]], soon
        # the supervisor of the unit sees it too; another officer does not
        otto = await officer(pair, "otto")
        assert (await otto.call("GET", f"/v1/cases/{oral_case}/work"))[0] == 404  # as if there were no case
        await close_sessions(otto)

        # the written request arrives; linking it closes the task
        written, written_case = await incoming_case(pair)
        done = f"/v1/cases/{oral_case}/dates/{task['id']}/done"
        status, body = await olga.call("POST", done, json={"message_id": written})
        assert_problem(status, body, code="not-found")  # olga may not act on the written request's case yet
        status, body = await pair.au.call("POST", f"/v1/cases/{written_case}/assign", json={"username": "olga"})
        status, body = await olga.call("POST", done, json={"message_id": "0f8fad5b-d9cb-469f-a165-70867728950e"})
        assert_problem(status, body, code="not-found")
        # not a message id: refused before any lookup, and the problem does not repeat it
        status, body = await olga.call("POST", done, json={"message_id": f"x-{mark}"})
        assert_problem(status, body, code="invalid-message", secrets=[mark])
        status, body = await olga.call("POST", done, json={"message_id": written})
        assert status == 200 and body["state"] == "done" and body["written_request"] == written, body
        status, body = await olga.call("POST", done, json={"message_id": written})
        assert_problem(status, body, code="conflict")
        status, work = await olga.call("GET", f"/v1/cases/{oral_case}/work")
        assert work["oral_request"]["confirmed_by"] == written

        entries = [e for e in await ledger(pair.au.gw) if e.get("message_id") == oral_case]
        assert [(e["type"], e.get("state")) for e in entries] == [
            ("case.oral_request", "received"),
            ("case.assigned", None),
            ("case.date", "added"),
            ("message.open_refused", None),  # otto's read of the work (decision 123)
            ("case.refused", "date-done"),  # olga's link to a request whose case she may not act on (decision 148)
            ("case.date", "done"),
            ("case.oral_request", "confirmed"),
        ]
        assert entries[0]["from"] == "ar.mj" and entries[0]["subject"] == f"due:{day(3)}"
        assert entries[-1]["related_id"] == written
        assert mark not in str(await ledger(pair.au.gw))

        # a confirm-in-writing task is closed by hand too (the request came another way); other tasks link nothing
        status, oral = await olga.call("POST", "/v1/work/oral-requests", json={"peer": "ar.mj", "direction": "made"})
        assert status == 201, oral
        status, hearing = await olga.call(
            "POST", f"/v1/cases/{oral['case_id']}/dates", json={"kind": "hearing", "due": day(5)}
        )
        status, body = await olga.call(
            "POST", f"/v1/cases/{oral['case_id']}/dates/{hearing['id']}/done", json={"message_id": written}
        )
        assert_problem(status, body, code="invalid-message")
        status, body = await olga.call(
            "POST", f"/v1/cases/{oral['case_id']}/dates/{oral['task']['id']}/done", json={"message_id": written}
        )
        assert_problem(status, body, code="invalid-message")  # made to ar.mj: the written one goes out, not in
        status, body = await olga.call("POST", f"/v1/cases/{oral['case_id']}/dates/{oral['task']['id']}/done", json={})
        assert status == 200, body
        await audit_accepts(pair.au)
    finally:
        await close_sessions(olga)


async def test_reassignment_names_the_officer_taken_off(pair: Pair) -> None:
    _, case_id = await incoming_case(pair)
    await asyncio.to_thread(issue_token, pair.au.provisioned.config, "olga")
    await asyncio.to_thread(issue_token, pair.au.provisioned.config, "otto")
    assign = f"/v1/cases/{case_id}/assign"
    status, body = await pair.au.call("POST", assign, json={"username": "olga"})
    assert status == 200 and body["previous"] == [], body
    status, body = await pair.au.call("POST", assign, json={"username": "otto", "replace": True})
    assert status == 200 and body["previous"] == ["olga"], body
    status, work = await pair.au.call("GET", f"/v1/cases/{case_id}/work")
    assert work["assignees"] == ["otto"]
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/unassign", json={"username": "otto"})
    assert status == 200, body
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/unassign", json={"username": "otto"})
    assert_problem(status, body, code="not-found")
    entries = [e for e in await ledger(pair.au.gw) if e.get("message_id") == case_id and e["type"].startswith("case.")]
    assert [(e["type"], e.get("subject")) for e in entries] == [
        ("case.assigned", "user:olga"),
        ("case.unassigned", "user:olga"),
        ("case.assigned", "user:otto"),
        ("case.unassigned", "user:otto"),
    ]
    assert all(e["actor"] == "user:bruce" for e in entries)
    await audit_accepts(pair.au)


def _cli(*args: str) -> Any:
    from click.testing import CliRunner

    from gateway.cli import main

    return CliRunner().invoke(main, list(args))


async def test_the_operator_lists_due_items_from_the_database(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    _, case_id = await incoming_case(pair)
    mark = canary()
    added = {}
    for kind, due in (("deadline", day(-1)), ("hearing", day(2))):
        status, body = await pair.au.call(
            "POST", f"/v1/cases/{case_id}/dates", json={"kind": kind, "due": due, "note": mark}
        )
        assert status == 201, body
        added[kind] = body["id"]
    config = str(pair.au.provisioned.config)
    result = await asyncio.to_thread(_cli, "case", "due", "--overdue", "--config", config)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{day(-1)}\toverdue\tdeadline\t{case_id}\t{added['deadline']}"]
    result = await asyncio.to_thread(_cli, "case", "due", "--upcoming", "7", "--json", "--config", config)
    assert result.exit_code == 0, result.output
    assert [i["id"] for i in json.loads(result.output)["items"]] == [added["hearing"]]
    result = await asyncio.to_thread(_cli, "case", "due", "--upcoming", "0", "--config", config)
    assert result.output.strip() == "nothing due within 0 days"
    result = await asyncio.to_thread(_cli, "case", "work", case_id, "--config", config)
    assert result.exit_code == 0, result.output
    assert [d["kind"] for d in json.loads(result.output)["dates"]] == ["deadline", "hearing"]
    assert mark not in result.output
    # one-line errors
    result = await asyncio.to_thread(_cli, "case", "work", "no-such-case", "--config", config)
    assert result.exit_code == 1 and result.stderr.strip() == "comity: no case no-such-case", result.stderr
    result = await asyncio.to_thread(_cli, "case", "due", "--overdue", "--upcoming", "3", "--config", config)
    assert result.exit_code == 1 and result.stderr.startswith("comity: choose --overdue"), result.stderr
    # no cut-off: read page by page (pages of 2 here), every item comes out once, soonest first
    more = []
    for offset in (3, 3, 4, 5):
        status, body = await pair.au.call(
            "POST", f"/v1/cases/{case_id}/dates", json={"kind": "deadline", "due": day(offset)}
        )
        assert status == 201, body
        more.append(body["id"])
    monkeypatch.setattr(gateway.cli.case, "PAGE", 2)
    result = await asyncio.to_thread(_cli, "case", "due", "--upcoming", "7", "--json", "--config", config)
    assert [i["id"] for i in json.loads(result.output)["items"]] == [added["hearing"], *more]


async def test_a_closed_case_is_no_longer_work(pair: Pair) -> None:
    """Once a case is closed, its open dates and tasks leave the overdue and upcoming lists (API and command line)
    and the notifier's scan, and it takes no new ones; its own view still shows them (decision 105)."""
    from store.casework import CaseWork
    from tests.gateway.test_requests_flow import move, send_complete

    case_id = await send_complete(pair)
    added = []
    for kind, due in [("deadline", day(-2)), ("hearing", day(3))]:
        status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/dates", json={"kind": kind, "due": due})
        assert status == 201, body
        added.append(body["id"])

    async def listed() -> tuple[list[int], list[int], list[int], list[int]]:
        overdue = (await pair.au.call("GET", "/v1/work/overdue"))[1]["items"]
        upcoming = (await pair.au.call("GET", "/v1/work/upcoming?days=7"))[1]["items"]
        async with pair.au.gw.reader.connect() as conn:
            scan = await CaseWork.to_notify(conn, today(), pair.au.gw.settings.notify_days_ahead)
            operator = await CaseWork.open_between(conn, None, today() + timedelta(days=7))
        return (
            [i["id"] for i in overdue],
            [i["id"] for i in upcoming],
            [item.id for item, _stage in scan],
            [item.id for item in operator],
        )

    assert await listed() == ([added[0]], [added[1]], added, added)
    for event in ("acknowledge", "begin_review", "begin_execution", "complete_execution"):
        status, body = await move(pair.au, case_id, event)
        assert status == 200, body
    # an outcome is not the end of the work: the case is still listed until it is closed
    assert await listed() == ([added[0]], [added[1]], added, added)
    status, body = await move(pair.au, case_id, "close")
    assert status == 200 and body["state"] == "closed", body
    assert await listed() == ([], [], [], [])

    async def dates_ledgered() -> int:
        return sum(e["type"] == "case.date" and e.get("message_id") == case_id for e in await ledger(pair.au.gw))

    assert await dates_ledgered() == 2
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/dates", json={"kind": "hearing", "due": day(5)})
    assert_problem(status, body, code="conflict")
    assert "closed" in body["detail"]
    assert await dates_ledgered() == 2
    status, work = await pair.au.call("GET", f"/v1/cases/{case_id}/work")
    assert status == 200 and work["state"] == "closed" and [d["id"] for d in work["dates"]] == added, work
