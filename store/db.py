"""Engines and migrations for the two supported stores.

* SQLite (``sqlite+aiosqlite:///path``), the embedded default: WAL journal, ``synchronous=FULL``, a busy timeout,
  and ``BEGIN IMMEDIATE`` for every transaction so that writers queue on the file lock instead of failing with
  "database is locked" when a read transaction later wants to write. FULL syncs the WAL at every commit: with
  NORMAL a power loss or an OS crash could undo the last commits after their receipts and checkpoints were
  signed and sent, and the peer holding them would then see our ledger's history change (decision 80). The
  gateway checkpoints the WAL itself, every second off the commit path (:func:`checkpoint_wal`); a commit does it
  only past ``WAL_AUTOCHECKPOINT_PAGES``, as a backstop (decision 81).
* PostgreSQL (``postgresql+asyncpg://...``), the production store. The pool is sized to the expected concurrency so
  that connections are never reopened under load. Every connection asks for ``synchronous_commit=on``, whatever
  the server's default. ``?comity_schema=NAME`` in the URL selects a schema through
  ``search_path`` (the tests give every test a fresh schema).

Both hide a statement's parameters from the errors SQLAlchemy raises (``hide_parameters``): a failed statement must
not quote a row's values (a case note, a sealed envelope) into an error or a log line. ``store.errors.is_transient``
tells a failing database from a failing request; the API answers the first with 503 ``store-unavailable``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError as AlembicError
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from store import fast, sqlite_fast
from store.errors import StoreError, StoreUnavailable

__all__ = [
    "checkpoint_wal",
    "is_sqlite",
    "make_engine",
    "make_reader",
    "run_migrations",
    "split_schema",
    "transaction_locks",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
CONNECT_TIMEOUT = 10.0  # seconds for a new PostgreSQL connection
# SQLite: a commit that finds this many pages (4 KiB each) in the WAL checkpoints it before it returns; the gateway
# checkpoints every second anyway, so this happens only if that falls behind (SQLite's default is 1,000: a commit
# every few seconds under load paid for a checkpoint, the tail of the latency at 100 envelopes/s)
WAL_AUTOCHECKPOINT_PAGES = 10_000
# and once checkpointed, a WAL file that a burst grew past this is cut back to it (SQLite keeps it at its largest)
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


def split_schema(url: str) -> tuple[str, str | None]:
    """Remove the ``comity_schema`` query parameter from ``url``; return the clean URL and the schema."""
    if "comity_schema=" not in url:
        return url, None
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for key, value in query if key == "comity_schema"), None)
    rest = [(key, value) for key, value in query if key != "comity_schema"]
    if schema is not None and not schema.replace("_", "").isalnum():
        raise StoreError("comity_schema must be letters, digits and underscores")
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _create_private(url: str) -> None:
    """Create a SQLite database file that does not exist yet readable by its owner only (SQLite would follow the
    umask; its -wal and -shm files take the database file's mode): it holds case notes and every metadata."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def make_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    """Create the async engine for ``url`` with the settings described in the module docstring."""
    clean, schema = split_schema(url)
    if is_sqlite(clean):
        _create_private(clean)
        # one writer at a time holds the file lock anyway: a small fixed pool, never reopened under load
        engine = create_async_engine(
            clean, connect_args={"timeout": 30}, pool_size=4, max_overflow=0, hide_parameters=True
        )
        _configure_sqlite(engine)
        return engine
    if not clean.startswith("postgresql+asyncpg://"):
        raise StoreError("database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    # a server that drops packets rather than refusing them fails a connection in 10 s, not asyncpg's 60
    # synchronous_commit on whatever the server's or database's default: a receipt leaves only once its commit is
    # on disk (decision 80)
    # and read committed, whatever the server's default: a transaction that waits for a lock (the ledger head, a
    # witness's peer) must then read what the holder committed, not a snapshot from before it waited
    server_settings = {
        "application_name": "comity",
        "synchronous_commit": "on",
        "default_transaction_isolation": "read committed",
    }
    connect_args: dict[str, Any] = {"server_settings": server_settings, "timeout": CONNECT_TIMEOUT}
    if schema:
        connect_args["server_settings"]["search_path"] = schema
    engine = create_async_engine(
        clean,
        pool_size=pool_size,
        max_overflow=min(5, pool_size),
        pool_pre_ping=False,
        pool_recycle=3600,
        # the most recently used connection first: the few a light load needs stay warm (their prepared statements
        # cached, PostgreSQL's plans made) instead of every statement visiting each of the pool's connections
        pool_use_lifo=True,
        connect_args=connect_args,
        hide_parameters=True,
    )
    fast.install(engine)  # rows the hot path queues are written before any other statement and before COMMIT

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        # asyncpg raises the socket's own error when the server cannot be reached; told apart here, where it can
        # only mean the database, not in the handlers, where it could be a client that went away
        try:
            return dialect.connect(*cargs, **cparams)
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"cannot connect to the database ({type(exc).__name__})") from exc

    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # take transaction control from the driver so that "begin" below decides how a transaction starts
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # durable before a receipt leaves: see the docstring
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # straight to aiosqlite (inside SQLAlchemy's greenlet, as its adapter awaits it): 140 us of CPU less per
        # transaction than exec_driver_sql, errors raised as SQLAlchemy's all the same (store/sqlite_fast.py)
        driver: Any = conn.connection.driver_connection
        try:
            with sqlite_fast.errors("BEGIN IMMEDIATE"):
                await_only(driver.execute("BEGIN IMMEDIATE"))
        except DBAPIError as exc:
            # SQLAlchemy handles what a statement raises, not what this event raises: a dead connection must be
            # dropped from the pool here, or it would fail every transaction it is handed to
            if exc.connection_invalidated:
                conn.invalidate(exc)
            raise


def make_reader(url: str, engine: AsyncEngine, *, pool_size: int = 20) -> AsyncEngine:
    """An engine for reads that need no transaction: no BEGIN/ROLLBACK round trips and, on SQLite, no write lock.

    PostgreSQL: the same pool in autocommit mode. SQLite: a pool of its own whose connections never begin a
    transaction (each statement reads a consistent WAL snapshot) and refuse writes (``query_only``).
    """
    clean, _ = split_schema(url)
    if not is_sqlite(clean):
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    readers = create_async_engine(clean, connect_args={"timeout": 30}, pool_size=pool_size, hide_parameters=True)

    @event.listens_for(readers.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return readers


async def checkpoint_wal(reader: AsyncEngine) -> tuple[int, int, int]:
    """SQLite: copy what the WAL holds into the database file without waiting for any reader or writer (PASSIVE), on
    a connection of the reader pool (no transaction, no write lock); return SQLite's (busy, frames in the WAL, frames
    checkpointed). Frames a reader's snapshot still needs stay for a later call."""
    async with reader.connect() as conn:
        busy, frames, done = (await conn.execute(text("PRAGMA wal_checkpoint(PASSIVE)"))).one()
    return int(busy), int(frames), int(done)


async def transaction_locks(conn: AsyncConnection, *keys: str) -> None:
    """Hold a lock on each of ``keys``, taken in that order, until the transaction of ``conn`` ends: PostgreSQL's
    advisory transaction locks; SQLite's ``BEGIN IMMEDIATE`` already serialises writers."""
    if conn.dialect.name == "postgresql":
        for key in keys:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def _alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["comity_url"] = url
    return config


async def run_migrations(url: str, revision: str = "head") -> str | None:
    """Bring the schema at ``url`` up to ``revision`` (``comity db upgrade``) and return the revision it is at then,
    read back from the database. A ``revision`` below the current one (a downgrade) or unknown is a
    :class:`StoreError`, and changes nothing."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(_upgrade, url, revision)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, url: str, revision: str) -> str | None:
    config = _alembic_config(url)
    config.attributes["connection"] = connection
    script = ScriptDirectory.from_config(config)
    current = MigrationContext.configure(connection).get_current_revision()
    try:
        target = script.get_revision(revision)
    except (AlembicError, RevisionError):
        raise StoreError(f"unknown revision {revision[:40]!r}; the newest is {script.get_current_head()}") from None
    if current is not None:
        below_current = {step.revision for step in script.walk_revisions(base="base", head=current)} - {current}
        if target is None or target.revision in below_current:
            raise StoreError(
                f"the database is at {current}, above {revision[:40]!r}: 'comity db upgrade' never downgrades"
            )
    command.upgrade(config, revision)
    return MigrationContext.configure(connection).get_current_revision()
