"""store.db: how the SQLite engines are set up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.context import HEAD_REVISION
from store.db import WAL_AUTOCHECKPOINT_PAGES, checkpoint_wal, make_engine, make_reader, run_migrations
from store.errors import StoreError
from store.facts import write_fact


@pytest.fixture
async def sqlite_engines(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """The writer engine and the reader pool of a migrated SQLite file ``tmp_path/comity.db``."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'comity.db'}"
    await run_migrations(url)
    engine = make_engine(url)
    reader = make_reader(url, engine)
    yield engine, reader
    await reader.dispose()
    await engine.dispose()


async def test_sqlite_writers_sync_every_commit_and_readers_cannot_write(
    sqlite_engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """A receipt or a checkpoint is signed once its transaction committed: the commit must survive a power loss
    (synchronous FULL in WAL mode; NORMAL may lose the last commits), or the peer holding them would see our
    ledger's history change after a crash."""
    engine, reader = sqlite_engines
    async with engine.connect() as conn:
        pragmas = [
            (await conn.execute(text(f"PRAGMA {name}"))).scalar_one()
            for name in ("journal_mode", "synchronous", "foreign_keys")
        ]
    assert pragmas == ["wal", 2, 1]  # synchronous 2 = FULL
    async with reader.connect() as conn:
        assert (await conn.execute(text("PRAGMA query_only"))).scalar_one() == 1
        with pytest.raises(Exception, match="readonly"):
            await conn.execute(text("DELETE FROM ledger_head"))


async def test_checkpoint_wal_copies_the_committed_frames_into_the_database(
    tmp_path: Path, sqlite_engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    engine, reader = sqlite_engines
    async with engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one() == WAL_AUTOCHECKPOINT_PAGES
    async with engine.begin() as conn:
        await write_fact(conn, "a fact", "x" * 20_000)
    busy, frames, done = await checkpoint_wal(reader)
    assert (busy, done) == (0, frames) and frames >= 5  # 20 kB: at least five 4 KiB pages
    assert b"x" * 4000 in (tmp_path / "comity.db").read_bytes()


@pytest.mark.postgres
async def test_postgresql_connections_ask_for_synchronous_commit_whatever_the_servers_default(pg_url: str) -> None:
    """The same guarantee on PostgreSQL: set by the connection itself (source 'client'), so a server or database
    configured with synchronous_commit off does not weaken it."""
    engine = make_engine(pg_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            query = text("SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'")
            assert tuple((await conn.execute(query)).one()) == ("on", "client")
            # and read committed: a transaction that waits for a lock reads what its holder committed
            query = text("SELECT setting, source FROM pg_settings WHERE name = 'default_transaction_isolation'")
            assert tuple((await conn.execute(query)).one()) == ("read committed", "client")
    finally:
        await engine.dispose()


async def test_the_migrations_make_the_schema_the_tables_describe(db_url: str) -> None:
    """Alembic's head and ``store/tables.py`` agree, indexes (partial ones included) and all: a gateway on an
    upgraded database has what the code expects."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from store.db import make_engine, run_migrations
    from store.tables import metadata

    await run_migrations(db_url)
    engine = make_engine(db_url)

    def diff(sync_conn: object) -> list[object]:
        context = MigrationContext.configure(sync_conn)  # type: ignore[arg-type]
        return list(compare_metadata(context, metadata))

    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_migrations_report_the_revision_reached_and_never_go_down(db_url: str) -> None:
    assert await run_migrations(db_url, "0012") == "0012"
    assert await run_migrations(db_url) == HEAD_REVISION
    assert await run_migrations(db_url, "head") == HEAD_REVISION  # again: nothing to do
    for lower in ("base", "0012", "0001"):
        with pytest.raises(StoreError, match=f"the database is at {HEAD_REVISION}, above '{lower}'"):
            await run_migrations(db_url, lower)
    with pytest.raises(StoreError, match="unknown revision '9999'"):
        await run_migrations(db_url, "9999")
    assert await run_migrations(db_url) == HEAD_REVISION  # nothing was changed


async def test_facts_are_read_by_a_literal_prefix(db_url: str) -> None:
    """read_facts takes the prefix as it is written: its '_' and '%' are not LIKE wildcards."""
    from store.facts import read_facts

    await run_migrations(db_url)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            for key, value in (("peer_keys:a", 1), ("peer_keys:b.c", {"k": 2}), ("peerXkeys:d", 3), ("peer_keys", 4)):
                await write_fact(conn, key, value)
        async with engine.connect() as conn:
            assert await read_facts(conn, "peer_keys:") == {"a": 1, "b.c": {"k": 2}}
            assert await read_facts(conn, "50%") == {}
    finally:
        await engine.dispose()
