"""The benchmarks' databases: fresh PostgreSQL schemas in database ``test`` (dropped at the end), or SQLite files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import asyncpg

__all__ = ["PG_ADMIN_DSN", "create_schema", "drop_schemas", "new_database", "schema_url"]

PG_ADMIN_DSN = os.environ.get("COMITY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def create_schema(prefix: str = "bench") -> str:
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return schema


async def drop_schemas(schemas: Sequence[str | None]) -> None:
    names = [schema for schema in schemas if schema]
    if not names:
        return
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        for schema in names:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def schema_url(schema: str) -> str:
    """The gateway's database URL for ``schema`` of the benchmark server."""
    return PG_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://", 1) + f"?comity_schema={schema}"


async def new_database(backend: str, directory: Path, name: str) -> tuple[str, str | None]:
    """A database URL and, on PostgreSQL, the schema to drop afterwards: ``directory/name.db`` on SQLite."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{directory / (name + '.db')}", None
    schema = await create_schema(f"bench_{name}")
    return schema_url(schema), schema
