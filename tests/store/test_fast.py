"""store.fast: the hot path writes the same rows as SQLAlchemy would, inside the caller's transaction, or not at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store import fast
from store.db import is_sqlite, make_engine, make_reader, run_migrations
from store.tables import case_stats, cases, checkpoints

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
INSERT = insert(checkpoints)


def row(size: int) -> dict[str, object]:
    return {"size": size, "note": f"note {size}", "created_at": NOW}


async def stored(engine: AsyncEngine) -> dict[int, tuple[str, datetime]]:
    async with engine.connect() as conn:
        return {r.size: (r.note, r.created_at) for r in await conn.execute(select(checkpoints))}


@asynccontextmanager
async def begun(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction SQLAlchemy has begun on the driver (its first statement sent): where the hot path applies."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT 1"))
        yield conn


async def change_note_of_size_2(conn: AsyncConnection) -> int:
    """The hot path's UPDATE (a SQLAlchemy one where it does not apply): how many rows it changed."""
    return await fast.execute(
        conn,
        "UPDATE checkpoints SET note = $1 WHERE size = $2",
        ("changed", 2),
        checkpoints.update().where(checkpoints.c.size == 2).values(note="changed"),
        {},
    )


async def insert_in_transaction(engine: AsyncEngine, values: dict[str, object], *, fail: bool = False) -> None:
    async with begun(engine) as conn:
        await fast.insert(conn, checkpoints, values, INSERT)
        if fail:
            raise RuntimeError("abort")


async def test_rows_land_inside_the_callers_transaction(engine: AsyncEngine) -> None:
    async with begun(engine) as conn:
        await fast.insert(conn, checkpoints, row(1), INSERT)
        await fast.insert_many(conn, checkpoints, [row(2), row(3)], INSERT)
        assert await change_note_of_size_2(conn) == 1
    assert await stored(engine) == {1: ("note 1", NOW), 2: ("changed", NOW), 3: ("note 3", NOW)}

    # a rollback takes the hot path's rows with it: they were in the transaction
    with pytest.raises(RuntimeError):
        await insert_in_transaction(engine, row(4), fail=True)
    assert set(await stored(engine)) == {1, 2, 3}


async def test_a_duplicate_is_sqlalchemys_integrity_error(engine: AsyncEngine) -> None:
    await insert_in_transaction(engine, row(1))
    with pytest.raises(IntegrityError):
        await insert_in_transaction(engine, row(1))


async def test_a_naive_datetime_is_refused(engine: AsyncEngine) -> None:
    naive = {**row(1), "created_at": NOW.replace(tzinfo=None)}
    with pytest.raises(Exception, match="naive datetime"):  # ValueError, or SQLAlchemy's StatementError
        await insert_in_transaction(engine, naive)
    assert await stored(engine) == {}


async def test_outside_a_transaction_the_sqlalchemy_statement_runs(db_url: str, engine: AsyncEngine) -> None:
    """Before SQLAlchemy's first statement (or in autocommit) the driver is not in a transaction: the fallback runs,
    so a write never commits on its own behind the caller's back."""
    postgresql = not is_sqlite(db_url)
    async with engine.begin() as conn:
        if postgresql:
            assert await fast._driver(conn) is None  # nothing sent yet: no transaction on the driver
        await fast.insert(conn, checkpoints, row(1), INSERT)
        if postgresql:
            assert await fast._driver(conn) is not None  # the fallback began it
        await conn.rollback()
    assert await stored(engine) == {}
    if postgresql:
        async with make_reader(db_url, engine).connect() as conn:
            assert await fast._driver(conn) is None  # the autocommit reader never takes the hot path


async def test_fetch_row_returns_the_row_by_column_name_on_both_paths(db_url: str, engine: AsyncEngine) -> None:
    """An UPDATE ... RETURNING inside a transaction and a read on the autocommit reader give the same mapping as
    SQLAlchemy's statement would; no row is None."""
    update_sql = "UPDATE checkpoints SET note = $1 WHERE size = $2 RETURNING size, note, created_at"
    update_stmt = (
        checkpoints.update()
        .where(checkpoints.c.size == bindparam("b_size"))
        .values(note=bindparam("b_note"))
        .returning(checkpoints.c.size, checkpoints.c.note, checkpoints.c.created_at)
    )
    read_sql = "SELECT size, note, created_at FROM checkpoints WHERE size = $1"
    read_stmt = select(checkpoints.c.size, checkpoints.c.note, checkpoints.c.created_at).where(
        checkpoints.c.size == bindparam("b_size")
    )
    await insert_in_transaction(engine, row(1))
    async with begun(engine) as conn:
        changed = await fast.fetch_row(
            conn, update_sql, ("changed", 1), update_stmt, {"b_size": 1, "b_note": "changed"}
        )
        missing = await fast.fetch_row(conn, update_sql, ("x", 9), update_stmt, {"b_size": 9, "b_note": "x"})
    assert changed == {"size": 1, "note": "changed", "created_at": NOW}
    assert missing is None
    async with make_reader(db_url, engine).connect() as conn:
        read = await fast.fetch_row(conn, read_sql, (1,), read_stmt, {"b_size": 1}, read=True)
        if not is_sqlite(db_url):
            assert await fast._driver(conn, read=True) is not None  # a read takes the hot path in autocommit
        absent = await fast.fetch_row(conn, read_sql, (2,), read_stmt, {"b_size": 2}, read=True)
    assert read == {"size": 1, "note": "changed", "created_at": NOW}
    assert read is not None and read["created_at"].utcoffset() is not None
    assert absent is None


# -- rows queued on PostgreSQL (written before the next statement, at COMMIT, or with execute_direct) ------------

CASE_ROW = {"id": "case-1", "unit": None, "created_at": NOW, "state": "received", "request_type": None}


def stats_row(case_id: str) -> dict[str, object]:
    return {
        "case_id": case_id,
        "direction": "in",
        "counterpart": "ar.mj",
        "country": "AR",
        "opened_at": NOW,
        "year": 2026,
        "urgent": False,
        "offences": 0,
        "assistance": 0,
        "refusal_grounds": 0,
        "state": "received",
    }


async def test_a_queued_row_is_seen_by_the_next_statement_whichever_path_it_takes(
    db_url: str, engine: AsyncEngine
) -> None:
    queued = 0 if is_sqlite(db_url) else 1  # SQLite inserts at once
    async with begun(engine) as conn:
        await fast.insert(conn, checkpoints, row(1), INSERT)
        assert fast.pending_rows(conn) == queued
        # a SQLAlchemy read sees it (the engine event wrote the queue first)
        assert (await conn.execute(select(checkpoints.c.size))).scalars().all() == [1]
        assert fast.pending_rows(conn) == 0
        await fast.insert(conn, checkpoints, row(2), INSERT)
        # and so does an UPDATE through the hot path
        assert await change_note_of_size_2(conn) == 1
        await fast.insert(conn, checkpoints, row(3), INSERT)  # written at COMMIT, with nothing after it
    assert await stored(engine) == {1: ("note 1", NOW), 2: ("changed", NOW), 3: ("note 3", NOW)}


async def test_queued_rows_go_with_a_rollback_and_never_reach_the_next_transaction(db_url: str) -> None:
    await run_migrations(db_url)
    engine = make_engine(db_url, pool_size=1)  # the next transaction gets the same connection
    try:
        with pytest.raises(RuntimeError):
            await insert_in_transaction(engine, row(1), fail=True)
        await insert_in_transaction(engine, row(2))
        assert set(await stored(engine)) == {2}
    finally:
        await engine.dispose()


async def test_a_queued_duplicate_fails_the_transaction_when_the_queue_is_written(engine: AsyncEngine) -> None:
    await insert_in_transaction(engine, row(1))

    async def queue_a_duplicate() -> None:
        async with begun(engine) as conn:
            await fast.insert(conn, checkpoints, row(2), INSERT)
            await fast.insert(conn, checkpoints, {**row(1), "note": "again"}, INSERT)

    with pytest.raises(IntegrityError):
        await queue_a_duplicate()
    assert await stored(engine) == {1: ("note 1", NOW)}  # row 2 went with the failed transaction


async def test_execute_direct_writes_the_queue_in_its_own_statement_children_before_parents(
    db_url: str, engine: AsyncEngine
) -> None:
    """case_stats refers to cases: queued child first, both land, because the constraint is checked at the end of
    the one statement."""
    async with begun(engine) as conn:
        child = (case_stats, stats_row("case-1"), insert(case_stats))
        parent = (cases, CASE_ROW, insert(cases))
        # SQLite inserts at once and checks the reference there: the parent has to come first
        for table, values, fallback in (parent, child) if is_sqlite(db_url) else (child, parent):
            await fast.insert(conn, table, values, fallback)
        ran = await fast.execute_direct(
            conn,
            lambda first, _: ((), f"UPDATE checkpoints SET note = ${first} WHERE size = 0"),  # noqa: S608
            ["x"],
        )
        assert (ran is None) is is_sqlite(db_url)  # PostgreSQL: ran, and returned no row
        assert is_sqlite(db_url) or ran == {}
        assert fast.pending_rows(conn) == 0
    async with engine.connect() as conn:
        assert (await conn.execute(select(case_stats.c.case_id))).scalars().all() == ["case-1"]
        assert (await conn.execute(select(cases.c.id))).scalars().all() == ["case-1"]


async def test_a_rollback_to_a_savepoint_drops_only_what_was_queued_after_it(engine: AsyncEngine) -> None:
    async with begun(engine) as conn:
        await fast.insert(conn, checkpoints, row(1), INSERT)  # before the savepoint: kept
        savepoint = await conn.begin_nested()
        await fast.insert(conn, checkpoints, row(2), INSERT)  # inside it: rolled back with it
        await savepoint.rollback()
        await fast.insert(conn, checkpoints, row(3), INSERT)
    assert set(await stored(engine)) == {1, 3}


async def test_a_transaction_cancelled_mid_statement_raises_the_cancellation(db_url: str, engine: AsyncEngine) -> None:
    """Cancelling invalidates the connection; rolling back must not then fail in its own right (a PendingRollbackError
    would replace the CancelledError, and a loop catching Exception would carry on instead of stopping)."""
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000) SELECT count(*) FROM c"
        if is_sqlite(db_url)
        else "SELECT pg_sleep(10)"
    )
    started = asyncio.Event()

    async def work() -> None:
        async with begun(engine) as conn:
            await fast.insert(conn, checkpoints, row(1), INSERT)
            started.set()
            await conn.execute(text(slow))

    task = asyncio.create_task(work())
    await started.wait()
    await asyncio.sleep(0.05)  # the slow statement is running (SQLite: about a second in its thread)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if not is_sqlite(db_url):
        # (SQLite: the cancelled connection keeps the file's write lock until it is closed, so the read would
        # wait for it; nothing is queued there, the insert ran at once and is rolled back with the connection)
        assert await stored(engine) == {}


async def test_a_queued_value_longer_than_its_column_is_never_cut(db_url: str, engine: AsyncEngine) -> None:
    """cases.id is VARCHAR(36): PostgreSQL refuses 40 characters (a cast of the queued array must not cut them);
    SQLite does not enforce lengths and keeps the value whole."""
    long_id = "c" * 40

    async def queue_it() -> None:
        async with begun(engine) as conn:
            await fast.insert(conn, cases, {**CASE_ROW, "id": long_id}, insert(cases))

    if is_sqlite(db_url):
        await queue_it()
    else:
        with pytest.raises(Exception, match="too long"):
            await queue_it()
    async with engine.connect() as conn:
        ids = (await conn.execute(select(cases.c.id))).scalars().all()
    assert ids == ([long_id] if is_sqlite(db_url) else [])


# -- group(): the group commit runs the transaction itself (PostgreSQL) -------------------------------------------


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def update_note(note: str, size: int) -> fast.Tail:
    return lambda first, _: ((), f"UPDATE checkpoints SET note = ${first} WHERE size = {size}")  # noqa: S608


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    await run_migrations(pg_url)
    migrated = make_engine(pg_url, pool_size=2)  # LIFO: the next user gets the connection the group returned
    yield migrated
    await migrated.dispose()


async def test_a_group_runs_on_postgresql_only(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'comity.db'}"
    await run_migrations(url)
    sqlite = make_engine(url)
    try:
        with pytest.raises(ValueError, match="PostgreSQL"):
            async with fast.group(autocommit(sqlite)):
                pass
    finally:
        await sqlite.dispose()


async def test_a_group_that_only_queued_rows_is_one_statement_without_begin_or_commit(
    pg_engine: AsyncEngine, asyncpg_statements: list[str]
) -> None:
    engine, sent = pg_engine, asyncpg_statements
    async with fast.group(autocommit(engine)) as conn:
        await fast.insert(conn, checkpoints, row(1), INSERT)
        await fast.insert(conn, checkpoints, row(2), INSERT)
        assert await fast.execute_direct(conn, update_note("x", 2), ["changed"]) == {}
        # that statement was the whole transaction: nothing may follow it, not even a row to queue
        with pytest.raises(fast.GroupEnded):
            await fast.execute(conn, "SELECT 1", (), select(checkpoints.c.size), {})
        with pytest.raises(fast.GroupEnded):
            await fast.insert(conn, checkpoints, row(3), INSERT)
    assert sent == ["WITH q0"]
    # its own UPDATE ran on the snapshot before the queued rows, so it changed nothing: the rows are as queued
    assert await stored(engine) == {1: ("note 1", NOW), 2: ("note 2", NOW)}


async def test_a_group_begins_at_its_first_statement_and_commits_on_leaving(
    pg_engine: AsyncEngine, asyncpg_statements: list[str]
) -> None:
    engine, sent = pg_engine, asyncpg_statements
    async with fast.group(autocommit(engine)) as conn:
        await fast.insert(conn, checkpoints, row(1), INSERT)
        assert sent == []  # queued, nothing sent
        # a SQLAlchemy statement: the group begins, then writes the queue, so the read sees the row
        assert (await conn.execute(select(checkpoints.c.size))).scalars().all() == [1]
        await fast.insert(conn, checkpoints, row(2), INSERT)
        assert await fast.execute_direct(conn, update_note("x", 1), ["changed"]) == {}
        # inside the transaction, before COMMIT: another connection sees nothing yet
        assert await stored(engine) == {}
    assert sent == ["BEGIN", "WITH q0", "WITH q0", "COMMIT"]
    assert await stored(engine) == {1: ("changed", NOW), 2: ("note 2", NOW)}


@pytest.mark.parametrize("first", ["sqlalchemy", "fast"])
async def test_a_failed_group_leaves_nothing_and_its_connection_clean(pg_engine: AsyncEngine, first: str) -> None:
    engine = pg_engine
    with pytest.raises(RuntimeError, match="a unit failed"):  # noqa: PT012 - the group is the unit
        async with fast.group(autocommit(engine)) as conn:
            await fast.insert(conn, checkpoints, row(1), INSERT)
            if first == "sqlalchemy":
                await conn.execute(select(checkpoints.c.size))
            else:
                await fast.execute(conn, "SELECT 1", (), select(checkpoints.c.size), {})
            raise RuntimeError("a unit failed")
    assert await stored(engine) == {}
    await insert_in_transaction(engine, row(2))  # the connection is back in the pool, outside a transaction
    assert set(await stored(engine)) == {2}


@pytest.mark.parametrize("through", ["sqlalchemy", "fast"])
async def test_a_group_cancelled_mid_statement_closes_its_connection(pg_engine: AsyncEngine, through: str) -> None:
    """Cancelled inside a statement, whether SQLAlchemy sent it (and invalidated the connection itself) or the group
    sent it to asyncpg (SQLAlchemy never sees it): nothing is written, and no connection goes back to the pool
    inside a transaction."""
    engine = pg_engine
    started = asyncio.Event()

    async def work() -> None:
        async with fast.group(autocommit(engine)) as conn:
            await fast.insert(conn, checkpoints, row(1), INSERT)
            started.set()
            if through == "sqlalchemy":
                await conn.execute(text("SELECT pg_sleep(10)"))
            else:
                await fast.execute(conn, "SELECT pg_sleep(10)", (), select(checkpoints.c.size), {})

    task = asyncio.create_task(work())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await stored(engine) == {}
    for size in (2, 3):  # both pooled connections are usable, outside a transaction
        await insert_in_transaction(engine, row(size))
    assert set(await stored(engine)) == {2, 3}
