"""Shared fixtures. Storage tests take ``db_url`` and run once on SQLite and once on PostgreSQL.

PostgreSQL is the server at 127.0.0.1:5432 (database ``test``, user ``postgres``, trust auth). Each test gets a
fresh schema of its own. Under ``CI=true`` a missing PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PG_ADMIN_DSN = os.environ.get("COMITY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_available() -> str | None:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        await conn.close()

    try:
        # fixtures call this from inside the test's event loop: probe on a loop of its own, in a thread
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, probe()).result()
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_PG_PROBLEM: str | bool | None = False  # False = not probed yet


def require_postgres() -> None:
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _postgres_available()
    if _PG_PROBLEM:
        message = f"PostgreSQL at {PG_ADMIN_DSN} is not reachable ({_PG_PROBLEM})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this is a failure, start it with .ci/run")
        pytest.skip(message)


class DatabaseFactory:
    """Makes empty databases of one backend: SQLite files, or fresh PostgreSQL schemas dropped afterwards."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.schemas: list[str] = []

    async def new(self, name: str = "comity") -> str:
        if self.backend == "sqlite":
            return f"sqlite+aiosqlite:///{self.tmp_path / (name + '.db')}"
        import asyncpg

        schema = f"t_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
        finally:
            await conn.close()
        self.schemas.append(schema)
        return PG_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://", 1) + f"?comity_schema={schema}"

    async def drop_all(self) -> None:
        if not self.schemas:
            return
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            for schema in self.schemas:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


@pytest.fixture(autouse=True)
def _library_logging_restored() -> Iterator[None]:
    """``configure_logging`` puts a handler on the root logger and raises its level: take both back after a test
    (pytest's own capture handlers come and go with each phase, so only ours is removed)."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if type(h).__module__ == "gateway.logs"]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def databases(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DatabaseFactory]:
    """A factory of empty databases, once for SQLite and once for PostgreSQL."""
    if request.param == "postgresql":
        require_postgres()
    factory = DatabaseFactory(request.param, tmp_path)
    yield factory
    await factory.drop_all()


@pytest.fixture
async def db_url(databases: DatabaseFactory) -> str:
    """A database URL for one empty database: a SQLite file, or a fresh PostgreSQL schema."""
    return await databases.new()


@pytest.fixture
async def pg_url(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh PostgreSQL schema, for what only PostgreSQL does (missing PostgreSQL: as for ``databases``)."""
    require_postgres()
    factory = DatabaseFactory("postgresql", tmp_path)
    yield await factory.new()
    await factory.drop_all()


@pytest.fixture
def asyncpg_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first two words of every statement store.fast sends to asyncpg itself (BEGIN and COMMIT included), in
    order, for tests that count round trips."""
    from store import fast

    statements: list[str] = []
    real_run = fast._run

    async def counted(driver: object, sql: str, args: object, **kwargs: bool) -> object:
        statements.append(" ".join(sql.split()[:2]))
        return await real_run(driver, sql, args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fast, "_run", counted)
    return statements
