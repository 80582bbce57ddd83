"""Users: creating accounts and changing their role, clearance, caveats, unit, state and password.

* A user has a role (officer, supervisor, auditor, admin), a clearance (a level of the marking scheme), the caveats it
  is authorised for, and a unit. Case assignment lives elsewhere.
* Every change is a ``user.changed`` ledger event appended in the caller's transaction (:mod:`store.accounts`).

:class:`Users` is the one entry point for accounts, tokens and password logins: the record and the roles are in
:mod:`store.accounts`, bearer tokens in :mod:`store.tokens`, passwords and login throttling in :mod:`store.logins`;
this module re-exports their public names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from protocol.markings import MarkingScheme
from protocol.messages import Marking
from store.accounts import (
    _USER_COLUMNS,
    _USERNAME,
    DEFAULT_CLEARANCE,
    ROLE_SCOPES,
    ROLES,
    SCOPES,
    InvalidAccount,
    User,
    _record,
    _user_from,
    update_user,
    user_by_name,
)
from store.errors import Conflict, NotFound
from store.logins import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    PASSWORD_HASHER,
    LoginFailed,
    LoginThrottled,
    Throttle,
    hash_password,
    login,
    needs_rehash,
    verify_password,
)
from store.tables import users
from store.tokens import (
    LOGIN_TOKEN_TTL,
    MAX_TOKEN_TTL,
    TOKEN_PREFIX,
    IssuedToken,
    TokenInfo,
    Tokens,
    hash_token,
)

__all__ = [
    "LOGIN_TOKEN_TTL",
    "MAX_TOKEN_TTL",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "PASSWORD_HASHER",
    "ROLES",
    "ROLE_SCOPES",
    "SCOPES",
    "TOKEN_PREFIX",
    "InvalidAccount",
    "IssuedToken",
    "LoginFailed",
    "LoginThrottled",
    "Throttle",
    "TokenInfo",
    "User",
    "Users",
    "hash_password",
    "hash_token",
    "needs_rehash",
    "verify_password",
]

_UNIT = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def _check_username(username: str) -> None:
    if not _USERNAME.fullmatch(username):
        raise InvalidAccount("a user name is 1 to 64 lowercase letters, digits, '.', '_' or '-'")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidAccount(f"role must be one of {', '.join(ROLES)}")


def _check_clearance(clearance: str, scheme: MarkingScheme) -> None:
    if clearance not in scheme.levels:
        raise InvalidAccount(f"clearance must be one of {', '.join(scheme.levels)}")


def _normal_caveats(caveats: Iterable[str], scheme: MarkingScheme) -> tuple[str, ...]:
    result = tuple(sorted(set(caveats)))
    for caveat in result:
        if caveat not in scheme.caveats:
            raise InvalidAccount(f"unknown caveat {caveat!r}; known caveats: {', '.join(scheme.caveats)}")
    return result


def _check_unit(unit: str) -> None:
    if unit and not _UNIT.fullmatch(unit):
        raise InvalidAccount("a unit is 1 to 64 lowercase letters, digits or '-'")


def _marking_of(clearance: str, caveats: Sequence[str]) -> Marking:
    return Marking(level=clearance, caveats=sorted(caveats))


class Users:
    # --- accounts ---------------------------------------------------------------------------------------------

    @staticmethod
    async def create(
        conn: AsyncConnection,
        username: str,
        role: str,
        now: datetime,
        *,
        clearance: str = DEFAULT_CLEARANCE,
        caveats: Iterable[str] = (),
        unit: str = "",
        password: str | None = None,
        actor: str = "system",
        scheme: MarkingScheme | None = None,
    ) -> User:
        """Create a user (and ledger it). Without ``password`` the account can only use tokens."""
        scheme = scheme or MarkingScheme()
        _check_username(username)
        _check_role(role)
        _check_clearance(clearance, scheme)
        normal = _normal_caveats(caveats, scheme)
        _check_unit(unit)
        password_hash = None if password is None else hash_password(password, PASSWORD_HASHER)
        if (await conn.execute(select(users.c.id).where(users.c.username == username))).first():
            raise Conflict(f"user {username!r} already exists")
        result = await conn.execute(
            insert(users)
            .values(
                username=username,
                role=role,
                created_at=now,
                disabled=False,
                clearance=clearance,
                caveats=json.dumps(list(normal)),
                unit=unit,
                password_hash=password_hash,
            )
            .returning(users.c.id)
        )
        await _record(
            conn, now, actor, username, f"created-{role}", marking=_marking_of(clearance, normal), reason=unit or None
        )
        return User(
            int(result.scalar_one()),
            username,
            role,
            clearance=clearance,
            caveats=normal,
            unit=unit,
            password_hash=password_hash,
            created_at=now,
        )

    @staticmethod
    async def by_name(conn: AsyncConnection, username: str) -> User:
        """The user named ``username``; ``NotFound`` if there is none."""
        return await user_by_name(conn, username)

    @staticmethod
    async def list_users(conn: AsyncConnection) -> list[User]:
        """Every user, by name."""
        rows = await conn.execute(select(*_USER_COLUMNS, users.c.password_hash).order_by(users.c.username))
        return [_user_from(row) for row in rows]

    @staticmethod
    async def actor(conn: AsyncConnection, operator: str) -> str:
        """The ledger actor for a change made by ``operator``: ``system``, or an enabled admin's ``user:<name>``."""
        if operator == "system":
            return "system"
        try:
            found = await Users.by_name(conn, operator)
        except NotFound:
            raise InvalidAccount(f"operator {operator!r} is not a user; name an admin or 'system'") from None
        if found.disabled or found.role != "admin":
            raise InvalidAccount(f"operator {operator!r} is not an enabled admin")
        return f"user:{found.username}"

    @staticmethod
    async def _change(conn: AsyncConnection, user: User, **values: Any) -> None:
        await update_user(conn, user, **values)

    @staticmethod
    def _not_own(actor: str, username: str, what: str) -> None:
        """What widens access (role, clearance, caveats, unit) is changed for an admin by someone else: another
        admin, or the host's operator as ``system`` (decision 108)."""
        if actor == f"user:{username}":
            raise InvalidAccount(f"an admin does not change her own {what}: another admin or the operator does")

    @staticmethod
    async def set_role(conn: AsyncConnection, username: str, role: str, now: datetime, *, actor: str) -> User:
        _check_role(role)
        Users._not_own(actor, username, "role")
        user = await Users.by_name(conn, username)
        if user.role != role:
            await Users._change(conn, user, role=role)
            await _record(conn, now, actor, username, f"role-{role}")
        return await Users.by_name(conn, username)

    @staticmethod
    async def set_clearance(
        conn: AsyncConnection,
        username: str,
        clearance: str,
        now: datetime,
        *,
        actor: str,
        scheme: MarkingScheme | None = None,
    ) -> User:
        _check_clearance(clearance, scheme or MarkingScheme())
        Users._not_own(actor, username, "clearance")
        user = await Users.by_name(conn, username)
        if user.clearance != clearance:
            await Users._change(conn, user, clearance=clearance)
            await _record(conn, now, actor, username, "clearance-changed", marking=_marking_of(clearance, user.caveats))
        return await Users.by_name(conn, username)

    @staticmethod
    async def set_caveats(
        conn: AsyncConnection,
        username: str,
        caveats: Iterable[str],
        now: datetime,
        *,
        actor: str,
        scheme: MarkingScheme | None = None,
    ) -> User:
        normal = _normal_caveats(caveats, scheme or MarkingScheme())
        Users._not_own(actor, username, "caveats")
        user = await Users.by_name(conn, username)
        if user.caveats != normal:
            await Users._change(conn, user, caveats=json.dumps(list(normal)))
            await _record(conn, now, actor, username, "caveats-changed", marking=_marking_of(user.clearance, normal))
        return await Users.by_name(conn, username)

    @staticmethod
    async def set_unit(conn: AsyncConnection, username: str, unit: str, now: datetime, *, actor: str) -> User:
        _check_unit(unit)
        Users._not_own(actor, username, "unit")
        user = await Users.by_name(conn, username)
        if user.unit != unit:
            await Users._change(conn, user, unit=unit)
            await _record(conn, now, actor, username, "unit-changed", reason=unit or None)
        return await Users.by_name(conn, username)

    @staticmethod
    async def set_disabled(conn: AsyncConnection, username: str, disabled: bool, now: datetime, *, actor: str) -> User:
        """Disable (which also revokes every token, so that enabling again resurrects none) or enable."""
        user = await Users.by_name(conn, username)
        if user.disabled != disabled:
            await Users._change(conn, user, disabled=disabled)
            await _record(conn, now, actor, username, "disabled" if disabled else "enabled")
        if disabled:
            await Users.revoke_tokens(conn, user, now, actor=actor)
        return await Users.by_name(conn, username)

    @staticmethod
    async def set_password(
        conn: AsyncConnection, username: str, password: str | None, now: datetime, *, actor: str
    ) -> User:
        """Set (or with ``None`` remove) the password; tokens from password logins are revoked."""
        password_hash = None if password is None else hash_password(password, PASSWORD_HASHER)
        user = await Users.by_name(conn, username)
        await Users._change(conn, user, password_hash=password_hash)
        await _record(conn, now, actor, username, "password-changed" if password is not None else "password-removed")
        await Users.revoke_token(conn, username, now, label="login", actor=actor)
        return await Users.by_name(conn, username)

    # --- tokens (store.tokens) --------------------------------------------------------------------------------

    issue = staticmethod(Tokens.issue)
    issue_token = staticmethod(Tokens.issue_token)
    authenticate = staticmethod(Tokens.authenticate)
    tokens_of = staticmethod(Tokens.tokens_of)
    revoke_tokens = staticmethod(Tokens.revoke_tokens)
    revoke_token = staticmethod(Tokens.revoke_token)
    revoke_presented = staticmethod(Tokens.revoke_presented)

    # --- password login (store.logins) --------------------------------------------------------------------------

    @staticmethod
    async def login(
        engine: AsyncEngine,
        username: str,
        password: str,
        source: str,
        now: datetime,
        *,
        ttl: timedelta = LOGIN_TOKEN_TTL,
        scopes: Iterable[str] | None = None,
        throttle: Throttle | None = None,
    ) -> tuple[User, IssuedToken]:
        """:func:`store.logins.login` with this module's :data:`PASSWORD_HASHER` (read on every call, so that
        replacing ``store.users.PASSWORD_HASHER`` changes the hashing of logins as it does of account changes)."""
        return await login(
            engine, username, password, source, now, ttl=ttl, scopes=scopes, throttle=throttle, hasher=PASSWORD_HASHER
        )
