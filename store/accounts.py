"""The account record that users, tokens and logins share: :class:`User`, the roles and the scopes each may hold,
the account error, and the ``user.changed`` ledger event.

Every change of a user or a token is a ``user.changed`` ledger event appended in the caller's transaction (actor,
subject ``user:<name>``, state; a marking for clearance and caveats; never a password, hash or token). Account
operations are in :mod:`store.users`, tokens in :mod:`store.tokens`, passwords and logins in :mod:`store.logins`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.errors import ComityError
from protocol.events import EventType, LedgerEvent
from protocol.markings import MarkingScheme, caveat_name
from protocol.messages import Marking
from protocol.timefmt import format_time
from store.errors import NotFound
from store.events import EventLog
from store.tables import users

__all__ = [
    "CONTENT_OPEN",
    "DEFAULT_CLEARANCE",
    "ROLES",
    "ROLE_SCOPES",
    "SCOPES",
    "InvalidAccount",
    "User",
    "update_user",
    "user_by_name",
]

ROLES = ("officer", "supervisor", "auditor", "admin")
CONTENT_OPEN = "content:open"  # what every route or step that decrypts content, or shows what it says, needs
SCOPES = (
    "messages:read",
    "messages:write",
    "content:open",
    "cases:assign",
    "ledger:read",
    "stats:read",
    "metrics:read",
    "admin",
)
# what a role may hold; a token's scopes are a subset, intersected again with the role's on every request
ROLE_SCOPES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "officer": frozenset({"messages:read", "messages:write", "content:open"}),
        "supervisor": frozenset(
            {"messages:read", "messages:write", "content:open", "cases:assign", "ledger:read", "stats:read"}
        ),
        # metadata only: never content:open; statistics are aggregates of codes, not content
        "auditor": frozenset({"messages:read", "ledger:read", "stats:read", "metrics:read"}),
        # manages accounts, never sees content; metrics:read for a monitoring token (decision 122)
        "admin": frozenset({"admin", "messages:read", "ledger:read", "metrics:read"}),
    }
)
DEFAULT_CLEARANCE = "UNCLASSIFIED"

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # what a ledger actor "user:<name>" allows


class InvalidAccount(ComityError):
    """A user name, role, clearance, caveat, unit, label, scope, expiry or password that is not acceptable."""

    code = "invalid-request"


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    clearance: str = DEFAULT_CLEARANCE
    caveats: tuple[str, ...] = ()  # caveat ids the user is authorised for, sorted
    unit: str = ""
    disabled: bool = False
    password_hash: str | None = field(default=None, repr=False, compare=False)  # never logged
    created_at: datetime | None = None
    scopes: frozenset[str] = frozenset()  # of the token that authenticated this request; empty otherwise
    token_id: str | None = None  # that token's public id

    @property
    def has_password(self) -> bool:
        return self.password_hash is not None

    def cleared_for(self, marking: Marking, scheme: MarkingScheme) -> bool:
        """Clearance at least the marking's level and every caveat authorised (embargo dates and case assignment
        are for the caller to check)."""
        try:
            scheme.check(marking)
            if scheme.rank(self.clearance) < scheme.rank(marking.level):
                return False
        except ComityError:
            return False
        return all(caveat_name(caveat) in self.caveats for caveat in marking.caveats)


def _user_from(row: Any, *, scopes: frozenset[str] = frozenset(), token_id: str | None = None) -> User:
    """A user of a SQLAlchemy row or of a mapping of column names (store/fast.py's rows)."""
    mapping = row if isinstance(row, Mapping) else row._mapping
    return User(
        id=int(mapping["id"]),
        username=mapping["username"],
        role=mapping["role"],
        clearance=mapping["clearance"],
        caveats=tuple(json.loads(mapping["caveats"])),
        unit=mapping["unit"],
        disabled=bool(mapping["disabled"]),
        password_hash=mapping.get("password_hash"),
        created_at=mapping["created_at"],
        scopes=scopes,
        token_id=token_id,
    )


_USER_COLUMNS = (
    users.c.id,
    users.c.username,
    users.c.role,
    users.c.clearance,
    users.c.caveats,
    users.c.unit,
    users.c.disabled,
    users.c.created_at,
)


def _log(conn: AsyncConnection) -> EventLog:
    # PostgreSQL needs SELECT ... FOR UPDATE on the ledger head; SQLite's BEGIN IMMEDIATE already holds the lock
    return EventLog(for_update=conn.dialect.name != "sqlite")


async def _record(
    conn: AsyncConnection,
    now: datetime,
    actor: str,
    username: str,
    state: str,
    *,
    marking: Marking | None = None,
    reason: str | None = None,
    related_id: str | None = None,
) -> None:
    event: dict[str, Any] = {
        "type": EventType.USER_CHANGED.value,
        "time": format_time(now),
        "actor": actor,
        "subject": f"user:{username}",
        "state": state,
    }
    if marking is not None:
        event["marking"] = marking.to_json()
    if reason:
        event["reason"] = reason
    if related_id is not None:
        event["related_id"] = related_id
    await _log(conn).append(conn, LedgerEvent.parse(event))


async def user_by_name(conn: AsyncConnection, username: str, *, lock: bool = False) -> User:
    """The user ``username``; with ``lock``, its row locked until the transaction ends (PostgreSQL: a change of
    the account in flight is waited for and then seen; SQLite's writers already run one at a time). The lock is
    FOR NO KEY UPDATE: it does not block the foreign-key checks of rows that name the user (an assignment, a
    message's author), which a group commit makes while it holds the ledger head this transaction appends to next;
    FOR UPDATE did, and the two deadlocked."""
    query = select(*_USER_COLUMNS, users.c.password_hash).where(users.c.username == username)
    row = (await conn.execute(query.with_for_update(key_share=True) if lock else query)).one_or_none()
    if row is None:
        raise NotFound(f"no user {username!r}")
    return _user_from(row)


async def update_user(conn: AsyncConnection, user: User, **values: Any) -> None:
    await conn.execute(update(users).where(users.c.id == user.id).values(**values))
