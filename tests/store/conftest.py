"""Fixtures of the storage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from store.db import make_engine, run_migrations


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated engine on ``db_url`` (once on SQLite, once on PostgreSQL)."""
    await run_migrations(db_url)
    migrated = make_engine(db_url)
    yield migrated
    await migrated.dispose()
