"""Shared fixtures. Storage tests take ``db_url`` and run once on SQLite and once on PostgreSQL.

PostgreSQL is the server at 127.0.0.1:5432 (database ``test``, user ``postgres``, trust auth). Each test gets a
fresh schema of its own. Under ``CI=true`` a missing PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

PG_ADMIN_DSN = os.environ.get("COMITY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_available() -> str | None:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_PG_PROBLEM: str | None | bool = False  # False = not probed yet


def require_postgres() -> None:
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _postgres_available()
    if _PG_PROBLEM:
        message = f"PostgreSQL at {PG_ADMIN_DSN} is not reachable ({_PG_PROBLEM})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this is a failure, start it with .ci/run")
        pytest.skip(message)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database URL for an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'comity.db'}"
        return
    require_postgres()
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)
    yield f"{base}?comity_schema={schema}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
