"""Typed errors of ``store/``."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import exc as sa

from protocol.errors import ComityError

__all__ = [
    "Conflict",
    "NotFound",
    "StoreError",
    "StoreUnavailable",
    "connection_lost",
    "is_transient",
    "outage_name",
    "transient_cause",
]


class StoreError(ComityError):
    code = "store-error"


class NotFound(StoreError):
    code = "not-found"


class Conflict(StoreError):
    """The change conflicts with what is stored (a duplicate id, a state that moved on)."""

    code = "conflict"


class StoreUnavailable(RuntimeError):
    """The database cannot be reached (store/db.py raises it for a refused or timed-out connection).

    Deliberately not a :class:`ComityError`: those are the request's fault, and the receiver answers them with a
    signed refusal, which a sender may take as final; an outage must leave every message to be retried."""

    code = "store-unavailable"


# SQLSTATE classes of failures that say nothing about the request: the connection (08, but not 08P01, a protocol
# violation such as a wrong number of arguments), a transaction the database rolled back to break a deadlock or a
# serialization conflict (40), too many connections (53300), an operator or crash shutdown, or a server still
# starting (57P), a lock not available in time (55P03)
_TRANSIENT_SQLSTATES = ("08", "40", "53300", "57P", "55P03")
_NOT_TRANSIENT_SQLSTATES = ("08P01",)
# SQLite primary result codes of the same kind: BUSY and LOCKED (a lock held longer than the busy timeout), NOMEM,
# IOERR, FULL (the disk), CANTOPEN (the file or its directory went away), PROTOCOL (a WAL lock race)
_TRANSIENT_SQLITE_CODES = frozenset({5, 6, 7, 10, 13, 14, 15})


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is the database failing rather than the request (see :func:`transient_cause`)."""
    return transient_cause(error) is not None


def outage_name(error: BaseException) -> str | None:
    """The type name to report for a failing database (what the connection raised, for :class:`StoreUnavailable`),
    or None when ``error`` is not one. Never its message: a driver's message may quote a row."""
    cause = transient_cause(error)
    return None if cause is None else type(cause.__cause__ or cause).__name__


def transient_cause(error: BaseException) -> BaseException | None:
    """The link of ``error``'s chain (the error, then what it was raised from) that shows the database failing
    rather than the request, or None: a lost or unreachable server, no pooled connection in time, a lock held past
    the busy timeout (SQLite's "database is locked"), a deadlock or serialization failure, a server shutting down.
    The same request may succeed a moment later. SQLAlchemy's errors, the drivers' own (the hot path, store/fast.py,
    talks to asyncpg directly) and an error raised from one of them (a coalesced lookup's, gateway/coalesce.py)
    are recognised. A programming error (wrong arguments, a missing table, a constraint) never is: retrying it
    would fail forever."""
    return next((link for link in _chain(error) if _is_transient(link)), None)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it was raised from, five links at most (e.g. LookupFailed <- SQLAlchemy's error <- its
    adapter's <- asyncpg's)."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__


def _closed(error: BaseException) -> bool:
    """asyncpg's InterfaceError is mostly misuse (wrong arguments, another operation in progress): only a closed
    connection counts as the database's doing."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return False
    return isinstance(error, asyncpg.InterfaceError) and "connection is closed" in str(error)


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, StoreUnavailable | sa.TimeoutError):  # unreachable; no connection free in the pool in time
        return True
    if isinstance(error, sa.DBAPIError):
        if error.connection_invalidated:  # SQLAlchemy saw the connection die under the statement
            return True
        # sqlite3 raises OperationalError for a missing table as for a lock: its result code tells them apart
        code = getattr(error.orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in _TRANSIENT_SQLITE_CODES
        return _transient_sqlstate(getattr(error.orig, "sqlstate", None))  # else: the chain's asyncpg error
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return False
    if isinstance(error, asyncpg.PostgresError):  # class 08 includes a connection closed under a statement
        return _transient_sqlstate(getattr(error, "sqlstate", None))
    return _closed(error)


def connection_lost(error: BaseException) -> bool:
    """Whether ``error``'s chain shows the connection gone under a statement, so that the database's answer was
    not heard (it may have committed): a closed or reset connection, or SQLSTATE class 08. Not a deadlock or a
    serialization failure: the server answered those, having rolled back."""
    return any(_lost(link) for link in _chain(error))


def _lost(error: BaseException) -> bool:
    if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OSError):  # a reset, a broken pipe; a timeout too: the answer may still come, unheard
        return True
    sqlstate = getattr(error, "sqlstate", None) or getattr(getattr(error, "orig", None), "sqlstate", None)
    return (isinstance(sqlstate, str) and sqlstate.startswith("08")) or _closed(error)  # 08003: no such connection


def _transient_sqlstate(sqlstate: object) -> bool:
    return (
        isinstance(sqlstate, str)
        and sqlstate.startswith(_TRANSIENT_SQLSTATES)
        and not sqlstate.startswith(_NOT_TRANSIENT_SQLSTATES)
    )
