"""A counterpart's status reports move our view of a case forward only (decision 142): never out of ``closed``,
never back behind a transition of ours made after theirs, never to a state the life cycle cannot reach from ours;
a report overtaken by a later one still gives the statistics their milestone. The reports are written by hand
(signed by the peer's real keys), as a dishonest or merely slow counterpart would send them. And a request opens a
case of its own on both sides, even sent in reply to another (decision 144)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from gateway.cli.request import example_request
from protocol.lifecycle import Event, Side, State, reachable
from protocol.requests import RequestType
from protocol.timefmt import format_time
from store.tables import case_stats
from tests.gateway.conftest import Pair, ledger
from tests.gateway.test_exchange import wait_for
from tests.gateway.test_markings import hostile_towards
from tests.gateway.test_requests_flow import MARKING, case_state, formal, move, send_complete, until


async def report_from_au(pair: Pair, case_id: str, status: dict[str, Any]) -> None:
    hostile = hostile_towards(pair.au, pair.ar)
    payload = hostile.payload(kind="status_report", in_reply_to=case_id, marking=MARKING, content={"status": status})
    answer = await hostile.post(hostile.seal(payload))
    assert answer.status == 200, answer.raw  # receipted: the message is on record whether or not it moves the case


async def moved_on_both_sides(pair: Pair, case_id: str, events: tuple[str, ...], state: str) -> None:
    for event in events:
        status, body = await move(pair.au, case_id, event)
        assert status == 200, body

    async def arrived() -> bool:
        return (await case_state(pair.ar, case_id))[0] == state

    await until(arrived)


def now_at(pair: Pair, seconds: float = 0) -> str:
    return format_time(pair.au.gw.clock() + timedelta(seconds=seconds))


async def test_a_closed_case_is_not_reopened_by_a_report(pair: Pair) -> None:
    case_id = await send_complete(pair)
    events = ("acknowledge", "begin_review", "begin_execution", "complete_execution", "close")
    await moved_on_both_sides(pair, case_id, events, "closed")
    before = len(await ledger(pair.ar.gw))
    await report_from_au(pair, case_id, {"state": "in_execution", "event": "resume", "at": now_at(pair)})
    assert await case_state(pair.ar, case_id) == ("closed", "closed")
    assert "case.state_changed" not in [e["type"] for e in await ledger(pair.ar.gw, before)]


async def test_a_report_does_not_move_a_case_back(pair: Pair) -> None:
    """Acknowledging an executed case is no move of the life cycle from there: refused, even dated now."""
    case_id = await send_complete(pair)
    await moved_on_both_sides(pair, case_id, ("acknowledge", "begin_review", "begin_execution"), "in_execution")
    await report_from_au(pair, case_id, {"state": "acknowledged", "event": "acknowledge", "at": now_at(pair)})
    assert (await case_state(pair.ar, case_id))[0] == "in_execution"
    # forward, even past moves not reported yet (reports may overtake each other), is adopted
    await report_from_au(pair, case_id, {"state": "executed", "event": "complete_execution", "at": now_at(pair)})
    assert await case_state(pair.ar, case_id) == ("executed", "executed")


async def test_a_report_made_before_our_own_later_move_does_not_undo_it(pair: Pair) -> None:
    """No dishonesty needed: the requested side began execution at t1, we withdrew at t2 > t1, and its report,
    in flight meanwhile, arrives after our withdrawal."""
    case_id = await send_complete(pair)
    await moved_on_both_sides(pair, case_id, ("acknowledge", "begin_review"), "under_review")
    t1 = now_at(pair)
    status, body = await move(pair.ar, case_id, "withdraw")
    assert status == 200 and body["state"] == "withdrawn", body
    await report_from_au(pair, case_id, {"state": "in_execution", "event": "begin_execution", "at": t1})
    assert (await case_state(pair.ar, case_id))[0] == "withdrawn"


async def test_a_report_overtaken_by_a_later_one_still_gives_the_statistics_its_milestone(pair: Pair) -> None:
    """'close' overtakes 'complete_execution': the case stays closed, and the execution's time and the outcome,
    which only the overtaken report carries, are still counted (they were lost: the case counted as pending)."""
    case_id = await send_complete(pair)
    await moved_on_both_sides(pair, case_id, ("acknowledge", "begin_review", "begin_execution"), "in_execution")
    await asyncio.sleep(1.5)  # both transitions after begin_execution, and before the reports are made
    executed_at = pair.au.gw.clock() - timedelta(seconds=1)
    closed_at = executed_at + timedelta(milliseconds=500)
    await report_from_au(pair, case_id, {"state": "closed", "event": "close", "at": format_time(closed_at)})
    await report_from_au(
        pair, case_id, {"state": "executed", "event": "complete_execution", "at": format_time(executed_at)}
    )
    assert (await case_state(pair.ar, case_id))[0] == "closed"
    async with pair.ar.gw.reader.connect() as conn:
        row = (
            await conn.execute(
                select(case_stats.c.state, case_stats.c.outcome, case_stats.c.executed_at, case_stats.c.closed_at)
            )
        ).one()
    assert (row.state, row.outcome) == ("closed", "executed"), row
    assert row.executed_at is not None and row.closed_at is not None and row.executed_at <= row.closed_at, row


async def _acknowledgement_overtaken(pair: Pair, earlier: timedelta) -> str:
    """A request whose requested side reports 'under_review', then an 'acknowledged' dated ``earlier`` than that:
    the case's id."""
    case_id = await send_complete(pair)
    await asyncio.sleep(1.5)  # both transitions after the request was sent, and before the reports are made
    reviewed_at = pair.au.gw.clock() - timedelta(milliseconds=500)
    for state, event, at in (
        ("under_review", "begin_review", reviewed_at),
        ("acknowledged", "acknowledge", reviewed_at - earlier),
    ):
        await report_from_au(pair, case_id, {"state": state, "event": event, "at": format_time(at)})
    return case_id


async def test_an_overtaken_acknowledgement_is_ledgered_and_on_the_timeline_as_statistics_count_it(pair: Pair) -> None:
    """'under_review' overtakes 'acknowledged': the statistics take the acknowledgement's time from the overtaken
    report, and the ledger had nothing of it, so no timeline showed where the statistics' wait ends. It is ledgered
    as a case.state_changed marked overtaken (the case does not move) at the time the milestone takes."""
    case_id = await _acknowledgement_overtaken(pair, timedelta(milliseconds=500))
    assert (await case_state(pair.ar, case_id))[0] == "under_review"
    async with pair.ar.gw.reader.connect() as conn:
        counted = (await conn.execute(select(case_stats.c.acknowledged_at))).scalar_one()
    moves = [e for e in await ledger(pair.ar.gw) if e["type"] == "case.state_changed" and e["message_id"] == case_id]
    assert [(e["state"], e.get("reason"), e.get("peer_time")) for e in moves] == [
        ("under_review", None, None),
        ("acknowledged", "overtaken", format_time(counted)),
    ]
    status, timeline = await pair.ar.call("GET", f"/v1/messages/{case_id}/timeline")
    assert status == 200, timeline
    shown = {m["name"]: m["time"] for m in timeline["milestones"]}
    assert shown["acknowledged"] == format_time(counted), timeline


async def test_an_overtaken_report_cannot_date_its_milestone_before_the_request(pair: Pair) -> None:
    """A report's time has no lower bound of its own: an overtaken 'acknowledged' dated ten years back put the
    acknowledgement before the request's submission on the timeline. Its milestone is now no earlier than the
    submission, on the timeline, in the ledger and in the statistics alike."""
    case_id = await _acknowledgement_overtaken(pair, timedelta(days=3650))
    status, timeline = await pair.ar.call("GET", f"/v1/messages/{case_id}/timeline")
    assert status == 200, timeline
    shown = {m["name"]: m["time"] for m in timeline["milestones"]}
    assert timeline["milestones"][0]["name"] == "submitted", timeline
    assert shown["acknowledged"] == shown["submitted"], timeline
    async with pair.ar.gw.reader.connect() as conn:
        counted = (await conn.execute(select(case_stats.c.acknowledged_at))).scalar_one()
    assert format_time(counted) == shown["acknowledged"]


async def test_a_request_sent_in_reply_to_another_opens_a_case_of_its_own(pair: Pair) -> None:
    """Decision 144: an extradition request following an earlier request joined that request's case on both sides,
    with no life cycle and no statistics of its own: the requested side could never acknowledge it."""
    first = await send_complete(pair)
    extradition = example_request(RequestType.EXTRADITION).to_json()
    status, body = await pair.ar.call("POST", "/v1/messages", json=formal(extradition, in_reply_to=first))
    assert status == 202, body
    second = body["id"]
    await wait_for(pair.ar, second, "delivered")
    for side, state in ((pair.ar, "sent"), (pair.au, "received")):
        status, summary = await side.call("GET", f"/v1/messages/{second}")
        assert status == 200 and summary["case_id"] == second and summary["in_reply_to"] == first, summary
        assert await case_state(side, second) == (state, None)
        async with side.gw.reader.connect() as conn:
            counted = (await conn.execute(select(case_stats.c.case_id).order_by(case_stats.c.case_id))).scalars()
            assert sorted(counted) == sorted([first, second])
    status, moved = await move(pair.au, second, "acknowledge")
    assert status == 200 and moved["state"] == "acknowledged", moved
    assert await case_state(pair.au, first) == ("received", None)  # the first request's case did not move


async def test_a_path_to_a_reported_state_runs_only_through_the_reporting_sides_moves(pair: Pair) -> None:
    """The requested side executes; the requesting side reports supplying information nobody asked for. The only
    path back to under_review runs through a request for information, a move of the requested side (ours, so it
    would be in our state already): not adopted. (reachable() once walked through our own moves too.)"""
    case_id = await send_complete(pair)
    for event in ("acknowledge", "begin_review", "begin_execution"):
        status, body = await move(pair.au, case_id, event)
        assert status == 200, body
    hostile = hostile_towards(pair.ar, pair.au)
    status_report = {"state": "under_review", "event": "supply_information", "at": now_at(pair)}
    payload = hostile.payload(
        kind="status_report", in_reply_to=case_id, marking=MARKING, content={"status": status_report}
    )
    assert (await hostile.post(hostile.seal(payload))).status == 200
    assert (await case_state(pair.au, case_id))[0] == "in_execution"


def test_reachable_follows_only_the_moves_of_the_side_that_reports() -> None:
    assert not reachable(State.IN_EXECUTION, Event.SUPPLY_INFORMATION, State.UNDER_REVIEW, Side.REQUESTING)
    assert not reachable(State.PARTIALLY_EXECUTED, Event.BEGIN_EXECUTION, State.IN_EXECUTION, Side.REQUESTED)
    assert reachable(State.SENT, Event.CLOSE, State.CLOSED, Side.REQUESTED)  # over moves not reported yet
    assert reachable(State.IN_EXECUTION, Event.WITHDRAW, State.WITHDRAWN, Side.REQUESTING)
    assert not reachable(State.CLOSED, Event.RESUME, State.IN_EXECUTION, Side.REQUESTED)
