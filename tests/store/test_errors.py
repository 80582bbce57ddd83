"""Database failures: SQLAlchemy's error for a failed statement does not list the values it was given (what a
driver says itself never reaches a log line: tests/gateway/test_logs_no_secrets.py), and a failing database is told
apart from a failing request (``store.errors.is_transient``), with the real errors of each backend and of the hot
path."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.cli.runtime import _SQLITE_WORKER
from gateway.coalesce import LookupFailed
from store import fast
from store.db import make_engine, make_reader
from store.errors import is_transient
from store.tables import case_dates
from tests.conftest import PG_ADMIN_DSN


async def test_a_failed_statement_does_not_quote_the_values_it_was_given(engine: AsyncEngine) -> None:
    note = f"canary {uuid.uuid4().hex}"  # a case note is an officer's free text
    row = {"case_id": "no-such-case", "kind": "deadline", "due": date(2027, 1, 1), "note": note}
    row |= {"created_by": "alice", "created_at": datetime(2026, 11, 28, tzinfo=UTC)}
    with pytest.raises(IntegrityError) as caught:
        async with engine.begin() as conn:
            await conn.execute(insert(case_dates).values(**row))
    assert note not in str(caught.value) and note not in repr(caught.value)
    assert "no-such-case" not in str(caught.value)
    assert not is_transient(caught.value)  # the request's fault: retrying it changes nothing


async def test_a_statement_in_error_is_not_transient(engine: AsyncEngine) -> None:
    with pytest.raises(DBAPIError) as caught:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_transient(caught.value)
    assert not is_transient(ValueError("not a database error"))


async def test_a_database_that_is_not_there_is_transient(engine: AsyncEngine, tmp_path: Path) -> None:
    if engine.dialect.name == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'comity.db'}"  # its disk went away
    else:
        url = "postgresql+asyncpg://postgres@127.0.0.1:1/test"  # nothing listens there
    gone = make_engine(url)
    reader = make_reader(url, gone)
    before = set(threading.enumerate())
    try:
        for each in (gone, reader):
            with pytest.raises(Exception) as caught:  # noqa: PT011 - each driver raises its own kind
                async with each.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            assert is_transient(caught.value), repr(caught.value)
            # and an error raised from it (a coalesced lookup's, gateway/coalesce.py)
            failed = LookupFailed("the lookup failed")
            failed.__cause__ = caught.value
            assert is_transient(failed)
        assert not is_transient(LookupFailed("no cause"))
    finally:
        await reader.dispose()
        await gone.dispose()
        # aiosqlite answers a failed connection's stop from its own thread, later: wait for it while this test's
        # loop still runs (else "Event loop is closed" in that thread; gateway/cli/runtime.py does the same)
        for thread in set(threading.enumerate()) - before:
            if thread.name.endswith(_SQLITE_WORKER):
                await asyncio.to_thread(thread.join, 1.0)


async def test_a_lost_or_locked_database_is_transient(engine: AsyncEngine) -> None:
    if engine.dialect.name == "sqlite":
        # another process holds the write lock longer than this writer waits: "database is locked"
        path = str(engine.url.database)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        impatient = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0})
        try:
            with pytest.raises(DBAPIError) as caught:
                async with impatient.begin() as conn:
                    await conn.execute(text("DELETE FROM case_dates"))
            assert is_transient(caught.value), repr(caught.value)
        finally:
            holder.rollback()
            holder.close()
            await impatient.dispose()
        return

    # PostgreSQL: the server ends the connection under us (a restart, a failover, an operator), once through
    # SQLAlchemy and once on the hot path, which talks to asyncpg itself
    async def terminate(pid: int) -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            for _ in range(200):  # until it has gone (it ends asynchronously)
                if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                    break
                await asyncio.sleep(0.01)
        finally:
            await admin.close()

    async def through_sqlalchemy() -> None:
        async with engine.connect() as conn:
            await terminate((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await conn.execute(text("SELECT 1"))

    async def on_the_hot_path() -> None:
        async with fast.group(engine.execution_options(isolation_level="AUTOCOMMIT")) as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            await terminate(driver.get_server_pid())
            # until asyncpg has seen the socket close: a statement sent in that instant can meet the protocol's
            # own state machine mid-teardown (InternalClientError, "cannot switch to state"), not the lost server
            for _ in range(100):
                if driver.is_closed():
                    break
                await asyncio.sleep(0.01)
            await fast.fetch_rows(conn, "SELECT 1", [], text("SELECT 1"), {})

    with pytest.raises(DBAPIError) as caught:
        await through_sqlalchemy()
    assert is_transient(caught.value), repr(caught.value)

    with pytest.raises(Exception) as raw:  # noqa: PT011 - asyncpg's own error, whichever it is
        await on_the_hot_path()
    assert not isinstance(raw.value, DBAPIError)
    assert isinstance(raw.value, asyncpg.PostgresError | asyncpg.InterfaceError | OSError)
    assert is_transient(raw.value), repr(raw.value)
    # asyncpg's misuse errors are the code's fault, whatever the connection: retrying them would fail forever
    assert is_transient(asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"))
    assert not is_transient(asyncpg.InterfaceError("cannot perform operation: another operation is in progress"))
    assert not is_transient(asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress"))
    assert not is_transient(asyncpg.ProtocolViolationError("bind message supplies 1 parameters, but requires 2"))
