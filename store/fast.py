"""The PostgreSQL hot path: the few writes every envelope makes, run on the asyncpg connection under SQLAlchemy.

SQLAlchemy Core costs about three times what asyncpg does for a one-row statement (docs/performance.md: 190 against
61 us of CPU for an INSERT of a message row), and every envelope makes a dozen such statements on the two gateways.
So the inserts of the group commit (ledger entries and nodes, the ledger head, checkpoints, messages, cases, the
outbox) go straight to asyncpg, with prepared statements it caches per connection, **inside the transaction
SQLAlchemy began** on the same connection. Everything stays as it was where that does not hold:

* SQLite, and any connection that is not inside a transaction (an autocommit reader), use the SQLAlchemy statement
  given as the fallback: the same rows, the same table;
* a constraint violation is raised as SQLAlchemy's ``IntegrityError``, as callers expect (a duplicate delivery);
* a naive datetime is refused, as ``store.tables.UTCDateTime`` refuses it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

__all__ = ["execute", "fetch_row", "insert", "insert_many"]


async def _driver(conn: AsyncConnection, *, read: bool = False) -> Any | None:
    """The asyncpg connection beneath ``conn`` when it is PostgreSQL and inside a transaction (or, for a ``read``,
    in any state), else None."""
    if conn.dialect.name != "postgresql":
        return None
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    # SQLAlchemy's asyncpg adapter begins its transaction at the first statement: until then (or in autocommit)
    # a write sent here would commit on its own, so it goes through SQLAlchemy instead; a read changes nothing
    if driver is None or not (read or driver.is_in_transaction()):
        return None
    return driver


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608 - names from tables.py


def _values(row: Mapping[str, Any]) -> list[Any]:
    values = list(row.values())
    for value in values:
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
    return values


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


async def insert(conn: AsyncConnection, table: Table, row: Mapping[str, Any], fallback: Executable) -> None:
    """Insert ``row`` into ``table``; ``fallback`` is the same INSERT built with SQLAlchemy (``insert(table)``)."""
    driver = await _driver(conn)
    if driver is None:
        await conn.execute(fallback, dict(row))
        return
    await _run(driver, _insert_sql(table.name, tuple(row)), _values(row), many=False)


async def insert_many(
    conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]], fallback: Executable
) -> None:
    """Insert ``rows`` (all with the same members) into ``table`` in one round trip."""
    if not rows:
        return
    driver = await _driver(conn)
    if driver is None:
        await conn.execute(fallback, [dict(row) for row in rows])
        return
    sql = _insert_sql(table.name, tuple(rows[0]))
    await _run(driver, sql, [_values(row) for row in rows], many=True)


async def execute(
    conn: AsyncConnection, sql: str, args: Sequence[Any], fallback: Executable, params: Mapping[str, Any]
) -> int:
    """Run ``sql`` (PostgreSQL text with $n placeholders) or, where the hot path does not apply, ``fallback`` with
    ``params``; return the number of rows it changed."""
    driver = await _driver(conn)
    if driver is None:
        return int((await conn.execute(fallback, dict(params))).rowcount)
    count = (await _run(driver, sql, args, many=False)).rpartition(" ")[2]  # the command tag, e.g. "UPDATE 1"
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
    record = await _run(driver, sql, args, row=True)
    return None if record is None else dict(record.items())
