"""The SQLite hot path: the statements every envelope makes, sent to the aiosqlite connection past SQLAlchemy's
statement machinery.

On SQLite a one-row INSERT through SQLAlchemy Core costs about 280 us of CPU, of which the statement itself (the
hop to aiosqlite's thread and SQLite's work) is about 65 us: the rest is building the execution context, the
adapter's cursor and the result (docs/performance.md, ninth session). An envelope makes five to eight of them on
each side, so :func:`store.fast.insert` and :func:`store.fast.insert_many` send them here instead, as
:mod:`store.fast` sends them to asyncpg on PostgreSQL. What stays as SQLAlchemy would do it:

* the values are converted by the bind processors SQLAlchemy itself uses, those of each column's type as the
  connection's dialect implements it (``type.dialect_impl(dialect)``: ``UTCDateTime`` refuses a naive datetime and
  stores UTC as SQLite's fixed-width text, ``2026-12-01 00:00:00.000000``, which SQL compares as text; a date as
  ``2027-01-31``), and only the columns the row names are written, as on PostgreSQL;
* the statement runs at once, inside the transaction SQLAlchemy began on the same connection (``BEGIN IMMEDIATE``,
  itself sent to aiosqlite by store/db.py), so savepoints, rollbacks and the order of statements are unchanged;
  outside a transaction (an autocommit connection, or before SQLAlchemy began one) the caller's SQLAlchemy
  statement runs instead, since a write sent here would commit on its own; a read (:func:`typed_rows`: the ledger
  head, the receiver's duplicate check, the token lookup) runs on any connection, as it commits nothing;
* what comes back goes through the result processors SQLAlchemy itself applies (:func:`typed_rows`,
  :func:`returning`: times to aware UTC datetimes, booleans to bool, blobs to bytes);
* a driver error is raised as SQLAlchemy's own (``IntegrityError`` for a duplicate, ``OperationalError`` for a
  lock held past the busy timeout, which store/errors.py tells apart as transient), without the parameters; a
  connection aiosqlite already closed is an ``OperationalError`` of an invalidated connection, as SQLAlchemy's
  adapter reports it.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Column, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from store.tables import TZ

__all__ = ["IN_MAX", "driver", "errors", "execute", "in_list", "insert_many", "returning", "typed_rows"]

Processor = Callable[[Any], Any] | None
_POSTGRESQL_ONLY: Final = re.compile(r"::|\bANY\s*\(|\bunnest\s*\(|\bFOR UPDATE\b", re.IGNORECASE)
_PLAIN: Final = (str, int, float, bytes, datetime)  # what execute() binds itself (and None)
_CLOSED: Final = ("no active connection", "connection closed")  # aiosqlite's ValueErrors, as SQLAlchemy's adapter
IN_MAX: Final = 500  # values in one IN list of ours (SQLite's limit on parameters is far above; beyond, SQLAlchemy)


@functools.lru_cache(maxsize=256)
def in_list(count: int) -> str:
    """``(?, ?, ...)``, ``count`` placeholders for an IN list."""
    return f"({', '.join('?' for _ in range(count))})"


async def driver(conn: AsyncConnection, *, read: bool = False) -> Any | None:
    """The aiosqlite connection beneath ``conn`` when it is SQLite and inside a transaction (for a ``read``, in any
    state: a SELECT commits nothing), else None."""
    if conn.dialect.name != "sqlite" or not (read or conn.in_transaction()):
        return None
    return (await conn.get_raw_connection()).driver_connection


@functools.lru_cache(maxsize=256)
def _prepared(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> tuple[str, tuple[Processor, ...]]:
    placeholders = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608 - names from tables.py
    return sql, tuple(_processor(table.c[column].type, dialect) for column in columns)


def _processor(type_: Any, dialect: Dialect) -> Processor:
    """The bind processor SQLAlchemy applies for ``type_`` on ``dialect``: that of the dialect's own implementation
    of the type (the generic type's would leave a datetime to sqlite3's adapter, which drops zero microseconds)."""
    processor: Processor = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor


async def insert_many(driver: Any, dialect: Dialect, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` through ``driver`` (from :func:`driver`), one statement per set of columns."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    for columns, group in groups.items():
        sql, processors = _prepared(dialect, table, columns)
        params = [
            tuple(
                value if process is None else process(value)
                for process, value in zip(processors, row.values(), strict=True)
            )
            for row in group
        ]
        with errors(sql):
            if len(params) == 1:
                await driver.execute(sql, params[0])
            else:
                await driver.executemany(sql, params)


@contextmanager
def errors(sql: str) -> Iterator[None]:
    """Raise what the driver raises as SQLAlchemy's error: sqlite3's by its class; aiosqlite's ValueError for a
    closed connection as SQLAlchemy's adapter reports it, an OperationalError of an invalidated connection."""
    try:
        yield
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error, hide_parameters=True) from exc
    except ValueError as exc:
        if not (exc.args and str(exc.args[0]).lower() in _CLOSED):
            raise
        raise OperationalError(sql, None, exc, hide_parameters=True, connection_invalidated=True) from exc


@functools.lru_cache(maxsize=64)
def _sqlite_text(sql: str) -> str | None:
    """``sql`` (PostgreSQL text with $n placeholders) with SQLite's ?n placeholders, or None if it uses what only
    PostgreSQL has (a cast, an array, a row lock)."""
    if _POSTGRESQL_ONLY.search(sql):
        return None
    return re.sub(r"\$(\d+)", r"?\1", sql)


async def execute(driver: Any, dialect: Dialect, sql: str, args: Sequence[Any]) -> int | None:
    """Run ``sql`` (the hot path's PostgreSQL text of an UPDATE or a DELETE) through ``driver`` and return the number
    of rows it changed; None, having run nothing, when the text is PostgreSQL's own or an argument is not a plain
    value (the caller then runs its SQLAlchemy statement). A datetime is stored as ``UTCDateTime`` stores it."""
    statement = _statement(dialect, sql, args)
    if statement is None:
        return None
    text, values = statement
    with errors(text):
        cursor = await driver.execute(text, values)
    return int(cursor.rowcount)


def _statement(dialect: Dialect, sql: str, args: Sequence[Any]) -> tuple[str, tuple[Any, ...]] | None:
    """SQLite's text of ``sql`` and its values (a datetime as ``UTCDateTime`` stores it), or None when the text is
    PostgreSQL's own or an argument is not a plain value."""
    text = _sqlite_text(sql)
    if text is None or not all(arg is None or isinstance(arg, _PLAIN) for arg in args):
        return None
    process = _datetime_processor(dialect)
    return text, tuple(process(arg) if isinstance(arg, datetime) and process is not None else arg for arg in args)


@functools.lru_cache(maxsize=16)
def _datetime_processor(dialect: Dialect) -> Processor:
    return _processor(TZ, dialect)


async def returning(
    driver: Any, dialect: Dialect, sql: str, args: Sequence[Any], columns: Sequence[Column[Any]]
) -> dict[str, Any] | None:
    """The first row of ``sql``, the hot path's PostgreSQL text of an ``UPDATE ... RETURNING`` the ``columns`` (in
    that order), run with ?n placeholders through ``driver``, its values converted by the columns' own result
    processors as SQLAlchemy converts them (a time back to an aware UTC datetime); None when it changed no row.
    Arguments as :func:`execute` takes them; a text that is PostgreSQL's own is a programming error here."""
    statement = _statement(dialect, sql, args)
    if statement is None:
        raise ValueError("returning() takes SQL text that SQLite runs too, and plain arguments")
    text, values = statement
    return next(iter(await typed_rows(driver, dialect, text, values, columns)), None)


async def typed_rows(
    driver: Any, dialect: Dialect, sql: str, args: Sequence[Any], columns: Sequence[Column[Any]]
) -> list[dict[str, Any]]:
    """Every row of ``sql`` (SQLite text returning the ``columns``, in that order; plain arguments) through
    ``driver``, in one trip to aiosqlite's thread, by column name, its values converted by the columns' own result
    processors as SQLAlchemy converts them (times to aware UTC datetimes, booleans to bool)."""
    with errors(sql):
        rows = await driver.execute_fetchall(sql, tuple(args))
    converters = [(column.name, _result_processor(dialect, column)) for column in columns]
    return [
        {
            name: value if convert is None else convert(value)
            for (name, convert), value in zip(converters, row, strict=True)
        }
        for row in rows
    ]


@functools.lru_cache(maxsize=64)
def _result_processor(dialect: Dialect, column: Column[Any]) -> Processor:
    processor: Processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
    return processor
