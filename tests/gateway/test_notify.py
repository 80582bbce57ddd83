"""Case-work notifications on both backends: each stage of each item notified once, through a signed webhook (a local
aiohttp server) or a log line; a failing webhook is retried and loses nothing; a restart does not notify again; no
note reaches the hook or the logs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web

from gateway.notify import LEASE_FACT, MAX_BACKOFF_STEPS, SIGNATURE_HEADER, Notifier
from protocol.casework import Stage
from protocol.timefmt import format_time
from store.casework import CaseWork
from store.facts import write_fact
from tests.gateway.conftest import Pair, serve_locally
from tests.gateway.test_casework import MARKING, day, incoming_case, officer
from tests.gateway.test_logs_no_secrets import log_buffer  # noqa: F401 (a fixture)
from tests.gateway.test_markings import canary, close_sessions
from tests.gateway.test_requests_flow import until

SECRET = "webhook secret for the tests"


@dataclass
class Receiver:
    url: str
    failures_left: int = 0  # answer 503 to this many requests first
    answer_after: float = 0.0  # seconds before each answer (a slow hook)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set when a request came in
    received: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    refused: int = 0
    poison: set[int] = field(default_factory=set)  # item ids answered 422 (a body the hook will not take)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver("")

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        state.arrived.set()
        await asyncio.sleep(state.answer_after)
        if state.failures_left > 0:
            state.failures_left -= 1
            state.refused += 1
            return web.Response(status=503)
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected):
            return web.Response(status=401)
        if json.loads(body)["item_id"] in state.poison:
            return web.Response(status=422)
        state.raw.append(body)
        state.received.append(json.loads(body))
        return web.Response(status=204)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/hook")  # 307: a client that follows it sends the signed body again

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/moved", moved)
    runner, port = await serve_locally(app)
    state.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield state
    finally:
        await runner.cleanup()


async def _one_item_due_today(pair: Pair) -> dict[str, Any]:
    """A received case with one deadline due today (so due-soon), set by an officer assigned to it."""
    _, case_id = await incoming_case(pair)
    olga = await officer(pair, "olga", case_id)
    try:
        status, body = await olga.call("POST", f"/v1/cases/{case_id}/dates", json={"kind": "deadline", "due": day(0)})
        assert status == 201, body
        return dict(body)
    finally:
        await close_sessions(olga)


def _running_notifier(pair: Pair) -> Notifier:
    """The gateway's own notifier: it holds the notifier lease, so another Notifier would be a replica that waits."""
    assert pair.au.running is not None and pair.au.running.notifier is not None
    return pair.au.running.notifier


async def _restart_with_webhook(pair: Pair, url: str) -> None:
    await pair.au.stop()
    await pair.au.start(
        notify="webhook", notify_webhook_url=url, notify_webhook_secret=SECRET, notify_interval_seconds=0.05
    )


async def test_a_signed_webhook_gets_each_stage_once_even_after_failures_and_a_restart(
    pair: Pair, receiver: Receiver
) -> None:
    _, case_id = await incoming_case(pair)
    olga = await officer(pair, "olga", case_id)
    mark = canary()
    try:
        items = {}
        for kind, due in (("deadline", day(-1)), ("hearing", day(2)), ("custom", day(30))):
            status, body = await olga.call(
                "POST", f"/v1/cases/{case_id}/dates", json={"kind": kind, "due": due, "note": f"{kind} {mark}"}
            )
            assert status == 201, body
            items[kind] = body["id"]
    finally:
        await close_sessions(olga)
    receiver.failures_left = 3  # the hook is down for a while: nothing may be lost
    await _restart_with_webhook(pair, receiver.url)

    async def both_arrived() -> bool:
        return len(receiver.received) >= 2

    await until(both_arrived)
    assert receiver.refused == 3
    got = sorted((n["item_id"], n["stage"]) for n in receiver.received)
    assert got == sorted([(items["deadline"], "overdue"), (items["hearing"], "due-soon")])
    for note in receiver.received:
        assert set(note) == {"id", "authority", "case_id", "item_id", "kind", "due", "stage", "time"}
        assert note["case_id"] == case_id and note["authority"] == "au.ag"
    assert all(mark not in raw.decode() for raw in receiver.raw)

    # a restart notifies nothing again; a new overdue item is notified once
    await _restart_with_webhook(pair, receiver.url)
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/dates", json={"kind": "hearing", "due": day(-3)})
    assert status == 201, body

    async def third_arrived() -> bool:
        return len(receiver.received) >= 3

    await until(third_arrived)
    await asyncio.sleep(0.3)  # several more scans
    assert [(n["item_id"], n["stage"]) for n in receiver.received[2:]] == [(body["id"], "overdue")]


async def test_a_gateway_stopped_while_a_notification_is_in_flight_marks_it_first(
    pair: Pair, receiver: Receiver
) -> None:
    """A graceful stop waits for the notification in hand: sent and marked, it does not go out again after the
    restart (cancelled between the two, it would)."""
    _, case_id = await incoming_case(pair)
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/dates", json={"kind": "deadline", "due": day(-1)})
    assert status == 201, body
    receiver.answer_after = 0.5
    await _restart_with_webhook(pair, receiver.url)
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    await pair.au.stop()  # while the hook is still answering
    assert [(n["item_id"], n["stage"]) for n in receiver.received] == [(body["id"], "overdue")]
    receiver.answer_after = 0.0
    await _restart_with_webhook(pair, receiver.url)
    await asyncio.sleep(0.5)  # several scans
    assert len(receiver.received) == 1


async def test_an_unreachable_webhook_keeps_the_notification_for_later(pair: Pair, receiver: Receiver) -> None:
    body = await _one_item_due_today(pair)
    await pair.au.stop()
    await pair.au.start(notify="webhook", notify_webhook_url="http://127.0.0.1:9/nowhere", notify_interval_seconds=30)
    notifier = _running_notifier(pair)
    with pytest.raises(Exception, match="unreachable"):
        await notifier.scan_once()
    # once the webhook is back, the same item goes out, once
    await _restart_with_webhook(pair, receiver.url)

    async def arrived() -> bool:
        return len(receiver.received) == 1

    await until(arrived)
    assert (receiver.received[0]["item_id"], receiver.received[0]["stage"]) == (body["id"], "due-soon")


async def test_the_log_hook_writes_one_line_without_the_note(
    pair: Pair,
    log_buffer: io.StringIO,  # noqa: F811 (the fixture imported above)
) -> None:
    olga = await officer(pair, "olga")
    mark = canary()
    try:
        status, oral = await olga.call(
            "POST",
            "/v1/work/oral-requests",
            json={"peer": "ar.mj", "direction": "made", "on": day(-5), "marking": MARKING, "note": mark},
        )
        assert status == 201, oral
    finally:
        await close_sessions(olga)
    notifier = Notifier(pair.au.gw)  # the default hook is "log"; logging to the buffer, as the gateway's own would
    notifier.holder = _running_notifier(pair).holder  # ... in the same process, which holds the lease
    assert await notifier.scan_once() == 1
    assert await notifier.scan_once() == 0
    lines = [json.loads(line) for line in log_buffer.getvalue().splitlines() if "case_work_due" in line]
    assert len(lines) == 1, lines
    assert lines[0]["case_id"] == oral["case_id"] and lines[0]["kind"] == "confirm-in-writing"
    assert lines[0]["stage"] == "overdue" and lines[0]["due"] == day(-2)
    assert mark not in log_buffer.getvalue()


async def test_a_redirect_is_not_followed(pair: Pair, receiver: Receiver) -> None:
    """A webhook that answers with a redirect has not taken the notification: it is not sent on to wherever the
    answer points (with its signature), and it stays to be sent again."""
    item = await _one_item_due_today(pair)
    await pair.au.stop()
    moved = receiver.url.replace("/hook", "/moved")
    await pair.au.start(
        notify="webhook", notify_webhook_url=moved, notify_webhook_secret=SECRET, notify_interval_seconds=30
    )
    with pytest.raises(Exception, match="HTTP 307"):
        await _running_notifier(pair).scan_once()
    assert receiver.received == []
    await _restart_with_webhook(pair, receiver.url)

    async def arrived() -> bool:
        return len(receiver.received) == 1

    await until(arrived)  # still due: it goes out once the webhook answers itself
    assert receiver.received[0]["item_id"] == item["id"]


async def _three_due_items(pair: Pair) -> tuple[str, list[int]]:
    _, case_id = await incoming_case(pair)
    olga = await officer(pair, "olga", case_id)
    try:
        ids = []
        for offset in (-3, -2, -1):
            status, body = await olga.call(
                "POST", f"/v1/cases/{case_id}/dates", json={"kind": "deadline", "due": day(offset)}
            )
            assert status == 201, body
            ids.append(body["id"])
        return case_id, ids
    finally:
        await close_sessions(olga)


async def test_replicas_take_turns_so_each_notification_goes_out_once(pair: Pair, receiver: Receiver) -> None:
    """Two more notifiers on the same database (replicas) scan at the same moment as the gateway's own, which holds
    the lease: only it notifies, so the hook gets each notification once; when it gives the lease up (it stops), a
    replica takes over."""
    case_id, ids = await _three_due_items(pair)
    await pair.au.stop()
    await pair.au.start(
        notify="webhook", notify_webhook_url=receiver.url, notify_webhook_secret=SECRET, notify_interval_seconds=60
    )

    async def first_scan_done() -> bool:  # the gateway's own first scan, at its start, takes the lease
        return len(receiver.received) == 3

    await until(first_scan_done)
    later = []
    for offset in (-2, -1):
        status, body = await pair.au.call(
            "POST", f"/v1/cases/{case_id}/dates", json={"kind": "hearing", "due": day(offset)}
        )
        assert status == 201, body
        later.append(body["id"])
    own, replicas = _running_notifier(pair), [Notifier(pair.au.gw), Notifier(pair.au.gw)]
    assert await asyncio.gather(*(n.scan_once() for n in (*replicas, own))) == [0, 0, 2]
    # the holder gives the lease up (as it does when it stops): a replica takes over, and the holder waits
    await own._release()
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/dates", json={"kind": "hearing", "due": day(-1)})
    assert status == 201, body
    assert await replicas[0].scan_once() == 1
    assert await own.scan_once() == 0 and await replicas[1].scan_once() == 0
    assert sorted(n["item_id"] for n in receiver.received) == sorted([*ids, *later, body["id"]])


async def test_a_lease_that_ran_out_is_taken_and_a_live_one_is_not(pair: Pair) -> None:
    """(The log hook: the gateway's own notifier scanned when it started, before the items existed, and waits a
    minute before its next scan; its lease is given up here, as at a stop.)"""
    await _running_notifier(pair)._release()
    _, ids = await _three_due_items(pair)
    now = pair.au.gw.clock()
    for until_, taken in ((now + timedelta(seconds=30), False), (now - timedelta(seconds=1), True)):
        async with pair.au.gw.transaction() as conn:
            await write_fact(conn, LEASE_FACT, {"holder": "another-replica", "until": format_time(until_)})
        replica = Notifier(pair.au.gw)
        try:
            assert await replica.scan_once() == (len(ids) if taken else 0)
        finally:
            await replica._release()


async def test_a_notification_the_hook_refuses_does_not_hold_back_the_others(pair: Pair, receiver: Receiver) -> None:
    _, ids = await _three_due_items(pair)
    receiver.poison = {ids[0]}  # the oldest: the first a scan tries
    await _restart_with_webhook(pair, receiver.url)

    async def others_arrived() -> bool:
        return len(receiver.received) == 2

    await until(others_arrived)
    assert sorted(n["item_id"] for n in receiver.received) == ids[1:]
    # held back, it does not take a place in the window of items a scan reads (500), and however often it is
    # refused its delay stays bounded
    notifier = _running_notifier(pair)
    async with pair.au.gw.reader.connect() as conn:
        window = await CaseWork.to_notify(conn, pair.au.gw.clock().date(), 3, exclude={ids[0]})
    assert window == []
    notifier._refused[ids[0], Stage.OVERDUE] = (5000, 0.0)
    assert await notifier.scan_once() == 0
    assert notifier._refused[ids[0], Stage.OVERDUE][0] == MAX_BACKOFF_STEPS
    notifier._refused.clear()
    receiver.poison = set()  # the hook takes it after all: it was kept, and goes out once

    async def all_arrived() -> bool:
        return len(receiver.received) == 3

    await until(all_arrived)
    assert receiver.received[-1]["item_id"] == ids[0]


async def test_an_item_done_while_a_scan_is_sending_is_not_notified(pair: Pair, receiver: Receiver) -> None:
    """A scan reads what is due once, and a slow hook can make it long: an item marked done meanwhile was still
    notified (known gap 16). Each item is read again just before its notification goes out."""
    _, case_id = await incoming_case(pair)
    ids = []
    for due in (day(-2), day(-1)):
        status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/dates", json={"kind": "deadline", "due": due})
        assert status == 201, body
        ids.append(body["id"])
    receiver.answer_after = 0.5
    await _restart_with_webhook(pair, receiver.url)
    await asyncio.wait_for(receiver.arrived.wait(), 10)  # the first is in hand; the second is next in the scan
    status, body = await pair.au.call("POST", f"/v1/cases/{case_id}/dates/{ids[1]}/done", json={})
    assert status == 200, body

    async def first_arrived() -> bool:
        return len(receiver.received) == 1

    await until(first_arrived)
    await asyncio.sleep(0.8)  # the rest of that scan, and more
    assert [(n["item_id"], n["stage"]) for n in receiver.received] == [(ids[0], "overdue")]
