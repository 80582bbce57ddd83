"""Status reports may arrive out of order: the case follows the newest transition, never an older one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from store.cases import Cases
from store.db import make_engine, run_migrations

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


async def test_an_older_report_does_not_move_the_case_back(db_url: str) -> None:
    await run_migrations(db_url)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await Cases.create(conn, "c1", None, T0, state="sent")
            # acknowledged at T0+1, under review at T0+2; the second report arrives first
            assert await Cases.set_peer_state(conn, "c1", "under_review", adopt=True, at=T0 + timedelta(seconds=2))
            assert not await Cases.set_peer_state(conn, "c1", "acknowledged", adopt=True, at=T0 + timedelta(seconds=1))
            case = await Cases.get(conn, "c1")
            assert (case.state, case.peer_state) == ("under_review", "under_review")

            # an answer to a status query that predates the last transition is stale too; one as new applies
            assert not await Cases.set_peer_state(conn, "c1", "acknowledged", adopt=False, at=T0)
            assert not await Cases.set_peer_state(conn, "c1", "acknowledged", adopt=False, at=None)
            assert await Cases.set_peer_state(conn, "c1", "under_review", adopt=False, at=T0 + timedelta(seconds=2))

            # a later transition still moves it on
            assert await Cases.set_peer_state(conn, "c1", "in_execution", adopt=True, at=T0 + timedelta(seconds=3))
            case = await Cases.get(conn, "c1")
            assert (case.state, case.peer_state) == ("in_execution", "in_execution")

            # before any transition was adopted, an answer without a date applies (nothing to order it against)
            await Cases.create(conn, "c2", None, T0, state="sent")
            assert await Cases.set_peer_state(conn, "c2", "received", adopt=False, at=None)
            assert (await Cases.get(conn, "c2")).peer_state == "received"
    finally:
        await engine.dispose()
