"""Users and bearer tokens. Tokens are shown once and stored as SHA-256 (they are 256-bit random)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store.errors import Conflict, NotFound
from store.tables import tokens, users

__all__ = ["ROLES", "TOKEN_PREFIX", "User", "Users", "hash_token"]

ROLES = ("officer", "supervisor", "auditor", "admin")
TOKEN_PREFIX = "cmt_"  # noqa: S105 - a prefix, not a secret


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str


class Users:
    @staticmethod
    async def create(conn: AsyncConnection, username: str, role: str, now: datetime) -> User:
        if role not in ROLES:
            raise Conflict(f"role must be one of {', '.join(ROLES)}")
        if (await conn.execute(select(users.c.id).where(users.c.username == username))).first():
            raise Conflict(f"user {username!r} already exists")
        result = await conn.execute(
            insert(users).values(username=username, role=role, created_at=now, disabled=False).returning(users.c.id)
        )
        return User(int(result.scalar_one()), username, role)

    @staticmethod
    async def by_name(conn: AsyncConnection, username: str) -> User:
        row = (await conn.execute(select(users).where(users.c.username == username))).one_or_none()
        if row is None:
            raise NotFound(f"no user {username!r}")
        return User(row.id, row.username, row.role)

    @staticmethod
    async def issue_token(
        conn: AsyncConnection, user: User, label: str, now: datetime, expires_at: datetime | None
    ) -> str:
        """Create a token and return it; only its hash is stored, so this is the one time it is seen."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        await conn.execute(
            insert(tokens).values(
                token_hash=hash_token(token), user_id=user.id, label=label, created_at=now, expires_at=expires_at
            )
        )
        return token

    @staticmethod
    async def authenticate(conn: AsyncConnection, token: str, now: datetime) -> User | None:
        query = (
            select(users.c.id, users.c.username, users.c.role, tokens.c.expires_at, tokens.c.revoked_at)
            .join(tokens, tokens.c.user_id == users.c.id)
            .where(tokens.c.token_hash == hash_token(token), users.c.disabled.is_(False))
        )
        row = (await conn.execute(query)).one_or_none()
        if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        return User(row.id, row.username, row.role)

    @staticmethod
    async def revoke_tokens(conn: AsyncConnection, user: User, now: datetime) -> int:
        result = await conn.execute(
            update(tokens).where(tokens.c.user_id == user.id, tokens.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        return int(result.rowcount)
