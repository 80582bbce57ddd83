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
  given as the fallback, at once: the same rows, the same table; except that on SQLite inside a transaction the
  inserts, and :func:`execute`'s text with ``?n`` placeholders, go to aiosqlite at once instead, as do a few reads
  and ``UPDATE ... RETURNING`` s whose callers call :mod:`store.sqlite_fast` themselves;
* a constraint violation is raised as SQLAlchemy's ``IntegrityError``, as callers expect (a duplicate delivery);
* a naive datetime is refused, as ``store.tables.UTCDateTime`` refuses it.

The group commit runs its transaction itself, through :func:`group` on an autocommit view of the engine: BEGIN goes
out only when a unit needs a statement (rows are queued even before it), and a batch whose units only queued rows
is a single autocommit statement. Inside a group a unit may also queue **guarded writes** (:func:`queue_guarded`):
updates and deletes that lock the rows they depend on and apply, with everything else the statement writes, only
if every one of those rows is as expected (store/delivery.py: a receipt and its outbox row). The queue and the SQL
that writes it are in :mod:`store.fast_queue`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Table, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable
from sqlalchemy.util import await_only

from store import sqlite_fast
from store.fast_queue import Built, Guarded, GuardedSql, Queue, QueuedConditionFailed, check_times

__all__ = [
    "Backend",
    "GroupEnded",
    "backend",
    "Guarded",
    "GuardedSql",
    "QueuedConditionFailed",
    "execute",
    "execute_direct",
    "fetch_direct",
    "fetch_row",
    "fetch_rows",
    "group",
    "insert",
    "insert_many",
    "install",
    "optimistic",
    "pending_rows",
    "queue_guarded",
]

_QUEUE: Final = "comity.fast.queue"  # key of the queued rows in the connection's info (one DBAPI connection)
_GROUP: Final = "comity.fast.group"  # set while group() runs the connection's transaction: "open" or "ended"
_OPTIMISTIC: Final = "comity.fast.optimistic"  # set while group(optimistic=True) runs
_BACKEND: Final = "comity.fast.backend"  # the connection's server process (backend())

# the caller's part of a statement that also writes the queue: given the number of the first free placeholder,
# its own CTEs (possibly none) and the main statement; a gated one (execute_direct) is also given the condition its
# gate CTE must AND into its WHERE ("true" when the queue holds no guarded writes)
Tail = Callable[[int, str], tuple[Sequence[str], str]]
RowTail = Callable[[int], tuple[Sequence[str], str]]


async def _driver(conn: AsyncConnection, *, read: bool = False) -> Any | None:
    """The asyncpg connection beneath ``conn`` when it is PostgreSQL and inside a transaction (or, for a ``read``,
    in any state), else None. In a :func:`group`, the transaction is begun here if it is not yet."""
    driver = await _raw_driver(conn)
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
    _refuse_after_end(info)
    if not driver.is_in_transaction():
        await _run(driver, "BEGIN", ())


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608 - names from tables.py


async def _run(
    driver: Any, sql: str, args: Sequence[Any], *, many: bool = False, row: bool = False, rows: bool = False
) -> Any:
    import asyncpg

    try:
        if many:
            await driver.executemany(sql, args)
            return ""
        if row:
            return await driver.fetchrow(sql, *args)
        if rows:
            return await driver.fetch(sql, *args)
        return str(await driver.execute(sql, *args))
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(sql, None, exc) from exc


def _take_queue(info: dict[Any, Any], gate: str | None = None) -> Built | None:
    queue: Queue | None = info.pop(_QUEUE, None)
    return None if queue is None or not queue.rows() else queue.statement(gate)


async def _write_queue(driver: Any, info: dict[Any, Any]) -> None:
    """Write the queue as a statement of its own; guarded writes that find a row changed write nothing at all and
    raise :class:`QueuedConditionFailed` (inside a transaction, the caller's error rolls it back)."""
    built = _take_queue(info)
    if built is None:
        return
    if built.condition is None:
        await _run(driver, f"WITH {', '.join(built.writes)} SELECT 1", built.args)
        return
    ctes = [*built.locks, f"ok AS (SELECT {built.condition} AS ok)", *built.writes]
    record = await _run(driver, f"WITH {', '.join(ctes)} SELECT ok FROM ok", built.args, row=True)  # noqa: S608
    if not record["ok"]:
        raise QueuedConditionFailed("a guarded write found its rows changed by another writer; nothing was written")


def pending_rows(conn: AsyncConnection | Connection) -> int:
    """How many rows (and guarded writes) are queued on ``conn`` and not written yet (tests and assertions)."""
    queue: Queue | None = conn.info.get(_QUEUE)
    return 0 if queue is None else queue.rows()


def queue_guarded(conn: AsyncConnection, kind: Guarded, row: tuple[Any, ...]) -> None:
    """Queue a guarded write (in a :func:`group` only): written with the group's last statement, which then
    writes nothing at all unless every guarded write's condition holds; or, where the queue is written on its own
    first, raising :class:`QueuedConditionFailed`."""
    if conn.info.get(_GROUP) is None:
        raise RuntimeError("guarded writes are queued only inside a group")
    _refuse_after_end(conn.info)
    queue = conn.info.get(_QUEUE)
    if queue is None:
        queue = conn.info[_QUEUE] = Queue()
    queue.add_guarded(kind, row)


def _refuse_after_end(info: dict[Any, Any]) -> None:
    if info.get(_GROUP) == "ended":
        raise GroupEnded("the group's transaction has ended: its last statement ran on its own")


def optimistic(conn: AsyncConnection) -> bool:
    """Whether ``conn`` runs a group that started from a remembered ledger head (``group(optimistic=True)``): a
    failure of its batch is retried from the head read under its lock, so a unit may assume what usually holds
    and leave the check to guarded writes."""
    return bool(conn.info.get(_OPTIMISTIC))


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
    _refuse_after_end(conn.info)
    if conn.dialect.name == "sqlite":
        lite = await sqlite_fast.driver(conn)
        if lite is None:
            await conn.execute(fallback, [dict(row) for row in rows])
        else:
            await sqlite_fast.insert_many(lite, conn.dialect, table, rows)
        return
    # in a group the queue waits even before the transaction begins: group() writes it inside its transaction
    if conn.info.get(_GROUP) is None and await _driver(conn) is None:
        await conn.execute(fallback, [dict(row) for row in rows])
        return
    queue = conn.info.get(_QUEUE)
    if queue is None:
        queue = conn.info[_QUEUE] = Queue()
    queue.add(table, rows)


async def execute(
    conn: AsyncConnection, sql: str, args: Sequence[Any], fallback: Executable, params: Mapping[str, Any]
) -> int:
    """Run ``sql`` (PostgreSQL text with $n placeholders) or, where the hot path does not apply, ``fallback`` with
    ``params``; return the number of rows it changed. On SQLite inside a transaction ``sql`` itself runs, with ?n
    placeholders, unless it has a cast, an array or a row lock, or an argument that is not a plain value
    (:func:`store.sqlite_fast.execute`): any other text given here must therefore be valid SQLite as well, which
    the storage tests, run on both stores, show for every caller."""
    if conn.dialect.name == "sqlite":
        lite = await sqlite_fast.driver(conn)
        count = None if lite is None else await sqlite_fast.execute(lite, conn.dialect, sql, args)
        return int((await conn.execute(fallback, dict(params))).rowcount) if count is None else count
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
    rows = await fetch_rows(conn, sql, args, fallback, params, read=read)
    return rows[0] if rows else None


async def fetch_rows(
    conn: AsyncConnection,
    sql: str,
    args: Sequence[Any],
    fallback: Executable,
    params: Mapping[str, Any],
    *,
    read: bool = False,
) -> list[Mapping[str, Any]]:
    """Every row ``sql`` returns, by column name; ``fallback`` with ``params`` where the hot path does not apply. A
    ``read`` (a SELECT) takes the hot path on an autocommit connection too."""
    driver = await _driver(conn, read=read)
    if driver is None:
        return [dict(found) for found in (await conn.execute(fallback, dict(params))).mappings()]
    await _write_queue(driver, conn.info)
    return [dict(record.items()) for record in await _run(driver, sql, args, rows=True)]


async def execute_direct(
    conn: AsyncConnection, tail: Tail, args: Sequence[Any], *, gate: str | None = None
) -> Mapping[str, Any] | None:
    """Run the statement ``tail`` builds (PostgreSQL text) with ``args``, writing the queued rows in the same
    statement, and return its first row by column name (an empty mapping when it returns none); or return None,
    having run nothing, where the hot path does not apply (SQLite, autocommit): the caller then does the same work
    with SQLAlchemy statements. With ``gate``, the name of the tail's first CTE, the queued writes are placed after
    it and apply only if it returns a row, and the tail is given the guarded writes' condition to AND into the
    gate's WHERE; without, a queue holding guarded writes is written on its own first.

    In a :func:`group` that has not begun a transaction (its units only queued rows), this statement is the group's
    last and is run on its own, without BEGIN or COMMIT: one statement is atomic by itself."""
    driver = await _raw_driver(conn)
    if driver is None:
        return None
    if conn.info.get(_GROUP) is None:
        if not driver.is_in_transaction():
            return None
    else:
        _refuse_after_end(conn.info)
        if not driver.is_in_transaction():
            queue: Queue | None = conn.info.get(_QUEUE)
            if gate is None and queue is not None and queue.guarded:
                # the guarded writes then go first, alone: two statements, so they need one transaction
                await _begin_group(driver, conn.info)
            else:
                conn.info[_GROUP] = "ended"
    return await _direct(driver, conn.info, tail, args, gate) or {}


async def fetch_direct(
    conn: AsyncConnection, tail: RowTail, args: Sequence[Any]
) -> tuple[bool, Mapping[str, Any] | None]:
    """Run the statement ``tail`` builds, as :func:`execute_direct` does without a gate but always inside the
    transaction, and return whether it ran and its first row by column name (None: no row).

    The queued rows are written by the same statement, which sees the database as it was before them (PostgreSQL
    runs the parts of a statement on one snapshot): the statement must neither read nor change a row the queue
    may hold, as one touching only rows committed by earlier transactions does not."""
    driver = await _driver(conn)
    if driver is None:
        return False, None
    return True, await _direct(driver, conn.info, lambda first, _condition: tail(first), args, None)


@dataclass(frozen=True)
class Backend:
    """A PostgreSQL server process, told apart from a later one given the same pid by its start time."""

    pid: int
    started: datetime


async def backend(conn: AsyncConnection) -> Backend | None:
    """The PostgreSQL server process of ``conn`` (None on SQLite): asyncpg knows its pid, and its start time is read
    once per connection and kept with it."""
    driver = await _raw_driver(conn)
    if driver is None:
        return None
    known: Backend | None = conn.info.get(_BACKEND)
    if known is None:
        started = await driver.fetchval("SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        known = conn.info[_BACKEND] = Backend(int(driver.get_server_pid()), started)
    return known


async def _raw_driver(conn: AsyncConnection) -> Any | None:
    if conn.dialect.name != "postgresql":
        return None
    return (await conn.get_raw_connection()).driver_connection


async def _direct(
    driver: Any, info: dict[Any, Any], tail: Tail, args: Sequence[Any], gate: str | None
) -> Mapping[str, Any] | None:
    check_times(args)
    queue: Queue | None = info.get(_QUEUE)
    if gate is None and queue is not None and queue.guarded:
        await _write_queue(driver, info)  # its condition is checked on its own
    built = _take_queue(info, gate) or Built([], None, [], [])
    own, main = tail(len(built.args) + 1, built.condition or "true")
    # a CTE refers only to those before it: the locks, then the gate, then what waits for it
    ctes = [*built.locks, *own[:1], *built.writes, *own[1:]] if gate is not None else [*built.writes, *own]
    sql = f"WITH {', '.join(ctes)} {main}" if ctes else main
    record = await _run(driver, sql, [*built.args, *args], row=True)
    return None if record is None else dict(record.items())


@asynccontextmanager
async def group(engine: AsyncEngine, *, optimistic: bool = False) -> AsyncIterator[AsyncConnection]:
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
        conn.info[_OPTIMISTIC] = optimistic
        try:
            yield conn
            # rows without a final statement: written as one, in the transaction or alone
            await _write_queue(driver, conn.info)
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
                conn.info.pop(_OPTIMISTIC, None)


async def _abandon(conn: AsyncConnection, driver: Any, error: BaseException) -> None:
    """Roll back a failed group's transaction, or close the connection (SQLAlchemy then drops it from the pool)
    where that is not certain to leave it clean: it broke (a server restart, a killed backend: SQLAlchemy's adapter
    never saw it fail, since the group talks to asyncpg itself), or a cancellation came mid-way (a statement's or
    BEGIN's answer may still be on the wire), or the ROLLBACK failed."""
    import asyncpg

    broken = isinstance(error, asyncpg.InterfaceError | asyncpg.ConnectionDoesNotExistError | OSError)
    if isinstance(error, Exception) and not broken and not driver.is_closed():
        if not driver.is_in_transaction():
            return
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
            record.info.pop(_OPTIMISTIC, None)
