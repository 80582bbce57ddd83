"""Migration 0014 keeps a received request's embargo date with its coded facets (decision 162): every statistic
leaves the case out until then."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from sqlalchemy import insert, select

from store.db import make_engine, run_migrations
from store.tables import case_stats, messages
from tests.store.test_migration_0008 import _message

T0 = datetime(2026, 11, 28, 7, 8, 9, tzinfo=UTC)


async def test_0014_keeps_the_embargo_of_received_requests_with_their_facets(db_url: str) -> None:
    await run_migrations(db_url, "0013")
    engine = make_engine(db_url)
    caveats = {
        "embargoed": ["embargo:2026-12-01", "embargo:2026-12-24", "uncac-46-20"],  # the latest of several holds
        "plain": [],
        "ours": ["embargo:2026-12-01"],  # our own request: the embargo binds the receiver's users, not ours
    }
    directions = {"embargoed": "in", "plain": "in", "ours": "out"}
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(messages),
                [
                    {**_message(name, directions[name], "au.ag", "request"), "marking_caveats": json.dumps(listed)}
                    for name, listed in caveats.items()
                ],
            )
            await conn.execute(
                insert(case_stats),
                [
                    {"case_id": name, "direction": directions[name], "counterpart": "au.ag", "country": "AU",
                     "opened_at": T0, "year": 2026, "urgent": False, "offences": 0, "assistance": 0,
                     "refusal_grounds": 0, "state": "received"}
                    for name in caveats
                ],
            )  # fmt: skip
        await run_migrations(db_url, "0014")
        async with engine.connect() as conn:
            hidden = dict((await conn.execute(select(case_stats.c.case_id, case_stats.c.hidden_until))).all())
    finally:
        await engine.dispose()
    assert hidden == {"embargoed": date(2026, 12, 24), "plain": None, "ours": None}
