"""store.delivery: a receipt removes the outbox row, marks the message delivered and starts a request's wait, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from protocol.messages import Marking
from protocol.stats import Facets
from store import fast
from store.case_stats import CaseStats
from store.cases import Cases
from store.db import is_sqlite, make_reader
from store.delivery import record_delivery
from store.messages import Messages
from store.outbox import Outbox
from store.tables import case_stats, messages, outbox

SUBMITTED = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SENT = SUBMITTED + timedelta(seconds=2)
RECEIVED = SENT + timedelta(milliseconds=40)
OUTBOX = Outbox(skip_locked=False)


async def add_message(engine: AsyncEngine, message_id: str, *, request: bool) -> None:
    """A message as the sender has it when it goes out: stored, in the outbox, a request with its statistics row."""
    async with engine.begin() as conn:
        await queue_message(conn, message_id, request=request)


async def queue_message(conn: AsyncConnection, message_id: str, *, request: bool) -> None:
    """``add_message`` in the caller's transaction (its rows queued there, on PostgreSQL)."""
    if request:
        await Cases.create(conn, message_id, None, SUBMITTED)
        await CaseStats.open(
            conn,
            message_id,
            direction="out",
            counterpart="au.ag",
            country="AU",
            at=SUBMITTED,
            state="sent",
            facets=Facets(request_type="mla"),
        )
    await Messages.insert(
        conn,
        id=message_id,
        direction="out",
        peer="au.ag",
        kind="request" if request else "status_query",
        in_reply_to=None,
        marking=Marking(level="CONFIDENTIAL", caveats=[]),
        state="sent",
        sealed=b"sealed",
        envelope_sha256="0" * 64,
        created_at=SUBMITTED,
        case_id=message_id if request else None,
    )
    await OUTBOX.enqueue(conn, message_id, "au.ag", SUBMITTED)


async def deliver(engine: AsyncEngine, message_id: str, receipt: str = "receipt-1") -> bool:
    async with engine.begin() as conn:
        await conn.execute(text("SELECT 1"))  # begun on the driver: the hot path applies on PostgreSQL
        return await record_delivery(conn, OUTBOX, message_id, sent_at=SENT, received_at=RECEIVED, receipt=receipt)


async def message(engine: AsyncEngine, message_id: str) -> tuple[Any, ...]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(messages.c.state, messages.c.received_at, messages.c.receipt).where(messages.c.id == message_id)
            )
        ).one()
    return tuple(row)


async def stats(engine: AsyncEngine, message_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(case_stats).where(case_stats.c.case_id == message_id))).one()
    return dict(row._mapping)


async def in_outbox(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(outbox.c.message_id))).scalars())


async def test_a_receipt_delivers_the_message_and_starts_the_requests_wait_once(engine: AsyncEngine) -> None:
    await add_message(engine, "request-1", request=True)
    await add_message(engine, "query-1", request=False)

    assert await deliver(engine, "request-1")
    assert await deliver(engine, "query-1")  # no statistics row: nothing else changes

    assert await in_outbox(engine) == set()
    assert await message(engine, "request-1") == ("delivered", RECEIVED, "receipt-1")
    assert await message(engine, "query-1") == ("delivered", RECEIVED, "receipt-1")
    assert (await stats(engine, "request-1"))["start_at"] == SENT

    # a second receipt for the same message (another replica, a late duplicate) changes nothing
    assert not await deliver(engine, "request-1", receipt="receipt-2")
    assert await message(engine, "request-1") == ("delivered", RECEIVED, "receipt-1")
    assert (await stats(engine, "request-1"))["start_at"] == SENT


async def test_a_receipt_recorded_late_leaves_an_acknowledged_or_answered_message_where_it_is(
    engine: AsyncEngine,
) -> None:
    """The peer acknowledged or answered before our retry got the stored receipt (the first answer was lost): the
    receipt is kept, the state is not moved back to delivered (decision 111), on every path that records it."""
    for message_id, state in (("request-1", "acknowledged"), ("request-2", "answered"), ("request-3", "sent")):
        await add_message(engine, message_id, request=True)
        async with engine.begin() as conn:
            await conn.execute(update(messages).where(messages.c.id == message_id).values(state=state))
    assert await deliver(engine, "request-1")  # the group commit's path
    async with engine.connect() as conn:  # the direct path, in autocommit, with SQLAlchemy's statement
        await Messages.delivered(conn, "request-2", RECEIVED, "receipt-1")
        await Messages.delivered(conn, "request-3", RECEIVED, "receipt-1")
        await conn.commit()
    assert await message(engine, "request-1") == ("acknowledged", RECEIVED, "receipt-1")
    assert await message(engine, "request-2") == ("answered", RECEIVED, "receipt-1")
    assert await message(engine, "request-3") == ("delivered", RECEIVED, "receipt-1")


async def test_the_wait_to_an_earlier_milestone_is_written_and_a_started_wait_kept(engine: AsyncEngine) -> None:
    """An acknowledgement that overtook the receipt: its wait is counted from the send; a wait already started
    (a message sent again after a lost receipt) keeps its first start."""
    await add_message(engine, "request-1", request=True)
    await add_message(engine, "request-2", request=True)
    acknowledged = SENT + timedelta(seconds=5)
    earlier = SENT - timedelta(seconds=30)
    async with engine.begin() as conn:
        await conn.execute(
            update(case_stats).where(case_stats.c.case_id == "request-1").values(acknowledged_at=acknowledged)
        )
        await conn.execute(update(case_stats).where(case_stats.c.case_id == "request-2").values(start_at=earlier))

    assert await deliver(engine, "request-1")
    assert await deliver(engine, "request-2")

    first = await stats(engine, "request-1")
    assert (first["start_at"], first["wait_acknowledge_ms"]) == (SENT, 5000)
    second = await stats(engine, "request-2")
    assert (second["start_at"], second["wait_acknowledge_ms"]) == (earlier, None)


async def test_rows_queued_before_it_are_written_with_it(db_url: str, engine: AsyncEngine) -> None:
    """A group commit mixes units: a submission queued its rows, then a receipt is recorded; both land."""
    await add_message(engine, "request-1", request=True)
    async with engine.begin() as conn:
        await conn.execute(text("SELECT 1"))
        assert is_sqlite(db_url) or await fast._driver(conn) is not None  # PostgreSQL: the one-statement path
        await queue_message(conn, "queued-1", request=True)  # a submission's rows, queued on PostgreSQL
        assert await record_delivery(conn, OUTBOX, "request-1", sent_at=SENT, received_at=RECEIVED, receipt="receipt-1")
        assert fast.pending_rows(conn) == 0
    assert await in_outbox(engine) == {"queued-1"}
    assert await message(engine, "queued-1") == ("sent", None, None)
    assert (await stats(engine, "queued-1"))["start_at"] is None


async def test_a_failed_transaction_leaves_the_message_in_the_outbox(engine: AsyncEngine) -> None:
    await add_message(engine, "request-1", request=True)

    async def deliver_then_fail() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1"))
            assert await record_delivery(
                conn, OUTBOX, "request-1", sent_at=SENT, received_at=RECEIVED, receipt="receipt-1"
            )
            raise RuntimeError("the ledger write failed")

    with pytest.raises(RuntimeError):
        await deliver_then_fail()
    assert await in_outbox(engine) == {"request-1"}
    assert await message(engine, "request-1") == ("sent", None, None)
    assert (await stats(engine, "request-1"))["start_at"] is None


async def test_seen_answers_several_ids_in_one_query(db_url: str, engine: AsyncEngine) -> None:
    """The receiver's duplicate check (gathered by gateway.coalesce): the known ids among those asked, by id, the
    same on the reader the gateway asks it on."""
    await add_message(engine, "01930000-0000-7000-8000-000000000001", request=True)
    await add_message(engine, "01930000-0000-7000-8000-000000000002", request=False)
    await deliver(engine, "01930000-0000-7000-8000-000000000002", receipt="receipt-2")
    asked = [
        "01930000-0000-7000-8000-000000000001",
        "01930000-0000-7000-8000-000000000002",
        "01930000-0000-7000-8000-00000000ffff",
    ]
    async with engine.connect() as conn:
        found = await Messages.seen_many(conn, asked)
        alone = await Messages.seen(conn, asked[1])
        nothing = await Messages.seen_many(conn, [])
    assert set(found) == set(asked[:2])
    first = found[asked[0]]
    assert (first.direction, first.envelope_sha256, first.receipt) == ("out", "0" * 64, None)
    assert found[asked[1]].receipt == "receipt-2" and alone == found[asked[1]]
    assert nothing == {}
    reader = make_reader(db_url, engine)
    try:
        async with reader.connect() as conn:
            assert await Messages.seen_many(conn, [*asked, asked[0]]) == found  # an id asked twice: found once
    finally:
        if reader.sync_engine.pool is not engine.sync_engine.pool:  # SQLite: a pool of its own
            await reader.dispose()


async def test_a_milestone_reached_before_the_receipt_recorded_gives_a_wait_of_zero(engine: AsyncEngine) -> None:
    """The first delivery reached the peer, which acknowledged it, but its receipt was lost; the retry that gets the
    receipt starts the wait (decision 10) after the acknowledgement. The wait was negative, and so was the median of
    the durations statistic; it is 0 now."""
    from protocol.stats import Filters, Statistic
    from store.stats import compute

    await add_message(engine, "r1", request=True)
    async with engine.begin() as conn:
        await CaseStats.milestone(conn, "r1", "acknowledged_at", SUBMITTED + timedelta(minutes=5))
    async with engine.begin() as conn:
        retry = SUBMITTED + timedelta(minutes=30)
        assert await record_delivery(conn, OUTBOX, "r1", sent_at=retry, received_at=RECEIVED, receipt="receipt")
    async with engine.connect() as conn:
        assert (await conn.execute(select(case_stats.c.wait_acknowledge_ms))).scalar_one() == 0
        table = await compute(conn, Statistic.DURATIONS, Filters(), today=SUBMITTED.date())
    assert all(value >= 0 for row in table.rows for value in row if isinstance(value, int | float)), table.rows


async def test_the_next_due_time_is_the_next_retry_to_come_not_one_already_due(engine: AsyncEngine) -> None:
    """A row already due that a claim did not get (another transaction holds it) made next_due answer a past time:
    the sender then polled a second later, past a retry due sooner. Such a row is left to that poll."""
    for name in ("held", "later"):
        await add_message(engine, name, request=False)
    now = SUBMITTED + timedelta(minutes=1)
    async with engine.begin() as conn:
        for name, when in (("held", now - timedelta(seconds=5)), ("later", now + timedelta(milliseconds=100))):
            await conn.execute(update(outbox).where(outbox.c.message_id == name).values(next_attempt_at=when))
    async with engine.connect() as conn:
        assert await OUTBOX.next_due(conn, now) == now + timedelta(milliseconds=100)
