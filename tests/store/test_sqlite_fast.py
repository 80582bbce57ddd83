"""store.sqlite_fast: on SQLite the hot path's statements skip SQLAlchemy's machinery and store what it would store."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select, update
from sqlalchemy.exc import IntegrityError, NoResultFound, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from store import fast, sqlite_fast
from store import tokens as tokens_module
from store.case_stats import CaseStats
from store.db import make_engine, make_reader, run_migrations
from store.errors import transient_cause
from store.events import EventLog
from store.messages import Messages
from store.tables import case_stats, checkpoints
from store.tokens import Tokens, hash_token
from store.users import Users

NOW = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)
MIDNIGHT = datetime(2026, 12, 1, tzinfo=UTC)  # no microseconds: stored as "2026-12-01 00:00:00.000000" all the same


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'comity.db'}"
    await run_migrations(url)
    engine = make_engine(url)
    yield engine
    await engine.dispose()


@pytest.fixture
def statements(lite: AsyncEngine) -> list[str]:
    """What SQLAlchemy sent (the hot path's own statements never pass through it)."""
    seen: list[str] = []

    @event.listens_for(lite.sync_engine, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    return seen


def stats_row(case_id: str, *, at: datetime = NOW) -> dict[str, object]:
    """Every kind of column the hot path writes: text, a tz-aware time, a date, a boolean, integers, NULL."""
    return {
        "case_id": case_id,
        "direction": "out",
        "counterpart": "au.ag",
        "country": "AU",
        "opened_at": at,
        "year": 2026,
        "legal_basis": None,
        "urgent": True,
        "offences": 5,
        "assistance": 0,
        "refusal_grounds": 0,
        "deadline": date(2027, 1, 31),
        "state": "sent",
    }


def raw_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


@pytest.mark.parametrize("at", [NOW, MIDNIGHT], ids=["microseconds", "a-whole-second"])
async def test_inserts_skip_sqlalchemy_and_store_exactly_what_it_stores(
    tmp_path: Path, lite: AsyncEngine, statements: list[str], at: datetime
) -> None:
    # a time in another offset: both paths must store it as the same UTC text, or SQL comparisons would differ
    # (SQLite compares these as text: "...00:00:00" sorts before "...00:00:00.000000")
    other_offset = at.astimezone(timezone(timedelta(hours=5)))
    async with lite.begin() as conn:
        await conn.execute(insert(case_stats), stats_row("by-sqlalchemy", at=other_offset))
        before = len(statements)
        await fast.insert(conn, case_stats, stats_row("by-hot-path", at=other_offset), insert(case_stats))
        await fast.insert_many(
            conn, checkpoints, [{"size": n, "note": f"n{n}", "created_at": at} for n in (1, 2)], insert(checkpoints)
        )
        assert statements[before:] == []  # neither insert went through SQLAlchemy

    rows = raw_rows(tmp_path / "comity.db", "SELECT * FROM case_stats ORDER BY case_id")
    assert [row[1:] for row in rows[:1]] == [row[1:] for row in rows[1:]]  # all but the key: byte for byte
    async with lite.connect() as conn:
        read = (await conn.execute(select(case_stats).where(case_stats.c.case_id == "by-hot-path"))).one()
        assert (read.opened_at, read.deadline, read.urgent, read.legal_basis) == (at, date(2027, 1, 31), True, None)
        assert (await conn.execute(select(checkpoints.c.size, checkpoints.c.created_at))).all() == [(1, at), (2, at)]
        # and SQL finds both rows on the same side of the time (the statistics' periods compare this way)
        since = select(case_stats.c.case_id).where(case_stats.c.opened_at >= at).order_by(case_stats.c.case_id)
        assert (await conn.execute(since)).scalars().all() == ["by-hot-path", "by-sqlalchemy"]


async def test_updates_skip_sqlalchemy_unless_their_text_is_postgresqls_own(
    tmp_path: Path, lite: AsyncEngine, statements: list[str]
) -> None:
    later = MIDNIGHT
    async with lite.begin() as conn:
        await fast.insert_many(
            conn, checkpoints, [{"size": n, "note": "x", "created_at": NOW} for n in (1, 2, 3)], insert(checkpoints)
        )
        before = len(statements)
        changed = await fast.execute(
            conn,
            "UPDATE checkpoints SET created_at = $1, note = $2 WHERE size >= $3",
            (later, "moved", 2),
            update(checkpoints).values(note="unused"),
            {},
        )
        assert (changed, statements[before:]) == (2, [])
        # a cast is PostgreSQL's: SQLAlchemy's statement runs instead, with its parameters
        cast = await fast.execute(
            conn,
            "UPDATE checkpoints SET note = $1::text WHERE size = $2",
            ("cast", 1),
            update(checkpoints).where(checkpoints.c.size == 1).values(note="by sqlalchemy"),
            {},
        )
        assert cast == 1 and len(statements) == before + 1
    async with lite.connect() as conn:
        got = (await conn.execute(select(checkpoints.c.size, checkpoints.c.note, checkpoints.c.created_at))).all()
    assert got == [(1, "by sqlalchemy", NOW), (2, "moved", later), (3, "moved", later)]
    # the update stored the time as SQLAlchemy's insert stores one
    texts = [created for (created,) in raw_rows(tmp_path / "comity.db", "SELECT created_at FROM checkpoints")]
    async with lite.begin() as conn:
        await conn.execute(insert(checkpoints), {"size": 4, "note": "x", "created_at": later})
    assert raw_rows(tmp_path / "comity.db", "SELECT created_at FROM checkpoints WHERE size = 4") == [(texts[1],)]


async def test_a_driver_error_is_sqlalchemys_quotes_no_value_and_keeps_the_transaction(lite: AsyncEngine) -> None:
    secret = "a note that must not reach an error"
    async with lite.begin() as conn:
        await fast.insert(conn, checkpoints, {"size": 1, "note": secret, "created_at": NOW}, insert(checkpoints))
        with pytest.raises(IntegrityError) as raised:
            await fast.insert(conn, checkpoints, {"size": 1, "note": secret, "created_at": NOW}, insert(checkpoints))
        assert secret not in str(raised.value) and "UNIQUE" in str(raised.value)
        # SQLite undid that statement only: the transaction goes on and commits what came before
        await fast.insert(conn, checkpoints, {"size": 2, "note": "y", "created_at": NOW}, insert(checkpoints))
    async with lite.connect() as conn:
        assert (await conn.execute(select(checkpoints.c.size))).scalars().all() == [1, 2]


async def test_before_sqlalchemy_begins_it_runs_the_statement(lite: AsyncEngine, statements: list[str]) -> None:
    """A connection not yet in a transaction: a write sent to the driver would commit on its own, so SQLAlchemy's
    statement runs, once its transaction has begun (BEGIN IMMEDIATE, store/db.py)."""
    async with lite.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None and not driver.in_transaction
        await fast.insert(conn, checkpoints, {"size": 1, "note": "x", "created_at": NOW}, insert(checkpoints))
        assert statements == ["INSERT INTO checkpoints (size, note, created_at) VALUES (?, ?, ?)"]
        assert driver.in_transaction
    async with lite.connect() as conn:  # and it was the caller's transaction: never committed, rolled back
        assert (await conn.execute(select(checkpoints))).all() == []


async def test_the_ledger_head_read_in_a_transaction_matches_sqlalchemys(tmp_path: Path, lite: AsyncEngine) -> None:
    log = EventLog(for_update=False)
    async with lite.begin() as conn:
        fast_head = await log.head(conn)  # in the transaction: read through the driver
    async with lite.connect() as conn:
        assert await log.head(conn) == fast_head  # before a transaction: SQLAlchemy's statement
    with sqlite3.connect(tmp_path / "comity.db") as db:
        db.execute("DELETE FROM ledger_head")
    async with lite.begin() as conn:
        with pytest.raises(NoResultFound, match="ledger head"):
            await log.head(conn)


async def test_a_connection_closed_under_the_hot_path_is_a_transient_outage(lite: AsyncEngine) -> None:
    """aiosqlite raises ValueError on a closed connection; SQLAlchemy's adapter reports it as an OperationalError of
    an invalidated connection, which store.errors counts as the database failing (503, retried), and so does this."""
    async with lite.connect() as conn:
        await conn.begin()
        closing = (await conn.get_raw_connection()).driver_connection
        assert closing is not None
        await closing.close()
        with pytest.raises(OperationalError) as raised:
            await fast.insert(conn, checkpoints, {"size": 1, "note": "x", "created_at": NOW}, insert(checkpoints))
        await conn.invalidate()
    assert raised.value.connection_invalidated and transient_cause(raised.value) is raised.value


async def test_a_begin_that_finds_the_database_locked_is_sqlalchemys_transient_error(
    tmp_path: Path, lite: AsyncEngine
) -> None:
    """BEGIN IMMEDIATE goes to aiosqlite itself (store/db.py): past the busy timeout, "database is locked" must still
    be SQLAlchemy's OperationalError, which store.errors counts as the database failing (503, retried)."""
    holder = sqlite3.connect(tmp_path / "comity.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        async with lite.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            await driver.execute("PRAGMA busy_timeout=0")  # this connection only: fail at once
            with pytest.raises(OperationalError) as raised:
                await conn.begin()
            assert "locked" in str(raised.value) and transient_cause(raised.value) is raised.value
    finally:
        holder.rollback()
        holder.close()


async def test_the_receivers_duplicate_check_reads_past_sqlalchemy(lite: AsyncEngine, statements: list[str]) -> None:
    """Every incoming envelope asks which of its ids are known (store.messages Messages.seen_many): on SQLite the
    three text columns come straight from aiosqlite, outside a transaction as well (a read commits nothing)."""
    async with lite.connect() as conn:
        assert await Messages.seen_many(conn, ["a", "b"]) == {}
        assert await Messages.seen_many(conn, []) == {}
        assert not conn.in_transaction()
    assert statements == []


async def test_a_connection_found_dead_at_begin_leaves_the_pool(lite: AsyncEngine) -> None:
    """BEGIN IMMEDIATE is sent from SQLAlchemy's begin event, whose errors SQLAlchemy does not handle: a connection
    found closed there is invalidated by the event itself, so the next transaction gets a new one."""
    async with lite.connect() as conn:
        closing = (await conn.get_raw_connection()).driver_connection
        assert closing is not None
        await closing.close()  # back to the pool dead: its reset on return does nothing on a closed connection
    with pytest.raises(OperationalError) as raised:
        async with lite.begin():
            pass
    assert raised.value.connection_invalidated
    async with lite.begin() as conn:
        await fast.insert(conn, checkpoints, {"size": 1, "note": "x", "created_at": NOW}, insert(checkpoints))
    async with lite.connect() as conn:
        assert (await conn.execute(select(checkpoints.c.size))).scalars().all() == [1]


async def test_a_milestone_is_marked_and_its_times_read_back_past_sqlalchemy(
    tmp_path: Path, lite: AsyncEngine, statements: list[str]
) -> None:
    """The request's start_at (every sent request): the UPDATE ... RETURNING goes to aiosqlite and its times come back
    as SQLAlchemy converts them (aware UTC datetimes), so the waits computed from them are right."""
    acknowledged = MIDNIGHT + timedelta(seconds=5, microseconds=250_000)
    async with lite.begin() as conn:
        row = {**stats_row("case-1"), "acknowledged_at": acknowledged}
        await fast.insert(conn, case_stats, row, insert(case_stats))
        await CaseStats.milestone(conn, "case-1", "start_at", MIDNIGHT)
        await CaseStats.milestone(conn, "case-1", "start_at", NOW)  # the first time only: nothing changes
    assert not [sql for sql in statements if sql.startswith("UPDATE case_stats SET start_at")]
    async with lite.connect() as conn:
        got = (await conn.execute(select(case_stats.c.start_at, case_stats.c.wait_acknowledge_ms))).one()
    assert tuple(got) == (MIDNIGHT, 5250)
    async with lite.begin() as conn:  # what returning() hands to write_waits: aware UTC times, as SQLAlchemy's
        driver = await sqlite_fast.driver(conn)
        sql, args = (
            "UPDATE case_stats SET year = $1 WHERE case_id = $2 RETURNING start_at, acknowledged_at",
            (2027, "case-1"),
        )
        times = await sqlite_fast.returning(
            driver, conn.dialect, sql, args, [case_stats.c.start_at, case_stats.c.acknowledged_at]
        )
    assert times == {"start_at": MIDNIGHT, "acknowledged_at": acknowledged}
    assert times is not None and all(time.tzinfo is not None for time in times.values())
    assert raw_rows(tmp_path / "comity.db", "SELECT start_at FROM case_stats") == [("2026-12-01 00:00:00.000000",)]
    async with lite.begin() as conn:
        driver = await sqlite_fast.driver(conn)
        with pytest.raises(ValueError, match="SQLite runs too"):
            await sqlite_fast.returning(driver, conn.dialect, "UPDATE case_stats SET year = $1::int", (1,), [])


async def test_the_token_lookup_reads_past_sqlalchemy_the_row_it_would_read(
    lite: AsyncEngine, statements: list[str]
) -> None:
    """Every API call looks its token up (store.tokens Tokens.by_digest): on SQLite the row comes from aiosqlite,
    converted by the columns' result processors into exactly what SQLAlchemy's statement gives."""
    async with lite.begin() as conn:
        alice = await Users.create(conn, "alice", "officer", NOW, unit="mla", caveats=("uncac-46-20",))
        issued = await Users.issue(conn, alice, NOW, label="cli", expires_at=MIDNIGHT)
        revoked = await Users.issue(conn, alice, NOW, label="old", expires_at=MIDNIGHT)
        await Tokens.revoke_token(conn, "alice", NOW, token_id=revoked.token_id)
        bob = await Users.create(conn, "bob", "supervisor", NOW, unit="mla")
        disabled = await Users.issue(conn, bob, NOW, label="cli", expires_at=MIDNIGHT)
        await Users.set_disabled(conn, "bob", True, NOW, actor="system")
    asked = [hash_token(t.token) for t in (issued, revoked, disabled)] + ["0" * 64, hash_token(issued.token)]
    query = tokens_module._AUTHENTICATE
    reader = make_reader(str(lite.url), lite)
    try:
        for engine in (lite, reader):  # the gateway asks on the reader pool
            before = len(statements)
            async with engine.connect() as conn:
                fast_rows = await Tokens.by_digest(conn, asked)
                assert statements[before:] == []
                expected = [dict(row) for row in (await conn.execute(query, {"b_hashes": asked})).mappings()]
            assert sorted(fast_rows) == sorted(row["token_hash"] for row in expected) == sorted(asked[:2])
            assert [fast_rows[row["token_hash"]] for row in expected] == expected  # value for value, type for type
    finally:
        await reader.dispose()
    row = fast_rows[asked[0]]
    assert (row["username"], row["role"], row["unit"], row["expires_at"]) == ("alice", "officer", "mla", MIDNIGHT)
    assert (row["disabled"], row["revoked_at"], fast_rows[asked[1]]["revoked_at"]) == (False, None, NOW)
    assert type(row["disabled"]) is bool and row["expires_at"].tzinfo is not None
