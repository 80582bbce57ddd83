"""Every statistic against hand-computed figures, on SQLite and on PostgreSQL (the same figures on both)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from protocol.stats import Facets, Filters, Statistic, parse_filters
from store.case_stats import CaseStats
from store.cases import Cases
from store.db import make_engine, run_migrations
from store.stats import compute
from store.tables import case_dates, users

T25 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
T26 = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
TODAY = date(2026, 6, 1)
H = timedelta(hours=1)


def facets(**values: Any) -> Facets:
    return Facets(**values)


async def _case(conn: Any, case_id: str, direction: str, peer: str, at: datetime, f: Facets, state: str) -> None:
    await Cases.create(conn, case_id, "mla", at, state=state, request_type=f.request_type)
    await CaseStats.open(
        conn, case_id, direction=direction, counterpart=peer, country=peer[:2].upper(), at=at, state=state, facets=f
    )


async def _assign(conn: Any, case_id: str, user_id: int) -> None:
    await Cases.assign(conn, case_id, user_id, "user:sam", T25, unit=None, replace=False)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await run_migrations(db_url)
    engine = make_engine(db_url)
    async with engine.begin() as conn:
        for name in ("olga", "pete"):
            await conn.execute(insert(users).values(username=name, role="officer", created_at=T25))
        # c1: incoming from AR in 2025, UNCAC 46, art. 15 and 23; acknowledged after 1 h, answered after 10 h,
        # executed after 100 h, then closed
        await _case(
            conn,
            "c1",
            "in",
            "ar.mj",
            T25,
            facets(
                request_type="mla-criminal",
                legal_basis="uncac",
                uncac_article=46,
                offences=("15", "23"),
                assistance=("documents-records", "taking-evidence"),
                deadline=date(2025, 4, 1),
            ),
            "received",
        )
        await CaseStats.moved(conn, "c1", "acknowledged", T25 + H)
        await CaseStats.milestone(conn, "c1", "acknowledged_at", T25 + 2 * H)  # a later acknowledgement: ignored
        await CaseStats.milestone(conn, "c1", "first_answer_at", T25 + 10 * H)
        await CaseStats.moved(conn, "c1", "executed", T25 + 100 * H)
        await CaseStats.moved(conn, "c1", "closed", T25 + 200 * H)
        # c2: incoming extradition from BR in 2025 under a treaty, acknowledged after 3 h, refused on two grounds
        await _case(
            conn,
            "c2",
            "in",
            "br.mjsp",
            T25 + 24 * H,
            facets(request_type="extradition", legal_basis="treaty", offences=("23",)),
            "received",
        )
        await CaseStats.milestone(conn, "c2", "acknowledged_at", T25 + 27 * H)
        await CaseStats.moved(conn, "c2", "refused", T25 + 50 * H, refusal_grounds=["46(21)(b)", "no-dual-criminality"])
        # c3: incoming from AR in 2026, reciprocity, art. 17, acknowledged after 2 h, under review past its deadline
        await _case(
            conn,
            "c3",
            "in",
            "ar.mj",
            T26,
            facets(
                request_type="mla-criminal", legal_basis="reciprocity", offences=("17",), deadline=date(2026, 1, 10)
            ),
            "received",
        )
        await CaseStats.moved(conn, "c3", "acknowledged", T26 + 2 * H)
        await CaseStats.moved(conn, "c3", "under_review", T26 + 3 * H)
        # c6: incoming from AR in 2026, UNCAC 46: acknowledged after 4 h, answered after 20 h, executed after 50 h
        await _case(
            conn,
            "c6",
            "in",
            "ar.mj",
            T26 + 48 * H,
            facets(request_type="mla-criminal", legal_basis="uncac", uncac_article=46),
            "received",
        )
        await CaseStats.milestone(conn, "c6", "acknowledged_at", T26 + 52 * H)
        await CaseStats.milestone(conn, "c6", "first_answer_at", T26 + 68 * H)
        await CaseStats.moved(conn, "c6", "executed", T26 + 98 * H)
        # c4: outgoing freezing to AU in 2026, UNCAC 54, sent a minute after submission, acknowledged 5 h later
        await _case(
            conn,
            "c4",
            "out",
            "au.ag",
            T26,
            facets(
                request_type="freezing",
                legal_basis="uncac",
                uncac_article=54,
                offences=("23",),
                assistance=("search-seizure-freezing",),
                urgent=True,
                deadline=date(2027, 1, 1),
            ),
            "sent",
        )
        await CaseStats.milestone(conn, "c4", "start_at", T26 + timedelta(minutes=1))
        await CaseStats.moved(conn, "c4", "acknowledged", T26 + timedelta(minutes=1) + 5 * H)
        # c5: outgoing to AR in 2025 without a structured request, never delivered
        await _case(conn, "c5", "out", "ar.mj", T25, Facets(), "sent")
        await _assign(conn, "c1", 1)
        await _assign(conn, "c2", 1)
        await _assign(conn, "c2", 2)
    try:
        yield engine
    finally:
        await engine.dispose()


async def rows(engine: AsyncEngine, statistic: Statistic, filters: Filters | None = None) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return (await compute(conn, statistic, filters or Filters(), today=TODAY)).rows


EXPECTED: dict[Statistic, list[tuple[Any, ...]]] = {
    Statistic.BY_YEAR: [("incoming", 2025, 2), ("incoming", 2026, 2), ("outgoing", 2025, 1), ("outgoing", 2026, 1)],
    Statistic.BY_COUNTRY: [("incoming", "AR", 3), ("incoming", "BR", 1), ("outgoing", "AR", 1), ("outgoing", "AU", 1)],
    Statistic.BY_COUNTERPART: [
        ("incoming", "ar.mj", 3),
        ("incoming", "br.mjsp", 1),
        ("outgoing", "ar.mj", 1),
        ("outgoing", "au.ag", 1),
    ],
    Statistic.BY_TYPE: [
        ("incoming", "extradition", 1),
        ("incoming", "mla-criminal", 3),
        ("outgoing", "freezing", 1),
        ("outgoing", "unknown", 1),
    ],
    Statistic.BY_OFFENCE: [("incoming", "15", 1), ("incoming", "17", 1), ("incoming", "23", 2), ("outgoing", "23", 1)],
    Statistic.BY_LEGAL_BASIS: [
        ("incoming", "reciprocity", 1, 0.25),
        ("incoming", "treaty", 1, 0.25),
        ("incoming", "uncac", 2, 0.5),
        ("outgoing", "uncac", 1, 0.5),
        ("outgoing", "unknown", 1, 0.5),
    ],
    Statistic.BY_UNCAC_ARTICLE: [("incoming", 46, 2), ("outgoing", 54, 1)],
    Statistic.BY_ASSISTANCE: [
        ("incoming", "documents-records", 1),
        ("incoming", "taking-evidence", 1),
        ("outgoing", "search-seizure-freezing", 1),
    ],
    Statistic.BY_OUTCOME: [
        ("incoming", "executed", 2),
        ("incoming", "pending", 1),
        ("incoming", "refused", 1),
        ("outgoing", "pending", 2),
    ],
    Statistic.BY_REFUSAL_GROUND: [("incoming", "46(21)(b)", 1), ("incoming", "no-dual-criminality", 1)],
    # a case counts under the officer assigned last: c1 olga, c2 olga then pete
    Statistic.BY_OFFICER: [
        ("incoming", "olga", 1),
        ("incoming", "pete", 1),
        ("incoming", "unassigned", 2),
        ("outgoing", "unassigned", 2),
    ],
    Statistic.BY_STATE: [
        ("incoming", "closed", 1),
        ("incoming", "executed", 1),
        ("incoming", "refused", 1),
        ("incoming", "under_review", 1),
        ("outgoing", "acknowledged", 1),
        ("outgoing", "sent", 1),
    ],
    Statistic.OPEN_CLOSED: [("incoming", "closed", 3), ("incoming", "open", 1), ("outgoing", "open", 2)],
    # incoming acknowledgements after 1, 3, 2 and 4 hours: median 2.5 h, p90 at 2.7 of 3 steps = 3.7 h
    Statistic.DURATIONS: [
        ("incoming", "acknowledge", 4, 9000.0, 13320.0),
        ("incoming", "first-answer", 2, 54000.0, 68400.0),
        ("incoming", "execution", 2, 270000.0, 342000.0),
        ("outgoing", "acknowledge", 1, 18000.0, 18000.0),
        ("outgoing", "first-answer", 0, None, None),
        ("outgoing", "execution", 0, None, None),
    ],
    Statistic.OVERDUE: [("incoming", 1, 1), ("outgoing", 0, 1)],
}


async def test_every_statistic_matches_the_hand_computed_figures(engine: AsyncEngine) -> None:
    assert set(EXPECTED) == set(Statistic)
    for statistic, expected in EXPECTED.items():
        assert await rows(engine, statistic) == expected, statistic


@pytest.mark.parametrize(
    ("query", "statistic", "expected"),
    [
        ({"direction": "incoming", "from": "2026"}, Statistic.BY_TYPE, [("incoming", "mla-criminal", 2)]),
        (
            {"offence": "23"},
            Statistic.BY_COUNTRY,
            [("incoming", "AR", 1), ("incoming", "BR", 1), ("outgoing", "AU", 1)],
        ),
        ({"state": "open"}, Statistic.BY_YEAR, [("incoming", 2026, 1), ("outgoing", 2025, 1), ("outgoing", 2026, 1)]),
        ({"state": "closed", "direction": "out"}, Statistic.BY_YEAR, []),
        # a filter on the table the statistic itself joins
        (
            {"offence": "23"},
            Statistic.BY_OFFENCE,
            [("incoming", "15", 1), ("incoming", "23", 2), ("outgoing", "23", 1)],
        ),
        ({"officer": "pete"}, Statistic.BY_OFFICER, [("incoming", "pete", 1)]),
        ({"officer": "olga"}, Statistic.BY_TYPE, [("incoming", "mla-criminal", 1)]),
        ({"officer": "nobody"}, Statistic.BY_TYPE, []),
        ({"legal_basis": "uncac", "to": "2025"}, Statistic.BY_COUNTERPART, [("incoming", "ar.mj", 1)]),
        (
            {"counterpart": "ar.mj", "type": "mla-criminal"},
            Statistic.BY_YEAR,
            [("incoming", 2025, 1), ("incoming", 2026, 2)],
        ),
        (
            {"country": "br"},
            Statistic.BY_REFUSAL_GROUND,
            [("incoming", "46(21)(b)", 1), ("incoming", "no-dual-criminality", 1)],
        ),
        ({"assistance": "search-seizure-freezing"}, Statistic.OVERDUE, [("incoming", 0, 0), ("outgoing", 0, 1)]),
        (
            {"from": "2025-03-02", "to": "2026-02-01"},
            Statistic.BY_COUNTERPART,
            [("incoming", "ar.mj", 1), ("incoming", "br.mjsp", 1), ("outgoing", "au.ag", 1)],
        ),
        (
            {"direction": "incoming", "from": "2026"},
            Statistic.DURATIONS,
            [
                ("incoming", "acknowledge", 2, 10800.0, 13680.0),
                ("incoming", "first-answer", 1, 72000.0, 72000.0),
                ("incoming", "execution", 1, 180000.0, 180000.0),
            ],
        ),
    ],
)
async def test_filters(
    engine: AsyncEngine, query: dict[str, str], statistic: Statistic, expected: list[tuple[Any, ...]]
) -> None:
    assert await rows(engine, statistic, parse_filters(query)) == expected


async def test_case_work_dates_count_as_overdue(engine: AsyncEngine) -> None:
    """An open case is overdue when a critical date or task of its case work is past due and not done."""
    baseline = [("incoming", 1, 1), ("outgoing", 0, 1)]
    assert await rows(engine, Statistic.OVERDUE) == baseline

    async def add(due: date, *, done: bool) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                insert(case_dates).values(
                    case_id="c5",
                    kind="deadline",
                    due=due,
                    created_by="user:olga",
                    created_at=T26,
                    done_at=T26 if done else None,
                    done_by="user:olga" if done else None,
                )
            )

    await add(TODAY - timedelta(days=3), done=True)  # done on time or late: nothing to chase
    assert await rows(engine, Statistic.OVERDUE) == baseline
    await add(TODAY + timedelta(days=3), done=False)  # coming up: a date to keep, not yet overdue
    assert await rows(engine, Statistic.OVERDUE) == [("incoming", 1, 1), ("outgoing", 0, 2)]
    await add(TODAY - timedelta(days=1), done=False)  # yesterday, not done: overdue
    assert await rows(engine, Statistic.OVERDUE) == [("incoming", 1, 1), ("outgoing", 1, 2)]
