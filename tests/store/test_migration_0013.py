"""Migration 0013 gives a unit to every case someone of ours assigned or opened (decision 115): the users without a
unit are the empty unit; only an incoming case nobody was assigned yet keeps none (triage)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import insert, select

from store.db import make_engine, run_migrations
from store.tables import case_assignments, case_dates, cases, ledger_entries, messages, oral_requests, users
from tests.store.test_migration_0008 import _message

T0 = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


async def test_0013_gives_the_empty_unit_to_our_cases_without_one(db_url: str) -> None:
    await run_migrations(db_url, "0012")
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(users).values(id=1, username="nina", role="officer", created_at=T0))
            await conn.execute(
                insert(cases),
                [
                    {"id": "triage", "unit": None, "created_at": T0},
                    {"id": "unit-less", "unit": None, "created_at": T0},
                    {"id": "of-mla", "unit": "mla", "created_at": T0},
                    {"id": "sent", "unit": None, "created_at": T0},  # its officer was taken off it since
                    {"id": "oral", "unit": None, "created_at": T0},
                    {"id": "was-assigned", "unit": None, "created_at": T0},  # by a supervisor without a unit
                    {"id": "adopted", "unit": None, "created_at": T0},  # an incoming thread about a case in triage
                    {"id": "thread", "unit": None, "created_at": T0},  # an incoming thread about "sent"
                ],
            )
            await conn.execute(
                insert(ledger_entries),
                [
                    # its officer was taken off it since; the system's adoption of a thread assigns nobody
                    {"idx": idx, "entry": json.dumps({"actor": actor, "related_id": about}).encode(),
                     "message_id": case_id, "type": "case.assigned", "time": T0}
                    for idx, (case_id, actor, about) in enumerate(
                        [("was-assigned", "user:sara", None), ("adopted", "system", "triage"),
                         ("thread", "system", "sent")]
                    )
                ],
            )  # fmt: skip
            await conn.execute(
                insert(messages),
                [_message("triage", "in", "au.ag", "request"), _message("sent", "out", "au.ag", "request")],
            )
            task = {"case_id": "oral", "kind": "confirm-in-writing", "due": T0.date(), "created_by": "nina"}
            await conn.execute(insert(case_dates).values(id=7, created_at=T0, **task))
            await conn.execute(
                insert(oral_requests).values(
                    case_id="oral", peer="au.ag", direction="in", oral_on=T0.date(), marking_level="CONFIDENTIAL",
                    marking_caveats="[]", task_id=7,
                )
            )  # fmt: skip
            await conn.execute(
                insert(case_assignments),
                [
                    {"case_id": case_id, "user_id": 1, "assigned_by": "user:sara", "assigned_at": T0}
                    for case_id in ("unit-less", "of-mla")
                ],
            )
        await run_migrations(db_url, "0013")
        async with engine.connect() as conn:
            units = dict((await conn.execute(select(cases.c.id, cases.c.unit))).all())
    finally:
        await engine.dispose()
    assert units == {
        "triage": None,
        "unit-less": "",
        "of-mla": "mla",
        "sent": "",
        "oral": "",
        "was-assigned": "",
        "adopted": None,
        "thread": "",  # the unit its case has now
    }
