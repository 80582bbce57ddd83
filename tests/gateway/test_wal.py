"""SQLite's WAL is checkpointed beside the writers, every second, not inside a commit (store/db.py, decision 81)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog
from sqlalchemy.exc import OperationalError

from gateway import app
from store.db import is_sqlite
from store.facts import write_fact
from tests.gateway.conftest import Pair


async def test_a_sqlite_gateway_moves_committed_rows_from_the_wal_into_the_database_within_seconds(
    pair: Pair,
) -> None:
    running = pair.ar.running
    assert running is not None
    url = running.gw.settings.database_dsn
    if not is_sqlite(url):
        assert running.wal_task is None  # PostgreSQL checkpoints itself
        return
    database = Path(url.removeprefix("sqlite+aiosqlite:///"))
    marker = f"wal-test-{uuid.uuid4()}"
    async with running.gw.engine.begin() as conn:
        await write_fact(conn, marker, {"written": True})
    # committed: in the WAL; in the database file only once checkpointed, which no commit does before 10,000
    # pages (the backstop), so only the gateway's own checkpoints can move it there
    for _ in range(50):
        if marker.encode() in await asyncio.to_thread(database.read_bytes):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the committed row never reached the database file")
    await pair.ar.stop()
    assert running.wal_task is not None and running.wal_task.done()


async def test_a_failing_wal_checkpoint_is_logged_once_per_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    seven = asyncio.Event()

    async def checkpoint(_reader: object) -> tuple[int, int, int]:
        nonlocal calls
        calls += 1
        if calls == 7:
            seven.set()
        if 2 <= calls <= 4:  # an outage of three ticks
            raise OperationalError("PRAGMA wal_checkpoint(PASSIVE)", None, sqlite3.OperationalError("disk I/O error"))
        return 0, 1, 1

    monkeypatch.setattr(app, "checkpoint_wal", checkpoint)
    with structlog.testing.capture_logs() as logged:
        task = asyncio.create_task(app.run_wal_checkpoints(SimpleNamespace(reader=None), interval=0.001))  # type: ignore[arg-type]
        await asyncio.wait_for(seven.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [line["event"] for line in logged] == ["wal_checkpoint_failed", "wal_checkpoint_recovered"]
