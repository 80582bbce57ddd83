"""Small durable facts of one gateway, as JSON values under a key (table ``settings_state``)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from store.tables import settings_state

__all__ = ["claim_fact", "delete_fact", "read_fact", "read_facts", "write_fact"]


async def read_fact(conn: AsyncConnection, key: str, *, lock: bool = False) -> Any:
    """The JSON value stored under ``key``, or None; with ``lock``, its row stays locked until the caller's
    transaction ends (PostgreSQL; SQLite's writers are one at a time anyway)."""
    query = select(settings_state.c.value).where(settings_state.c.key == key)
    value = (await conn.execute(query.with_for_update() if lock else query)).scalar_one_or_none()
    return None if value is None else json.loads(value)


async def read_facts(conn: AsyncConnection, prefix: str) -> dict[str, Any]:
    """Every JSON value stored under a key that starts with ``prefix``, by the rest of the key."""
    query = select(settings_state.c.key, settings_state.c.value).where(
        settings_state.c.key.startswith(prefix, autoescape=True)
    )
    return {row.key[len(prefix) :]: json.loads(row.value) for row in await conn.execute(query)}


async def write_fact(conn: AsyncConnection, key: str, value: Any) -> None:
    """Store ``value`` (JSON) under ``key``, replacing what was there, in the caller's transaction (one upsert, so
    that two writers never both miss the row and collide on inserting it)."""
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    statement = insert(settings_state).values(key=key, value=json.dumps(value, sort_keys=True))
    await conn.execute(
        statement.on_conflict_do_update(index_elements=[settings_state.c.key], set_={"value": statement.excluded.value})
    )


async def claim_fact(conn: AsyncConnection, key: str, value: Any) -> Any:
    """Store ``value`` under ``key`` unless a value is there already; return the value stored (ours, or the one
    another writer stored first), in the caller's transaction."""
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    statement = insert(settings_state).values(key=key, value=json.dumps(value, sort_keys=True))
    await conn.execute(statement.on_conflict_do_nothing(index_elements=[settings_state.c.key]))
    return await read_fact(conn, key)


async def delete_fact(conn: AsyncConnection, key: str) -> None:
    """Forget the value under ``key`` (nothing if there is none), in the caller's transaction."""
    await conn.execute(delete(settings_state).where(settings_state.c.key == key))
