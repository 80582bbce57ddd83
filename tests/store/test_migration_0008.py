"""Migration 0008 counts the request cases already there (without decrypting anything) and gives supervisors' and
auditors' ledger-reading tokens the new stats:read scope."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, select

from store.db import make_engine, run_migrations
from store.tables import case_assignments, case_stats, cases, messages, tokens, users

T0 = datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _message(message_id: str, direction: str, peer: str, kind: str) -> dict[str, object]:
    return {
        "id": message_id,
        "direction": direction,
        "peer": peer,
        "kind": kind,
        "marking_level": "CONFIDENTIAL",
        "marking_caveats": "[]",
        "state": "received",
        "sealed": b"jwe",
        "envelope_sha256": "0" * 64,
        "created_at": T0,
        "case_id": message_id,
    }


async def test_0008_backfills_request_cases_and_grants_stats_read(db_url: str) -> None:
    await run_migrations(db_url, "0005")
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            for name, role, scopes in (
                ("sam", "supervisor", "content:open ledger:read messages:read messages:write"),
                ("audrey", "auditor", "ledger:read messages:read"),
                ("narrow", "auditor", "messages:read"),
                ("olga", "officer", "content:open messages:read messages:write"),
            ):
                await conn.execute(insert(users).values(username=name, role=role, created_at=T0))
                user_id = (await conn.execute(select(users.c.id).where(users.c.username == name))).scalar_one()
                await conn.execute(
                    insert(tokens).values(
                        token_hash=name.ljust(64, "0"),
                        user_id=user_id,
                        label="t",
                        created_at=T0,
                        token_id=name,
                        scopes=scopes,
                    )
                )
            await conn.execute(insert(messages), [_message("r-in", "in", "ar.mj", "request")])
            await conn.execute(insert(messages), [_message("r-out", "out", "br.mjsp", "request")])
            await conn.execute(insert(messages), [_message("note", "in", "ar.mj", "note")])
            await conn.execute(
                insert(cases),
                [
                    {"id": "r-in", "created_at": T0, "state": "under_review", "request_type": "extradition"},
                    {"id": "r-out", "created_at": T0, "state": "sent", "request_type": None},
                    {"id": "note", "created_at": T0, "state": None, "request_type": None},
                ],
            )
            await conn.execute(
                insert(case_assignments),
                [
                    {"case_id": "r-in", "user_id": 4, "assigned_by": "user:sam", "assigned_at": T0},
                    {"case_id": "r-in", "user_id": 1, "assigned_by": "user:sam", "assigned_at": T0.replace(hour=9)},
                ],
            )
        await run_migrations(db_url)
        async with engine.connect() as conn:
            rows = {row.case_id: row for row in await conn.execute(select(case_stats))}
            granted = {row.token_id: set(row.scopes.split()) for row in await conn.execute(select(tokens))}
    finally:
        await engine.dispose()
    assert set(rows) == {"r-in", "r-out"}  # a case without a life cycle was not opened by a request
    incoming, outgoing = rows["r-in"], rows["r-out"]
    assert (incoming.direction, incoming.counterpart, incoming.country, incoming.year) == ("in", "ar.mj", "AR", 2025)
    assert (incoming.request_type, incoming.state, incoming.officer_id) == ("extradition", "under_review", 1)
    assert incoming.opened_at == incoming.start_at == T0
    assert (outgoing.direction, outgoing.country, outgoing.start_at, outgoing.officer_id) == ("out", "BR", None, None)
    assert (incoming.offences, incoming.legal_basis, incoming.acknowledged_at) == (0, None, None)
    assert "stats:read" in granted["sam"] and "stats:read" in granted["audrey"]
    assert granted["narrow"] == {"messages:read"} and "stats:read" not in granted["olga"]
