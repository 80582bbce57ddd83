"""Two writers at once on one database: what PostgreSQL's row locks and read-committed reads allow, and SQLite's
one-writer-at-a-time does not show. Each test failed before the fix its docstring names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from crypto.note import MAX_SIGNATURES
from protocol.checkpoint import SERVED_COSIGNATURES
from store.accounts import user_by_name
from store.cases import Cases
from store.db import make_engine, run_migrations
from store.events import EventLog
from store.ledger import LedgerReader
from store.tables import cases, checkpoints, cosignatures, users
from store.tokens import Tokens

NOW = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
WITNESS = "comity-witness/au.ag"


async def _engine(url: str) -> AsyncEngine:
    await run_migrations(url)
    return make_engine(url)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await _engine(db_url)
    yield eng
    await eng.dispose()


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await _engine(pg_url)
    yield eng
    await eng.dispose()


async def test_a_cosignature_posted_twice_at_once_is_kept_once(engine: AsyncEngine) -> None:
    """A peer's retry racing its first post (or two of our replicas receiving both): the second finds the first
    and is a no-op. On PostgreSQL both used to find no row, and the second insert's key violation was a 500."""
    async with engine.begin() as conn:
        await conn.execute(insert(checkpoints).values(size=5, note="n\n", created_at=NOW))
    first_inserted, release_first = asyncio.Event(), asyncio.Event()

    async def first() -> bool:
        async with engine.begin() as conn:
            added = await LedgerReader.add_cosignature(conn, 5, WITNESS, "— first", NOW)
            first_inserted.set()
            await release_first.wait()
            return added

    async def second() -> bool:
        await first_inserted.wait()
        async with engine.begin() as conn:
            return await LedgerReader.add_cosignature(conn, 5, WITNESS, "— second", NOW)

    async def release_soon() -> None:
        await first_inserted.wait()
        await asyncio.sleep(0.3)  # the second now waits (PostgreSQL: on the key; SQLite: on BEGIN IMMEDIATE)
        release_first.set()

    results = await asyncio.gather(first(), second(), release_soon(), return_exceptions=True)
    assert list(results[:2]) == [True, False], results
    async with engine.connect() as conn:
        assert (await conn.execute(select(cosignatures.c.line))).scalars().all() == ["— first"]


async def test_two_consents_for_the_same_message_and_recipient_at_once_keep_the_first(engine: AsyncEngine) -> None:
    """Two replicas receiving two consents for one message and one recipient at once: each looked for a consent,
    found none and inserted, and the second's key violation became a final replayed-message refusal of a genuine
    consent. The insert now does nothing on a conflict."""
    from store.cases import Consents
    from store.tables import consents

    message = "0b0d8a3e-6c35-4c5d-9a4b-4f1c2b7d3e01"
    first_inserted, release_first = asyncio.Event(), asyncio.Event()

    async def record(consent_id: str, hold: bool) -> None:
        if not hold:
            await first_inserted.wait()
        async with engine.begin() as conn:
            await Consents.record(conn, message, "br.mjsp", "ar.mj", consent_id, NOW)
            if hold:
                first_inserted.set()
                await release_first.wait()

    async def release_soon() -> None:
        await first_inserted.wait()
        await asyncio.sleep(0.3)  # the second now waits (PostgreSQL: on the key; SQLite: on BEGIN IMMEDIATE)
        release_first.set()

    results = await asyncio.gather(record("c-1", True), record("c-2", False), release_soon(), return_exceptions=True)
    assert list(results) == [None, None, None], results
    async with engine.connect() as conn:
        assert (await conn.execute(select(consents.c.consent_message_id))).scalars().all() == ["c-1"]


async def test_a_login_and_a_group_commit_naming_the_same_user_do_not_deadlock(pg_engine: AsyncEngine) -> None:
    """A login locks its user's row, then appends to the ledger (the head's lock); a group commit holds the head and
    inserts a row naming that user, whose foreign-key check needs a key-share lock on the same row. With FOR UPDATE
    the orders crossed and PostgreSQL failed one of them (40P01); FOR NO KEY UPDATE leaves key-share locks alone."""
    async with pg_engine.begin() as conn:
        await conn.execute(insert(users).values(id=1, username="nina", role="officer", created_at=NOW))
        await conn.execute(insert(cases).values(id="c1", unit="", created_at=NOW))
    user_locked, head_locked = asyncio.Event(), asyncio.Event()

    async def login() -> str:  # store/logins.py, the transaction after the password was checked
        async with pg_engine.begin() as conn:
            user = await user_by_name(conn, "nina", lock=True)
            user_locked.set()
            await head_locked.wait()
            await Tokens.issue(conn, user, NOW, label="login", expires_at=NOW + timedelta(hours=8), actor="user:nina")
        return "login"

    async def group_commit() -> str:  # gateway/committer.py from the locked head, then an assignment of nina
        await user_locked.wait()
        async with pg_engine.begin() as conn:
            await EventLog(for_update=True).begin_batch(conn)
            head_locked.set()
            await asyncio.sleep(0.2)  # the login now waits for the head
            await Cases.assign(conn, "c1", 1, "user:sara", NOW, unit=None, replace=False)
        return "batch"

    results = await asyncio.wait_for(asyncio.gather(login(), group_commit(), return_exceptions=True), 30)
    assert list(results) == ["login", "batch"], results


async def test_a_checkpoint_is_served_with_the_first_fifteen_cosignatures_only(engine: AsyncEngine) -> None:
    """Decision 124: every counterpart that polls a checkpoint cosigns it, and a note of more than 100 signatures
    (crypto/note.py) opened nowhere, so an honest gateway's peers raised an alarm against it; C2SP verifiers need
    accept only 16. The first fifteen witnesses to cosign are served, in witness order, the same at every read."""
    async with engine.begin() as conn:
        await conn.execute(insert(checkpoints).values(size=5, note="n\n", created_at=NOW))
        for n in range(120):  # received in the reverse order of their names
            witness = f"comity-witness/w{119 - n:03d}"
            await LedgerReader.add_cosignature(conn, 5, witness, f"— {witness}", NOW + timedelta(seconds=n))
    async with engine.connect() as conn:
        ((size, note),) = await LedgerReader.checkpoint_notes(conn, 4, 10)
        assert await LedgerReader.latest_checkpoint_note(conn) == (size, note)
    assert size == 5 and note == "n\n" + "".join(f"— comity-witness/w{n:03d}\n" for n in range(105, 120))
    assert SERVED_COSIGNATURES + 1 <= MAX_SIGNATURES
