"""Bearer tokens of the local API: issue, authenticate, list and revoke.

Tokens are 256-bit random, shown once and stored as SHA-256; each has a public id, a label, scopes (at most what its
user's role allows, re-checked on every use), an expiry, and can be revoked. Issuing and revoking are ledgered as
``user.changed`` events (:mod:`store.accounts`); :class:`store.users.Users` offers the same operations.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store import fast, sqlite_fast
from store.accounts import (
    _USER_COLUMNS,
    ROLE_SCOPES,
    SCOPES,
    InvalidAccount,
    User,
    _record,
    _user_from,
    user_by_name,
)
from store.tables import tokens, users

__all__ = [
    "LOGIN_TOKEN_TTL",
    "MAX_TOKEN_TTL",
    "TOKEN_PREFIX",
    "IssuedToken",
    "TokenInfo",
    "Tokens",
    "hash_token",
    "token_digest",
]

TOKEN_PREFIX = "cmt_"  # noqa: S105 - a prefix, not a secret
LOGIN_TOKEN_TTL = timedelta(hours=12)
MAX_TOKEN_TTL = timedelta(days=366)

# every API call runs it (gateway.coalesce gathers concurrent calls into one): built once
_AUTHENTICATE_COLUMNS = (
    tokens.c.token_hash,
    *_USER_COLUMNS,
    tokens.c.expires_at,
    tokens.c.revoked_at,
    tokens.c.token_id,
    tokens.c.scopes,
)
_AUTHENTICATE = (
    select(*_AUTHENTICATE_COLUMNS)
    .join(tokens, tokens.c.user_id == users.c.id)
    .where(tokens.c.token_hash.in_(bindparam("b_hashes", expanding=True)), users.c.disabled.is_(False))
)
_AUTHENTICATE_SQL = (
    "SELECT t.token_hash, u.id, u.username, u.role, u.clearance, u.caveats, u.unit, u.disabled, u.created_at, "
    "t.expires_at, t.revoked_at, t.token_id, t.scopes FROM tokens t JOIN users u ON u.id = t.user_id "
    "WHERE t.token_hash = ANY($1::text[]) AND u.disabled = false"
)


def _qualified(column: Column[Any]) -> str:
    return f"{'t' if column.table is tokens else 'u'}.{column.name}"


# SQLite's text, its select list made of _AUTHENTICATE_COLUMNS in their order (sqlite_fast.typed_rows names the
# values by position), to be followed by the IN list of hashes
_AUTHENTICATE_SQLITE = (
    f"SELECT {', '.join(map(_qualified, _AUTHENTICATE_COLUMNS))} FROM tokens t JOIN users u ON u.id = t.user_id "  # noqa: S608
    "WHERE u.disabled = 0 AND t.token_hash IN "
)
_LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_digest(token: str) -> str | None:
    """The stored hash of what was presented as a token, or None when it cannot be one of ours."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128 or not token.isascii():  # ours are base64url
        return None
    return hash_token(token)


@dataclass(frozen=True)
class IssuedToken:
    token: str = field(repr=False)  # shown once; only its SHA-256 is stored
    token_id: str
    label: str
    scopes: frozenset[str]
    expires_at: datetime


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    label: str
    scopes: frozenset[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and self.expires_at is not None and self.expires_at > now


def _check_label(label: str) -> None:
    if not _LABEL.fullmatch(label):
        raise InvalidAccount("a token label is 1 to 64 lowercase letters, digits or '-'")


def _scopes_text(scopes: Iterable[str]) -> str:
    return " ".join(sorted(set(scopes)))


class Tokens:
    @staticmethod
    async def issue(
        conn: AsyncConnection,
        user: User,
        now: datetime,
        *,
        label: str,
        expires_at: datetime,
        scopes: Iterable[str] | None = None,
        actor: str = "system",
    ) -> IssuedToken:
        """Create a token for an enabled user and return it; only its hash is stored, so this is the one time it is
        seen. ``scopes`` default to everything the role allows and may not exceed it."""
        _check_label(label)
        if not now < expires_at <= now + MAX_TOKEN_TTL:
            raise InvalidAccount(f"a token expires after 0 and within {MAX_TOKEN_TTL.days} days")
        # locked: an admin's disable, role or password change committing meanwhile would otherwise revoke the tokens
        # it sees, not this one, which would then outlive it (PostgreSQL, read committed)
        current = await user_by_name(conn, user.username, lock=True)
        if current.id != user.id or current.disabled:
            raise InvalidAccount(f"user {user.username!r} is disabled")
        allowed = ROLE_SCOPES[current.role]
        wanted = allowed if scopes is None else frozenset(scopes)
        if unknown := wanted - set(SCOPES):
            raise InvalidAccount(f"unknown scope(s) {', '.join(sorted(unknown))}; known: {', '.join(SCOPES)}")
        if excess := wanted - allowed:
            raise InvalidAccount(f"the {current.role} role cannot hold {', '.join(sorted(excess))}")
        if not wanted:
            raise InvalidAccount("a token needs at least one scope")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(8)
        await conn.execute(
            insert(tokens).values(
                token_hash=hash_token(token),
                user_id=current.id,
                label=label,
                created_at=now,
                expires_at=expires_at,
                token_id=token_id,
                scopes=_scopes_text(wanted),
            )
        )
        await _record(conn, now, actor, current.username, "token-issued", reason=label, related_id=token_id)
        return IssuedToken(token, token_id, label, wanted, expires_at)

    @staticmethod
    async def issue_token(
        conn: AsyncConnection,
        user: User,
        label: str,
        now: datetime,
        expires_at: datetime | None,
        *,
        scopes: Iterable[str] | None = None,
        actor: str = "system",
    ) -> str:
        """:meth:`issue`, returning the token only (every token expires: ``expires_at`` is required)."""
        if expires_at is None:
            raise InvalidAccount("every token expires; give an expiry")
        issued = await Tokens.issue(conn, user, now, label=label, expires_at=expires_at, scopes=scopes, actor=actor)
        return issued.token

    @staticmethod
    async def authenticate(conn: AsyncConnection, token: str, now: datetime) -> User | None:
        """The user of a valid token (with the token's scopes, cut to what the role allows now), else None."""
        digest = token_digest(token)
        if digest is None:
            return None
        found = await Tokens.by_digest(conn, [digest])
        return Tokens.user_of(found.get(digest), now)

    @staticmethod
    async def by_digest(conn: AsyncConnection, digests: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        """The rows of the tokens of enabled users among ``digests`` (hashes), by hash: one query for them all. On
        SQLite it is read straight from aiosqlite on any connection, without beginning a transaction (callers read
        it on the reader pool, or inside a transaction they began)."""
        hashes = list(digests)
        lite = await sqlite_fast.driver(conn, read=True) if len(hashes) <= sqlite_fast.IN_MAX else None
        rows: Sequence[Mapping[str, Any]]
        if lite is not None:  # SQLite: its own text, past SQLAlchemy, converted by the columns' result processors
            sql = _AUTHENTICATE_SQLITE + sqlite_fast.in_list(len(hashes))
            rows = await sqlite_fast.typed_rows(lite, conn.dialect, sql, hashes, _AUTHENTICATE_COLUMNS)
        else:
            rows = await fast.fetch_rows(
                conn, _AUTHENTICATE_SQL, (hashes,), _AUTHENTICATE, {"b_hashes": hashes}, read=True
            )
        return {row["token_hash"]: row for row in rows}

    @staticmethod
    def user_of(row: Mapping[str, Any] | None, now: datetime) -> User | None:
        """The user a token row of :meth:`by_digest` authenticates at ``now``: None if revoked or expired."""
        if row is None or row["revoked_at"] is not None:
            return None
        if row["expires_at"] is None or row["expires_at"] <= now:  # every token expires (migration 0010)
            return None
        scopes = frozenset(row["scopes"].split()) & ROLE_SCOPES.get(row["role"], frozenset())
        return _user_from(row, scopes=scopes, token_id=row["token_id"])

    @staticmethod
    async def tokens_of(conn: AsyncConnection, username: str) -> list[TokenInfo]:
        """The tokens of a user, oldest first (ids, labels, scopes and times: no hashes)."""
        user = await user_by_name(conn, username)
        rows = await conn.execute(
            select(tokens).where(tokens.c.user_id == user.id).order_by(tokens.c.created_at, tokens.c.token_id)
        )
        return [
            TokenInfo(
                row.token_id,
                row.label,
                frozenset(row.scopes.split()),
                row.created_at,
                row.expires_at,
                row.revoked_at,
            )
            for row in rows
        ]

    @staticmethod
    async def revoke_tokens(conn: AsyncConnection, user: User, now: datetime, *, actor: str = "system") -> int:
        """Revoke every active token of ``user``; return how many."""
        result = await conn.execute(
            update(tokens).where(tokens.c.user_id == user.id, tokens.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        count = int(result.rowcount)
        if count:
            await _record(conn, now, actor, user.username, "tokens-revoked")
        return count

    @staticmethod
    async def revoke_token(
        conn: AsyncConnection,
        username: str,
        now: datetime,
        *,
        token_id: str | None = None,
        label: str | None = None,
        actor: str = "system",
    ) -> int:
        """Revoke one token of ``username`` by its id, or all its tokens with ``label``; return how many."""
        if (token_id is None) == (label is None):
            raise InvalidAccount("name a token by its id or by its label")
        user = await user_by_name(conn, username)
        where = [tokens.c.user_id == user.id, tokens.c.revoked_at.is_(None)]
        if token_id is not None:
            if not _TOKEN_ID.fullmatch(token_id):
                raise InvalidAccount("a token id is 16 hex digits")
            where.append(tokens.c.token_id == token_id)
        else:
            assert label is not None
            where.append(tokens.c.label == label)
        found = (await conn.execute(select(tokens.c.token_id, tokens.c.label).where(*where))).all()
        for row in found:
            await conn.execute(update(tokens).where(tokens.c.token_id == row.token_id).values(revoked_at=now))
            reason = row.label if _LABEL.fullmatch(row.label) else None
            await _record(conn, now, actor, username, "token-revoked", reason=reason, related_id=row.token_id)
        return len(found)

    @staticmethod
    async def revoke_presented(conn: AsyncConnection, token: str, now: datetime) -> User | None:
        """Revoke the token itself (a logout); return its user, or None when it was not valid anyway."""
        user = await Tokens.authenticate(conn, token, now)
        if user is None or user.token_id is None:
            return None
        await Tokens.revoke_token(conn, user.username, now, token_id=user.token_id, actor=f"user:{user.username}")
        return user
