"""The consultation repository on both backends: a thread converts once, lists follow assignment and unit, the
threads on record for a case, draft checklists; and migration 0007 builds exactly the tables the metadata declares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from protocol.messages import Marking, new_message_id
from store.cases import Cases
from store.consultations import Consultations, DraftChecks
from store.db import make_engine, run_migrations
from store.errors import NotFound
from store.messages import Messages
from store.tables import case_assignments, metadata, users
from store.users import User


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await run_migrations(db_url)
    created = make_engine(db_url)
    try:
        yield created
    finally:
        await created.dispose()


MARKING = Marking(level="CONFIDENTIAL", caveats=["uncac-46-20"])


async def test_a_thread_converts_once_and_is_listed_by_assignment_and_unit(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    assigned, unassigned, case_id, request_id = (new_message_id() for _ in range(4))
    people: dict[str, User] = {}
    async with engine.begin() as conn:
        for name, role, unit in [
            ("olga", "officer", "mla"),
            ("otto", "officer", "mla"),
            ("sam", "supervisor", "mla"),
            ("sue", "supervisor", "ext"),
            ("audrey", "auditor", ""),
        ]:
            row = await conn.execute(insert(users).values(username=name, role=role, created_at=now, unit=unit))
            assert row.inserted_primary_key is not None
            people[name] = User(id=row.inserted_primary_key[0], username=name, role=role, unit=unit)
        for thread_id, case_unit, about in ((assigned, "mla", case_id), (unassigned, None, None)):
            await Cases.create(conn, thread_id, case_unit, now)
            await Messages.insert(
                conn,
                id=thread_id,
                direction="in",
                peer="au.ag",
                kind="consultation",
                in_reply_to=None,
                marking=MARKING,
                state="received",
                sealed=b"sealed",
                envelope_sha256="0" * 64,
                created_at=now,
                case_id=thread_id,
            )
            await Consultations.create(
                conn, thread_id, peer="au.ag", direction="in", about_case_id=about, created_by=None, now=now
            )
        await conn.execute(
            insert(case_assignments).values(
                case_id=assigned, user_id=people["olga"].id, assigned_by="sam", assigned_at=now
            )
        )
        await DraftChecks.record(conn, assigned, assigned, "mla-criminal", ("46(15)(c)",), ("46(24)",))

    async with engine.begin() as conn:
        assert await Consultations.convert(conn, assigned, request_id, now)
    async with engine.begin() as conn:
        assert not await Consultations.convert(conn, assigned, new_message_id(), now)  # once only

    async with engine.connect() as conn:
        thread = await Consultations.get(conn, assigned)
        assert (thread.state, thread.converted_request_id, thread.unit, thread.marking) == (
            "converted",
            request_id,
            "mla",
            MARKING,
        )

        async def listed(name: str) -> set[str]:
            return {t.id for t in await Consultations.visible_to(conn, people[name], limit=10, offset=0)}

        assert await listed("olga") == {assigned}
        assert await listed("otto") == set()
        assert await listed("sam") == {assigned, unassigned}
        assert await listed("sue") == {unassigned}
        assert await listed("audrey") == {assigned, unassigned}
        narrowed = await Consultations.visible_to(conn, people["sam"], limit=10, offset=0, about=case_id)
        assert [t.id for t in narrowed] == [assigned]
        opened = await Consultations.visible_to(conn, people["sam"], limit=10, offset=0, state="open")
        assert [t.id for t in opened] == [unassigned]
        # on record for the case it is about, and for the request it became; with that peer only
        assert [t.id for t in await Consultations.about_case(conn, case_id, "au.ag")] == [assigned]
        assert [t.id for t in await Consultations.about_case(conn, request_id, "au.ag")] == [assigned]
        assert await Consultations.about_case(conn, case_id, "br.mjsp") == []
        checks = await DraftChecks.for_thread(conn, assigned)
        assert (checks[assigned].blocking, checks[assigned].warnings) == (("46(15)(c)",), ("46(24)",))
        assert [row.id for row in await Consultations.thread_messages(conn, assigned)] == [assigned]
        with pytest.raises(NotFound):
            await Consultations.get(conn, case_id)


async def test_migration_0007_builds_the_declared_consultation_tables(engine: AsyncEngine) -> None:
    def differences(conn: Connection) -> list[Any]:
        found = compare_metadata(MigrationContext.configure(conn), metadata)
        return [diff for diff in found if "consultation" in str(diff)]

    async with engine.connect() as conn:
        assert await conn.run_sync(differences) == []
