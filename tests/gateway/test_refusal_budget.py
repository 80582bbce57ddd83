"""A peer that keeps sending what we refuse cannot grow our ledger faster than its refusal budget (decision 75).

Every refusal of an authenticated peer is a signed answer and a ledger entry. Every delivery let in takes a token of
the peer's bucket (``peer_refusal_burst``, refilled at ``peer_refusals_per_minute``) and gives it back unless it
ends in a refusal; with none left, the federation endpoint answers that peer 429 ``too-many-refusals`` with
``Retry-After`` without parsing the body: nothing signed, stored or ledgered, and its outbox tries again later.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from datetime import timedelta

import pytest
import structlog
from sqlalchemy import select

from gateway.limits import TokenBuckets
from gateway.logs import configure_logging
from gateway.outbox import _retry_after, not_before
from store.tables import outbox
from tests.gateway.conftest import Pair, ledger
from tests.gateway.hostile import Answer, HostilePeer, make_attachment
from tests.gateway.test_exchange import REQUEST, wait_for
from tests.gateway.test_federation_refusals import stored
from tests.gateway.test_markings import hostile_towards
from tests.gateway.test_outbox import restart


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the bucket ---------------------------------------------------------------------------------------------------


def test_a_peer_may_spend_its_burst_then_one_refusal_per_refill() -> None:
    clock = Clock()
    budget = TokenBuckets(per_minute=6, burst=3, clock=clock)  # one token every 10 s
    assert [budget.take("ar.mj") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.take("ar.mj") == pytest.approx(10.0)  # nothing taken: the wait stays what it was
    assert budget.take("ar.mj") == pytest.approx(10.0)
    assert budget.take("au.ag") == 0.0  # each peer has its own bucket
    clock.now += 4
    assert budget.take("ar.mj") == pytest.approx(6.0)
    clock.now += 6
    assert budget.take("ar.mj") == 0.0
    assert budget.take("ar.mj") == pytest.approx(10.0)
    # an idle peer gets its burst back, never more
    clock.now += 3600
    assert [budget.take("ar.mj") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.take("ar.mj") > 0


def test_deliveries_in_flight_hold_their_tokens_and_give_them_back_unless_refused() -> None:
    """A token is taken when a delivery is let in, so no more deliveries than the peer holds tokens can end in a
    refusal, however many it opens at once; a receipt (or our own failure) gives the token back."""
    budget = TokenBuckets(per_minute=60, burst=2, clock=Clock())
    assert [budget.take("ar.mj") for _ in range(2)] == [0.0, 0.0]  # two deliveries in flight
    assert budget.take("ar.mj") > 0  # a third is turned away, whatever the first two become
    budget.give_back("ar.mj")  # the first was receipted
    assert budget.take("ar.mj") == 0.0
    for _ in range(5):  # never more than the burst
        budget.give_back("ar.mj")
    assert [budget.take("ar.mj") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_a_limitation_is_announced_once_until_the_peer_has_a_token_again() -> None:
    clock = Clock()
    budget = TokenBuckets(per_minute=60, burst=1, clock=clock)
    assert budget.take("ar.mj") == 0.0
    assert budget.take("ar.mj") > 0
    assert budget.starts_limit("ar.mj") is True
    assert budget.starts_limit("ar.mj") is False
    clock.now += 1
    assert budget.take("ar.mj") == 0.0
    assert budget.take("ar.mj") > 0
    assert budget.starts_limit("ar.mj") is True


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("10", 10.0),
        ("0", 0.0),
        (None, 0.0),
        ("", 0.0),
        ("-5", 0.0),
        ("1.5", 0.0),
        ("\u0661\u0662", 0.0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", 0.0),
    ],
)
def test_only_delay_seconds_count_as_retry_after(header: str | None, seconds: float) -> None:
    assert _retry_after(header) == seconds


def test_the_outbox_waits_at_least_retry_after_spread_above_it_and_never_beyond_its_maximum() -> None:
    assert not_before(5.0, 3.0, 300.0, lambda: 0.5) == 5.0  # our own backoff is longer already
    assert not_before(0.05, 10.0, 300.0, lambda: 0.0) == 10.0
    assert not_before(0.05, 10.0, 300.0, lambda: 1.0) == pytest.approx(12.0)
    assert not_before(0.05, 1000.0, 300.0, lambda: 0.0) == 300.0  # capped
    assert not_before(0.05, 1000.0, 300.0, lambda: 1.0) == pytest.approx(240.0)  # and spread below the cap
    assert not_before(290.0, 1000.0, 300.0, lambda: 1.0) == 290.0  # never shorter than our own backoff


@pytest.mark.parametrize(("per_minute", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_budget_needs_a_rate_and_a_burst(per_minute: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive rate and a burst"):
        TokenBuckets(per_minute=per_minute, burst=burst)


# --- over the network -------------------------------------------------------------------------------------------


@pytest.fixture
def hostile(pair: Pair) -> HostilePeer:
    """ar.mj's real TLS identity and keys, pointed at au.ag's federation port."""
    return hostile_towards(pair.ar, pair.au)


def assert_turned_away(answer: Answer, *, longest: int) -> None:
    assert answer.status == 429, (answer.status, answer.raw[:300])
    assert answer.content_type == "application/problem+json"
    assert answer.document["code"] == "too-many-refusals"
    assert answer.document["type"] == "urn:comity:problem:too-many-refusals"
    assert "refusal" not in answer.document  # nothing signed
    assert answer.retry_after is not None and 1 <= int(answer.retry_after) <= longest


async def limited_count(pair: Pair) -> float:
    text = await pair.au.metrics()
    found = [line for line in text.splitlines() if line.startswith('comity_envelopes_limited_total{peer="ar.mj"}')]
    return float(found[0].split(" ")[1]) if found else 0.0


async def test_a_peer_past_its_refusals_is_turned_away_unparsed_and_nothing_is_ledgered(
    pair: Pair, hostile: HostilePeer
) -> None:
    await restart(pair.au, peer_refusal_burst=2, peer_refusals_per_minute=0.6)  # then one refusal every 100 s
    buffer = io.StringIO()
    saved_logging = structlog.get_config()
    configure_logging(level="info", stream=buffer)
    try:
        before = await stored(pair.au.gw)
        for _ in range(3):  # a receipt gives its token back
            answer = await hostile.post(hostile.seal(hostile.payload()))
            assert answer.status == 200 and isinstance(answer.document.get("receipt"), str)
        before = await stored(pair.au.gw)
        for _ in range(2):  # within the burst: signed and ledgered as always
            answer = await hostile.post(hostile.seal(hostile.payload(**{"from": "zz.evil"})))
            assert answer.status == 403 and isinstance(answer.document.get("refusal"), str)
        added = await ledger(pair.au.gw, before.ledger_size)
        assert [entry["reason"] for entry in added] == ["sender-mismatch", "sender-mismatch"]

        # past it: the next bad envelope, a good one, and a good one with an attachment are all turned away unparsed
        payload = hostile.payload()
        attachment = make_attachment(os.urandom(3000))
        for answer in (
            await hostile.post(hostile.seal(hostile.payload(**{"from": "zz.evil"}))),
            await hostile.post(hostile.seal(payload)),
            await hostile.post_multipart(
                hostile.seal(hostile.payload(attachments=[attachment.ref.model_dump()])), [attachment.ciphertext]
            ),
        ):
            assert_turned_away(answer, longest=100)
    finally:
        structlog.configure(**saved_logging)

    after = await stored(pair.au.gw)
    assert after.ledger_size == before.ledger_size + 2  # the two refusals within the burst, nothing since
    assert (after.messages, after.attachments, after.files) == (before.messages, before.attachments, before.files)
    assert await limited_count(pair) == 3
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    limited = [line for line in lines if line["event"] == "peer_refusals_limited"]
    assert len(limited) == 1 and limited[0]["peer"] == "ar.mj"  # one line per limitation, not per envelope


async def test_the_sender_waits_as_told_and_delivers_once_the_peer_has_a_token_again(pair: Pair) -> None:
    clock = Clock()
    pair.au.gw.refusal_budget = TokenBuckets(per_minute=6, burst=1, clock=clock)
    assert pair.au.gw.refusal_budget.take("ar.mj") == 0.0  # ar.mj just spent its only refusal
    await restart(pair.ar, outbox_initial_backoff=0.05, outbox_max_backoff=30)
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    message_id = body["id"]

    # au.ag answers 429 with Retry-After: 10; ar.mj's outbox waits that long (and up to a fifth more), not its
    # 0.05 s backoff
    for _ in range(200):
        async with pair.ar.gw.engine.connect() as conn:
            row = (await conn.execute(select(outbox.c.attempts, outbox.c.next_attempt_at, outbox.c.last_error))).one()
        if row.attempts >= 1:
            break
        await asyncio.sleep(0.05)
    assert row.attempts == 1 and row.last_error == "delivery-failed"
    waits = row.next_attempt_at.replace(tzinfo=None) - pair.ar.gw.clock().replace(tzinfo=None)
    assert timedelta(seconds=8) < waits <= timedelta(seconds=12), waits  # 10 s, plus up to a fifth
    assert (await wait_for(pair.ar, message_id, "queued"))["received_at"] is None

    # once the peer has a token again, the next attempt is delivered: nothing was lost
    clock.now += 10
    async with pair.ar.gw.engine.begin() as conn:
        await conn.execute(outbox.update().values(next_attempt_at=pair.ar.gw.clock()))
    pair.ar.gw.outbox_wakeup.set()
    await wait_for(pair.ar, message_id, "delivered")
    received = [entry for entry in await ledger(pair.au.gw) if entry["type"] == "message.received"]
    assert [entry["message_id"] for entry in received] == [message_id]
