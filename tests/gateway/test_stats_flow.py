"""Statistics in a two-gateway exchange: facets extracted on send and on receive, milestone times equal to the
ledger entries that mark them on both sides, the API (JSON, CSV, problems, who may read what), the command, and a
canary planted in the request's content that reaches neither the facets tables, the ledger nor any statistic."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from gateway.cli import main
from gateway.cli.request import example_request
from protocol.requests import Request, RequestType
from protocol.stats import ASSISTANCE_BITS, OFFENCE_BITS, REFUSAL_GROUND_BITS, codes_of, facets_of
from protocol.timefmt import parse_time
from store.tables import case_stats
from tests.gateway.conftest import Pair, Side
from tests.gateway.test_exchange import wait_for
from tests.gateway.test_markings import as_user, canary, close_sessions, ledger, ledger_text
from tests.gateway.test_requests_flow import MARKING, case_state, consult_about, move, until


def canary_request(mark: str, **changes: Any) -> dict[str, Any]:
    data = example_request(RequestType.MLA_CRIMINAL).to_json()
    data["summary_of_facts"] = f"The facts {mark}"
    data["legal_basis"] = {"kind": "treaty", "name": f"Treaty of {mark}", "article": f"{mark}"}
    data["offences"] = [{"article": "23", "national_description": f"Lavado {mark}"}, *data["offences"]]
    data["persons"][0]["name"] = f"Person {mark}"
    data["deadline"] = {"date": "2020-01-31", "reasons": f"Trial {mark}"}
    data.update(changes)
    return data


async def send_request(pair: Pair, request: dict[str, Any]) -> str:
    draft = {"to": "au.ag", "kind": "request", "marking": MARKING, "content": {"request": request}}
    status, body = await pair.ar.call("POST", "/v1/messages", json=draft)
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    return str(body["id"])


async def stats_row(side: Side, case_id: str) -> dict[str, Any]:
    async with side.gw.engine.connect() as conn:
        row = (await conn.execute(select(case_stats).where(case_stats.c.case_id == case_id))).one()
    found = dict(row._mapping)
    found["codes"] = sorted(
        [("offence", code) for code in codes_of(row.offences, OFFENCE_BITS)]
        + [("assistance", code) for code in codes_of(row.assistance, ASSISTANCE_BITS)]
        + [("refusal_ground", code) for code in codes_of(row.refusal_grounds, REFUSAL_GROUND_BITS)]
    )
    return found


async def entry_time(side: Side, type_: str, case_id: str, **match: str) -> datetime:
    entries = [
        e
        for e in await ledger(side.gw)
        if e["type"] == type_ and e.get("message_id") == case_id and all(e.get(k) == v for k, v in match.items())
    ]
    assert entries, (type_, match)
    return parse_time(entries[0]["time"])


async def stored_stats_text(side: Side) -> str:
    async with side.gw.engine.connect() as conn:
        rows = (await conn.execute(select(case_stats))).all()
    return "\n".join(repr(tuple(row)) for row in rows)


async def test_facets_and_milestones_on_both_sides_equal_the_ledger(pair: Pair) -> None:
    mark = canary()
    request = canary_request(mark, urgent=True, urgency_reasons=f"Urgent {mark}")
    case_id = await send_request(pair, request)
    expected = facets_of(Request.parse(request))
    ar, au = await stats_row(pair.ar, case_id), await stats_row(pair.au, case_id)
    for row, direction, counterpart, country in ((ar, "out", "au.ag", "AU"), (au, "in", "ar.mj", "AR")):
        assert (row["direction"], row["counterpart"], row["country"]) == (direction, counterpart, country)
        assert (row["request_type"], row["legal_basis"], row["uncac_article"]) == ("mla-criminal", "treaty", None)
        assert row["urgent"] is True and row["deadline"] == expected.deadline
        assert row["codes"] == sorted(
            [("offence", code) for code in expected.offences] + [("assistance", code) for code in expected.assistance]
        )
    assert (ar["state"], au["state"]) == ("sent", "received")
    # the times are those of the ledger entries that mark each step, on each side
    assert ar["opened_at"] == await entry_time(pair.ar, "message.submitted", case_id)
    assert ar["start_at"] == await entry_time(pair.ar, "message.sent", case_id)
    assert au["opened_at"] == au["start_at"] == await entry_time(pair.au, "message.received", case_id)
    # the suggested deadline (2020-01-31) has passed and the case is open: overdue
    status, body = await pair.au.call("GET", "/v1/stats/overdue?direction=incoming")
    assert status == 200 and body["rows"] == [{"direction": "incoming", "overdue": 1, "open_with_dates": 1}]

    assert (await move(pair.au, case_id, "acknowledge"))[0] == 200

    async def acknowledged() -> bool:
        return await case_state(pair.ar, case_id) == ("acknowledged", "acknowledged")

    await until(acknowledged)
    status, body = await pair.au.call(
        "POST", f"/v1/messages/{case_id}/respond", json={"marking": MARKING, "content": {"text": f"answer {mark}"}}
    )
    assert status == 202, body
    await wait_for(pair.au, body["id"], "delivered")
    # one move at a time: status reports travel independently and may overtake one another
    for event, state in (
        ("begin_review", "under_review"),
        ("begin_execution", "in_execution"),
        ("complete_execution", "executed"),
    ):
        assert (await move(pair.au, case_id, event))[0] == 200

        async def reported(state: str = state) -> bool:
            return await case_state(pair.ar, case_id) == (state, state)

        await until(reported)
    for side in (pair.au, pair.ar):
        row = await stats_row(side, case_id)
        assert row["acknowledged_at"] == await entry_time(side, "case.state_changed", case_id, state="acknowledged")
        assert row["first_answer_at"] == await entry_time(side, "message.answered", case_id)
        assert row["executed_at"] == row["outcome_at"]
        assert row["executed_at"] == await entry_time(side, "case.state_changed", case_id, state="executed")
        assert (row["state"], row["outcome"], row["closed_at"]) == ("executed", "executed", None)

    # the API: every statistic as the supervisor; one as CSV; bad filters are problems
    status, every = await pair.au.call("GET", "/v1/stats")
    assert status == 200, every
    tables = every["statistics"]
    assert tables["by-type"]["rows"] == [{"direction": "incoming", "type": "mla-criminal", "count": 1}]
    assert tables["by-legal-basis"]["rows"] == [
        {"direction": "incoming", "legal_basis": "treaty", "count": 1, "share": 1.0}
    ]
    durations = {row["milestone"]: row for row in tables["durations"]["rows"]}
    assert {m: row["count"] for m, row in durations.items()} == {"acknowledge": 1, "first-answer": 1, "execution": 1}
    assert tables["overdue"]["rows"] == [
        {"direction": "incoming", "overdue": 0, "open_with_dates": 0},
        {"direction": "outgoing", "overdue": 0, "open_with_dates": 0},
    ]
    status, text = await pair.au.call("GET", "/v1/stats/by-offence?format=csv&direction=incoming")
    assert status == 200
    assert text.decode() == "direction,offence,count\r\nincoming,17,1\r\nincoming,23,1\r\n"
    for path, code in [
        ("/v1/stats/by-nothing", "invalid-request"),
        ("/v1/stats/by-year?from=last-year", "invalid-request"),
        ("/v1/stats/by-year?colour=red", "invalid-request"),
        ("/v1/stats/by-year?format=xml", "invalid-request"),
        ("/v1/stats/by-year?to=9999", "invalid-request"),  # the day after it is past the calendar
        ("/v1/stats/by-year?to=9999-12-31", "invalid-request"),
    ]:
        status, problem = await pair.au.call("GET", path)
        assert (status, problem["code"]) == (400, code), (path, problem)
        assert problem["type"] == f"urn:comity:problem:{code}"

    # the canary planted in the request's content is in no facet, no ledger entry and no statistic
    assert mark not in json.dumps(every)
    for side in (pair.ar, pair.au):
        assert mark not in await stored_stats_text(side)
        assert mark not in await ledger_text(side.gw)


async def test_a_refusal_counts_its_grounds_on_both_sides_and_officer_figures_are_for_supervisors(pair: Pair) -> None:
    mark = canary()
    request = canary_request(mark, legal_basis={"kind": "uncac", "article": 46, "paragraph": "9(b)"})
    case_id = await send_request(pair, request)
    for event, state in (("acknowledge", "acknowledged"), ("begin_review", "under_review")):
        assert (await move(pair.au, case_id, event))[0] == 200

        async def reported(state: str = state) -> bool:
            return await case_state(pair.ar, case_id) == (state, state)

        await until(reported)
    refusal = {"grounds": ["46(21)(b)", "fiscal-matters"], "reasons": f"Reasons {mark}"}
    consulted = await consult_about(pair, case_id)  # art. 46(26): a thread about the case before refusing
    status, body = await move(pair.au, case_id, "refuse", refusal=refusal, consultation_id=consulted)
    assert status == 200, body

    async def refused() -> bool:
        return await case_state(pair.ar, case_id) == ("refused", "refused")

    await until(refused)
    for side in (pair.au, pair.ar):
        row = await stats_row(side, case_id)
        assert (row["legal_basis"], row["uncac_article"], row["outcome"]) == ("uncac", 46, "refused")
        assert ("refusal_ground", "46(21)(b)") in row["codes"] and ("refusal_ground", "fiscal-matters") in row["codes"]
        assert row["outcome_at"] == await entry_time(side, "case.state_changed", case_id, state="refused")
        assert mark not in await stored_stats_text(side)
    status, body = await pair.ar.call("GET", "/v1/stats/overdue")
    assert status == 403 and body["code"] == "forbidden"  # an officer does not read statistics

    # per-officer figures name staff: supervisors only; an auditor gets the rest
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/assign", json={"username": "bruce"})
    assert status == 200, body
    status, body = await pair.au.call("GET", "/v1/stats/by-officer")
    assert status == 200 and body["rows"] == [{"direction": "incoming", "officer": "bruce", "count": 1}], body
    auditor = await as_user(pair.au, ("audrey", "auditor"), clearance="UNCLASSIFIED", caveats=())
    try:
        for path in ("/v1/stats/by-officer", "/v1/stats/by-year?officer=bruce", "/v1/stats?officer=bruce"):
            status, body = await auditor.call("GET", path)
            assert status == 403 and body["code"] == "forbidden", (path, body)
        # one case: the auditor, who cannot open content, is shown nothing of it, not even which codes occur
        # (decision 114) ...
        status, body = await auditor.call("GET", "/v1/stats/by-refusal-ground")
        assert status == 200 and body["min_cell"] == 5 and body["rows"] == []
        status, text = await auditor.call("GET", "/v1/stats/by-refusal-ground?format=csv")
        assert text.decode() == "direction,refusal_ground,count\r\n"
        status, body = await auditor.call("GET", "/v1/stats/overdue?direction=incoming")
        assert status == 200 and body["rows"] == []
        status, body = await auditor.call("GET", "/v1/stats")
        assert status == 200 and "by-officer" not in body["statistics"] and mark not in json.dumps(body)
        assert all(table["rows"] == [] for table in body["statistics"].values()), body
        # ... and asks by year or month, not by day
        status, body = await auditor.call("GET", "/v1/stats/by-year?from=2026-03-01")
        assert status == 400 and body["code"] == "invalid-request", body
        status, body = await auditor.call("GET", "/v1/stats/by-year?from=2026-03&to=2099-12")
        assert status == 200, body
        # the supervisor manages the caseload: exact figures, by the day if she likes
        status, body = await pair.au.call("GET", "/v1/stats/by-refusal-ground?from=2026-01-01")
        assert status == 200 and body["min_cell"] == 1 and [row["count"] for row in body["rows"]] == [1, 1]
        await pair.au.stop()
        await pair.au.start(stats_min_cell=1)  # the operator may show auditors every count
        status, body = await auditor.call("GET", "/v1/stats/by-refusal-ground")
        assert status == 200 and body["min_cell"] == 1 and [row["count"] for row in body["rows"]] == [1, 1]
    finally:
        await close_sessions(auditor)

    # the command reads the database directly
    def command(*args: str) -> Any:
        return CliRunner().invoke(main, ["stats", *args, "--config", str(pair.ar.provisioned.config)])

    result = await asyncio.to_thread(command, "by-legal-basis", "--format", "csv", "--direction", "outgoing")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["direction,legal_basis,count,share", "outgoing,uncac,1,1.0"]
    result = await asyncio.to_thread(command, "--format", "json", "--from", "2020")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["statistics"]["by-outcome"] == [{"direction": "outgoing", "outcome": "refused", "count": 1}]
    assert mark not in result.output
    result = await asyncio.to_thread(command)
    assert result.exit_code == 0 and "by-refusal-ground" in result.output and mark not in result.output
    result = await asyncio.to_thread(command, "by-year", "--from", "yesterday")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "'from'" in result.output


async def test_a_request_the_peer_refused_for_good_is_no_request_made(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request the peer's gateway refused for good (message.delivery_failed) never reached it: no case exists
    on its side. Ours counted it as a request made, open, pending and, once its deadline passed, overdue for ever,
    and twice once the officer sent it again. It leaves the statistics; its case and message stay on record."""
    from gateway import receiving
    from protocol.errors import InvalidMessage

    async def refuse(gw: Any, opened: Any) -> Any:
        raise InvalidMessage("refused for good")

    counted = await send_request(pair, canary_request("counted"))
    monkeypatch.setattr(receiving, "_answer_context", refuse)
    draft = {"to": "au.ag", "kind": "request", "marking": MARKING, "content": {"request": canary_request("r")}}
    status, body = await pair.ar.call("POST", "/v1/messages", json=draft)
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "refused")
    assert await case_state(pair.ar, body["id"]) == ("sent", None)
    async with pair.ar.gw.engine.connect() as conn:
        rows = (await conn.execute(select(case_stats.c.case_id))).scalars().all()
    assert rows == [counted]
    supervisor = await as_user(pair.ar, ("sam", "supervisor"))
    try:
        status, stats = await supervisor.call("GET", "/v1/stats?direction=outgoing")
    finally:
        await close_sessions(supervisor)
    assert status == 200, stats
    assert stats["statistics"]["open-closed"]["rows"] == [{"direction": "outgoing", "status": "open", "count": 1}], (
        stats
    )


async def test_a_request_under_embargo_counts_in_no_statistic_until_its_date(pair: Pair) -> None:
    """The statistics counted a received request's coded facets on arrival, while its embargo kept the content
    closed to the receiving side's users: a supervisor refused the request learnt its type, offences and legal basis
    from them. It now counts nowhere until the embargo's date, and from then on as any other."""
    from datetime import UTC

    from sqlalchemy import update

    from tests.gateway.test_markings import tomorrow

    request = example_request(RequestType.EXTRADITION).to_json()
    marking = {"level": "CONFIDENTIAL", "caveats": sorted(["uncac-46-20", f"embargo:{tomorrow().isoformat()}"])}
    draft = {"to": "au.ag", "kind": "request", "marking": marking, "content": {"request": request}}
    status, body = await pair.ar.call("POST", "/v1/messages", json=draft)
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    status, refused = await pair.au.call("POST", f"/v1/messages/{body['id']}/open", json={"purpose": "review"})
    assert status == 403 and refused["code"] == "embargoed", refused

    async def incoming() -> dict[str, Any]:
        status, answer = await pair.au.call("GET", "/v1/stats?direction=incoming")
        assert status == 200, answer
        return {name: table["rows"] for name, table in answer["statistics"].items() if table["rows"]}

    assert {name: rows for name, rows in (await incoming()).items() if name not in ("overdue", "durations")} == {}
    async with pair.au.gw.engine.begin() as conn:  # the embargo's date is kept with the facets; then it comes
        assert (await conn.execute(select(case_stats.c.hidden_until))).scalar_one() == tomorrow()
        await conn.execute(update(case_stats).values(hidden_until=datetime.now(UTC).date()))
    shown = await incoming()
    assert shown["by-type"] == [{"direction": "incoming", "type": "extradition", "count": 1}], shown
