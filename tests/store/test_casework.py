"""Case work storage on both backends: next action, flags, dates and tasks, notification state, oral requests, the
access facts of many cases at once; and migration 0006 builds exactly the tables of store/tables.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from protocol.casework import DateKind, Stage
from protocol.messages import Marking
from store.cases import Cases
from store.casework import CaseWork
from store.db import make_engine, run_migrations
from store.tables import metadata

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
TODAY = NOW.date()
CASE = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await run_migrations(db_url)
    engine = make_engine(db_url)
    async with engine.begin() as conn:
        await Cases.create(conn, CASE, "mla", NOW)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_the_migration_matches_the_tables(engine: AsyncEngine) -> None:
    def diff(sync_conn: object) -> list[object]:
        context = MigrationContext.configure(sync_conn)  # type: ignore[arg-type]
        ours = {"case_work", "case_flags", "case_dates", "oral_requests"}
        return [d for d in compare_metadata(context, metadata) if any(name in repr(d) for name in ours)]

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_next_action_and_flags(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert await CaseWork.next_action(conn, CASE) is None
        await CaseWork.set_next_action(conn, CASE, "call the prosecutor", "olga", NOW)
        await CaseWork.set_next_action(conn, CASE, "draft the reply", "olga", NOW + timedelta(hours=1))
        assert await CaseWork.set_flag(conn, CASE, "urgent", "olga", NOW)
        assert not await CaseWork.set_flag(conn, CASE, "urgent", "bruce", NOW)
        assert await CaseWork.set_flag(conn, CASE, "awaiting-translation", "olga", NOW)
    async with engine.begin() as conn:
        action = await CaseWork.next_action(conn, CASE)
        assert action is not None and action.text == "draft the reply" and action.updated_at == NOW + timedelta(hours=1)
        assert [f.flag for f in await CaseWork.flags(conn, CASE)] == ["awaiting-translation", "urgent"]
        assert await CaseWork.clear_flag(conn, CASE, "urgent")
        assert not await CaseWork.clear_flag(conn, CASE, "urgent")
        assert [f.flag for f in await CaseWork.flags(conn, CASE)] == ["awaiting-translation"]


async def test_dates_lists_and_notification_state(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        late = await CaseWork.add_date(conn, CASE, DateKind.DEADLINE, TODAY - timedelta(days=2), "n1", "olga", NOW)
        soon = await CaseWork.add_date(conn, CASE, DateKind.HEARING, TODAY + timedelta(days=1), None, "olga", NOW)
        later = await CaseWork.add_date(conn, CASE, DateKind.CUSTOM, TODAY + timedelta(days=30), "n3", "olga", NOW)
        done = await CaseWork.add_date(conn, CASE, DateKind.SURRENDER_DATE, TODAY - timedelta(days=9), None, "o", NOW)
        assert await CaseWork.complete(conn, done, "olga", NOW)
        assert not await CaseWork.complete(conn, done, "olga", NOW)
    async with engine.connect() as conn:
        items = await CaseWork.dates(conn, CASE)
        assert [i.id for i in items] == [done, late, soon, later]
        assert items[0].done_at == NOW and items[0].done_by == "olga"
        assert items[1].due == TODAY - timedelta(days=2) and items[1].note == "n1"
        assert items[1].kind is DateKind.DEADLINE
        assert [i.id for i in await CaseWork.open_between(conn, None, TODAY - timedelta(days=1))] == [late]
        assert [i.id for i in await CaseWork.open_between(conn, TODAY, TODAY + timedelta(days=7))] == [soon]
        # page by page (the due lists read it so): the pages join up to the whole listing, in order
        whole = [i.id for i in await CaseWork.open_between(conn, None, TODAY + timedelta(days=60))]
        assert whole == [late, soon, later]
        first = await CaseWork.open_between(conn, None, TODAY + timedelta(days=60), limit=2)
        rest = await CaseWork.open_between(
            conn, None, TODAY + timedelta(days=60), limit=2, after=(first[-1].due, first[-1].id)
        )
        assert [i.id for i in first + rest] == whole
        pending = await CaseWork.to_notify(conn, TODAY, 3)
        assert [(i.id, stage) for i, stage in pending] == [(late, Stage.OVERDUE), (soon, Stage.DUE_SOON)]
    async with engine.begin() as conn:
        await CaseWork.mark_notified(conn, late, Stage.OVERDUE, NOW)
        await CaseWork.mark_notified(conn, soon, Stage.DUE_SOON, NOW)
    async with engine.connect() as conn:
        assert await CaseWork.to_notify(conn, TODAY, 3) == []
        # two days on, the hearing is overdue: a second, different notification
        pending = await CaseWork.to_notify(conn, TODAY + timedelta(days=2), 3)
        assert [(i.id, stage) for i, stage in pending] == [(soon, Stage.OVERDUE)]


async def test_oral_requests_and_access_facts(engine: AsyncEngine) -> None:
    oral_case = "7f0c3a52-1f6e-4c8e-9a3d-2b5e8c4d1a90"
    marking = Marking(level="CONFIDENTIAL", caveats=["uncac-46-20"])
    async with engine.begin() as conn:
        await Cases.create(conn, oral_case, "mla", NOW)
        task = await CaseWork.add_date(
            conn, oral_case, DateKind.CONFIRM_IN_WRITING, date(2026, 12, 1), None, "olga", NOW
        )
        await CaseWork.record_oral(
            conn, oral_case, peer="ar.mj", direction="in", oral_on=TODAY, marking=marking, task_id=task
        )
    async with engine.begin() as conn:
        oral = await CaseWork.oral(conn, oral_case)
        assert oral is not None and oral.marking == marking and oral.task_id == task and oral.confirmed_by is None
        assert await CaseWork.confirm_oral(conn, oral_case, CASE)
        assert not await CaseWork.confirm_oral(conn, oral_case, CASE)
        assert await CaseWork.oral(conn, CASE) is None
        facts = await CaseWork.access_facts(conn, [oral_case, CASE, "no-such-case"])
    # CASE has no opening message in this test: nobody acts on it here
    assert set(facts) == {oral_case}
    case, held_under = facts[oral_case]
    assert case.unit == "mla" and held_under == marking
