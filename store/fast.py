"""The PostgreSQL hot path: the few writes every envelope makes, run on the asyncpg connection under SQLAlchemy.

SQLAlchemy Core costs about three times what asyncpg does for a one-row statement (docs/performance.md: 190 against
61 us of CPU for an INSERT of a message row), and every statement is a round trip that costs both processes CPU
(about 66 us in the client alone, measured with asyncpg). So the writes of the group commit go straight to asyncpg,
with prepared statements it caches per connection, **inside the transaction SQLAlchemy began** on the same
connection, and the inserts are **deferred**: :func:`insert` and :func:`insert_many` only queue their rows on the
connection, and the queue is written, one ``INSERT ... SELECT * FROM unnest(...)`` per table in a single statement,

* together with the ledger's own writes when the group commit closes its batch (:func:`execute_direct`), so a batch
  of submissions or receptions costs one round trip for all its rows, or with a statement that touches only rows
  committed before (:func:`fetch_direct`: a receipt's updates);
* before any other statement on that connection, whether it goes through this module or through SQLAlchemy (an
  engine event, :func:`install`), so that every read and every write sees the rows queued before it, as if they had
  been inserted at once;
* before COMMIT and before a SAVEPOINT; a ROLLBACK (to a savepoint, too), or the connection returning to the pool,
  drops the queue.

A constraint violation of a queued row therefore surfaces at the statement that writes the queue, not at the call
that queued it; inside one transaction nobody can tell the difference, and a group commit retries the units of a
failed batch one by one anyway. Everything stays as it was where the hot path does not hold:

* SQLite, and any connection that is not inside a transaction (an autocommit reader), run the SQLAlchemy statement
  given as the fallback, at once: the same rows, the same table;
* a constraint violation is raised as SQLAlchemy's ``IntegrityError``, as callers expect (a duplicate delivery);
* a naive datetime is refused, as ``store.tables.UTCDateTime`` refuses it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable
from sqlalchemy.util import await_only

__all__ = [
    "GroupEnded",
    "execute",
    "execute_direct",
    "fetch_direct",
    "fetch_row",
    "group",
    "insert",
    "insert_many",
    "install",
    "pending_rows",
]

_QUEUE: Final = "comity.fast.queue"  # key of the queued rows in the connection's info (one DBAPI connection)
_GROUP: Final = "comity.fast.group"  # set while group() runs the connection's transaction: "open" or "ended"
_DIALECT: Final = postgresql.dialect()  # type: ignore[no-untyped-call]

# a statement built from the queue: the CTEs (one per table and column set) and their arguments, numbered from 1
Queued = tuple[list[str], list[Any]]
# the caller's part of a statement that also writes the queue: given the number of the first free placeholder,
# its own CTEs (possibly none) and the main statement
Tail = Callable[[int], tuple[Sequence[str], str]]


class _Queue:
    """Rows waiting to be inserted, by table and column set, in the order they were queued."""

    def __init__(self) -> None:
        self.tables: dict[str, Table] = {}
        self.groups: dict[tuple[str, tuple[str, ...]], list[list[Any]]] = {}

    def add(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        self.tables[table.name] = table
        for row in rows:
            self.groups.setdefault((table.name, tuple(row)), []).append(_values(row))

    def statement(self, gate: str | None = None) -> Queued:
        """The CTEs and their arguments; with ``gate`` (the name of a CTE before them), each inserts its rows only
        if that CTE returned a row."""
        where = "" if gate is None else f" WHERE EXISTS (SELECT 1 FROM {gate})"  # noqa: S608 - a CTE's name
        ctes: list[str] = []
        args: list[Any] = []
        for number, ((name, columns), rows) in enumerate(self.groups.items()):
            table = self.tables[name]
            arrays = []
            for position, column in enumerate(columns):
                args.append([row[position] for row in rows])
                arrays.append(f"${len(args)}::{_array_type(table, column)}")
            # names from store/tables.py and placeholders: no value is ever formatted into the text
            target = f"{name} ({', '.join(columns)})"
            rows_in = f"SELECT * FROM unnest({', '.join(arrays)}){where}"  # noqa: S608
            ctes.append(f"q{number} AS (INSERT INTO {target} {rows_in})")
        return ctes, args


@functools.lru_cache(maxsize=256)
def _array_type(table: Table, column: str) -> str:
    # without a length: an explicit cast to VARCHAR(36) would cut a longer value silently, where the column itself
    # refuses it as an INSERT's values would be refused
    return re.sub(r"\(\d+\)", "", table.c[column].type.compile(dialect=_DIALECT)) + "[]"


async def _driver(conn: AsyncConnection, *, read: bool = False) -> Any | None:
    """The asyncpg connection beneath ``conn`` when it is PostgreSQL and inside a transaction (or, for a ``read``,
    in any state), else None. In a :func:`group`, the transaction is begun here if it is not yet."""
    if conn.dialect.name != "postgresql":
        return None
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if driver is None:
        return None
    if conn.info.get(_GROUP) is not None:
        await _begin_group(driver, conn.info)
        return driver
    # SQLAlchemy's asyncpg adapter begins its transaction at the first statement: until then (or in autocommit)
    # a write sent here would commit on its own, so it goes through SQLAlchemy instead; a read changes nothing
    if not (read or driver.is_in_transaction()):
        return None
    return driver


class GroupEnded(RuntimeError):
    """A statement after the one that was a :func:`group`'s whole transaction (a programming error)."""


async def _begin_group(driver: Any, info: dict[Any, Any]) -> None:
    if info.get(_GROUP) == "ended":
        raise GroupEnded("the group's transaction has ended: its last statement ran on its own")
    if not driver.is_in_transaction():
        await _run(driver, "BEGIN", ())


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608 - names from tables.py


def _values(row: Mapping[str, Any]) -> list[Any]:
    values = list(row.values())
    _check_times(values)
    return values


def _check_times(values: Sequence[Any]) -> None:
    for value in values:
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")


async def _run(driver: Any, sql: str, args: Sequence[Any], *, many: bool = False, row: bool = False) -> Any:
    import asyncpg

    try:
        if many:
            await driver.executemany(sql, args)
            return ""
        if row:
            return await driver.fetchrow(sql, *args)
        return str(await driver.execute(sql, *args))
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(sql, None, exc) from exc


def _take_queue(info: dict[Any, Any], gate: str | None = None) -> Queued | None:
    queue: _Queue | None = info.pop(_QUEUE, None)
    return None if queue is None or not queue.groups else queue.statement(gate)


async def _write_queue(driver: Any, info: dict[Any, Any]) -> None:
    queued = _take_queue(info)
    if queued is not None:
        ctes, args = queued
        await _run(driver, f"WITH {', '.join(ctes)} SELECT 1", args)


def pending_rows(conn: AsyncConnection | Connection) -> int:
    """How many rows are queued on ``conn`` and not written yet (tests and assertions)."""
    queue: _Queue | None = conn.info.get(_QUEUE)
    return 0 if queue is None else sum(len(rows) for rows in queue.groups.values())


async def insert(conn: AsyncConnection, table: Table, row: Mapping[str, Any], fallback: Executable) -> None:
    """Insert ``row`` into ``table`` (queued, see the module docstring); ``fallback`` is the same INSERT built with
    SQLAlchemy (``insert(table)``)."""
    await insert_many(conn, table, [row], fallback)


async def insert_many(
    conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]], fallback: Executable
) -> None:
    """Insert ``rows`` into ``table`` (queued, see the module docstring)."""
    if not rows:
        return
    # in a group the queue waits even before the transaction begins: group() writes it inside its transaction
    if conn.info.get(_GROUP) is None and await _driver(conn) is None:
        await conn.execute(fallback, [dict(row) for row in rows])
        return
    queue = conn.info.get(_QUEUE)
    if queue is None:
        queue = conn.info[_QUEUE] = _Queue()
    queue.add(table, rows)


async def execute(
    conn: AsyncConnection, sql: str, args: Sequence[Any], fallback: Executable, params: Mapping[str, Any]
) -> int:
    """Run ``sql`` (PostgreSQL text with $n placeholders) or, where the hot path does not apply, ``fallback`` with
    ``params``; return the number of rows it changed."""
    driver = await _driver(conn)
    if driver is None:
        return int((await conn.execute(fallback, dict(params))).rowcount)
    await _write_queue(driver, conn.info)
    count = (await _run(driver, sql, args)).rpartition(" ")[2]  # the command tag, e.g. "UPDATE 1"
    return int(count) if count.isdigit() else 0


async def fetch_row(
    conn: AsyncConnection,
    sql: str,
    args: Sequence[Any],
    fallback: Executable,
    params: Mapping[str, Any],
    *,
    read: bool = False,
) -> Mapping[str, Any] | None:
    """The first row ``sql`` returns (an ``UPDATE ... RETURNING``, say) by column name, or None; ``fallback`` with
    ``params`` where the hot path does not apply. A ``read`` (a SELECT) takes the hot path on an autocommit
    connection too."""
    driver = await _driver(conn, read=read)
    if driver is None:
        found = (await conn.execute(fallback, dict(params))).mappings().first()
        return None if found is None else dict(found)
    await _write_queue(driver, conn.info)
    record = await _run(driver, sql, args, row=True)
    return None if record is None else dict(record.items())


async def execute_direct(
    conn: AsyncConnection, tail: Tail, args: Sequence[Any], *, gate: str | None = None
) -> Mapping[str, Any] | None:
    """Run the statement ``tail`` builds (PostgreSQL text) with ``args``, writing the queued rows in the same
    statement, and return its first row by column name (an empty mapping when it returns none); or return None,
    having run nothing, where the hot path does not apply (SQLite, autocommit): the caller then does the same work
    with SQLAlchemy statements. With ``gate``, the name of the tail's first CTE, the queued rows are written only
    if that CTE returns a row (they are placed after it).

    In a :func:`group` that has not begun a transaction (its units only queued rows), this statement is the group's
    last and is run on its own, without BEGIN or COMMIT: one statement is atomic by itself."""
    driver = await _raw_driver(conn)
    if driver is None:
        return None
    if conn.info.get(_GROUP) is None:
        if not driver.is_in_transaction():
            return None
    elif conn.info[_GROUP] == "ended":
        raise GroupEnded("the group's transaction has ended: its last statement ran on its own")
    elif not driver.is_in_transaction():
        conn.info[_GROUP] = "ended"
    return await _direct(driver, conn.info, tail, args, gate) or {}


async def fetch_direct(conn: AsyncConnection, tail: Tail, args: Sequence[Any]) -> tuple[bool, Mapping[str, Any] | None]:
    """Run the statement ``tail`` builds, as :func:`execute_direct` does but always inside the transaction, and
    return whether it ran and its first row by column name (None: no row).

    The queued rows are written by the same statement, which sees the database as it was before them (PostgreSQL
    runs the parts of a statement on one snapshot): the statement must neither read nor change a row the queue
    may hold, as one touching only rows committed by earlier transactions does not."""
    driver = await _driver(conn)
    if driver is None:
        return False, None
    return True, await _direct(driver, conn.info, tail, args)


async def _raw_driver(conn: AsyncConnection) -> Any | None:
    if conn.dialect.name != "postgresql":
        return None
    return (await conn.get_raw_connection()).driver_connection


async def _direct(
    driver: Any, info: dict[Any, Any], tail: Tail, args: Sequence[Any], gate: str | None = None
) -> Mapping[str, Any] | None:
    _check_times(args)
    queued, queued_args = _take_queue(info, gate) or ([], [])
    own, main = tail(len(queued_args) + 1)
    # a CTE refers only to those before it: the gate goes first
    ctes = [*own[:1], *queued, *own[1:]] if gate is not None else [*queued, *own]
    sql = f"WITH {', '.join(ctes)} {main}" if ctes else main
    record = await _run(driver, sql, [*queued_args, *args], row=True)
    return None if record is None else dict(record.items())


@asynccontextmanager
async def group(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection of ``engine`` (PostgreSQL, in autocommit: SQLAlchemy then sends no BEGIN or COMMIT) whose
    transaction this runs, for the group commit: BEGIN goes out only when a statement needs it (rows are queued
    meanwhile), and a group whose units only queued rows sends one statement in all (:func:`execute_direct`),
    where a transaction of SQLAlchemy's costs BEGIN and COMMIT as two more round trips. On leaving, the queue is
    written and the transaction committed; on an error or a cancellation it is rolled back, or the connection
    closed if that cannot be done."""
    async with engine.connect() as conn:
        driver = await _raw_driver(conn)
        if driver is None:
            raise ValueError("a group runs on PostgreSQL")
        conn.info[_GROUP] = "open"
        try:
            yield conn
            queued = _take_queue(conn.info)
            if queued is not None:  # rows without a final statement: written as one, in the transaction or alone
                ctes, args = queued
                await _run(driver, f"WITH {', '.join(ctes)} SELECT 1", args)
            if driver.is_in_transaction():
                await _run(driver, "COMMIT", ())
        except BaseException as error:
            # an invalidated connection (SQLAlchemy closes one whose statement was cancelled) has lost its
            # transaction and its queue, and touching its info would raise in place of the error being handled
            if not conn.invalidated:
                conn.info.pop(_QUEUE, None)
                await _abandon(conn, driver, error)
            raise
        finally:
            if not conn.invalidated:
                conn.info.pop(_GROUP, None)


async def _abandon(conn: AsyncConnection, driver: Any, error: BaseException) -> None:
    """Roll back a failed group's transaction; close the connection where that is not possible (a statement was
    cancelled mid-way and its answer may still be on the wire, or the connection broke)."""
    if driver.is_closed() or not driver.is_in_transaction():
        return
    if isinstance(error, Exception):
        try:
            await driver.execute("ROLLBACK")
            return
        except Exception:  # noqa: S110 - closed below
            pass
    await conn.invalidate()


def install(engine: AsyncEngine) -> None:
    """Write a connection's queued rows before every SQLAlchemy statement, before COMMIT and before a SAVEPOINT; drop
    them on ROLLBACK (to a savepoint, too) and when the connection goes back to the pool (PostgreSQL engines; SQLite
    never queues)."""
    sync = engine.sync_engine

    # an invalidated connection (a statement cancelled, the server gone) has lost its transaction and its queue (the
    # pool clears the record's info): touching ``conn.info`` then would raise PendingRollbackError, which would
    # replace the error or cancellation being handled
    def write(conn: Connection) -> None:
        if conn.invalidated:
            return
        # inside SQLAlchemy's greenlet: the asyncpg calls are awaited the way SQLAlchemy's own adapter awaits them
        if conn.info.get(_GROUP) is not None:  # SQLAlchemy runs in autocommit there: the group begins for it
            await_only(_begin_group(conn.connection.driver_connection, conn.info))
        if conn.info.get(_QUEUE) is not None:
            await_only(_write_queue(conn.connection.driver_connection, conn.info))

    @event.listens_for(sync, "before_cursor_execute")
    def _before_statement(conn: Connection, *_: Any) -> None:
        write(conn)

    @event.listens_for(sync, "commit")
    def _before_commit(conn: Connection) -> None:
        write(conn)

    def drop(conn: Connection) -> None:
        if not conn.invalidated:
            conn.info.pop(_QUEUE, None)

    @event.listens_for(sync, "rollback")
    def _on_rollback(conn: Connection) -> None:
        drop(conn)

    # a SAVEPOINT: what was queued before it is written before it, so that a ROLLBACK TO it drops exactly the rows
    # queued after it (the queue then holds nothing else)
    @event.listens_for(sync, "savepoint")
    def _before_savepoint(conn: Connection, _name: str) -> None:
        write(conn)

    @event.listens_for(sync, "rollback_savepoint")
    def _on_rollback_to_savepoint(conn: Connection, _name: str, _context: Any) -> None:
        drop(conn)

    @event.listens_for(sync.pool, "checkin")
    def _on_checkin(_dbapi: Any, record: Any) -> None:
        if record is not None:
            record.info.pop(_QUEUE, None)
            record.info.pop(_GROUP, None)
