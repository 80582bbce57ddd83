"""Passwords and password logins: argon2id hashing, the login that issues a token, and its throttling.

* Passwords are hashed with argon2id (argon2-cffi, the RFC 9106 low-memory profile: t=3, m=64 MiB, p=4). A login for
  an unknown user verifies against a dummy hash, so both paths cost the same.
* Password logins are throttled per attempted user name (whether it exists or not) and per source address.

Every function that hashes takes an optional ``hasher`` (default :data:`PASSWORD_HASHER`); :mod:`store.users` passes
its own ``PASSWORD_HASHER``, which is this one unless replaced (tests use cheap parameters).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from protocol.errors import ComityError
from store.accounts import _USERNAME, InvalidAccount, User, update_user, user_by_name
from store.db import transaction_locks
from store.tables import login_attempts, users
from store.tokens import LOGIN_TOKEN_TTL, IssuedToken, Tokens

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "PASSWORD_HASHER",
    "LoginFailed",
    "LoginThrottled",
    "Throttle",
    "hash_password",
    "login",
    "needs_rehash",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024

# RFC 9106 section 4, second recommended option (argon2-cffi's default profile), spelled out so that a library
# upgrade never changes it silently; stored hashes carry their parameters, and logins rehash outdated ones
PASSWORD_HASHER = PasswordHasher(
    time_cost=3, memory_cost=64 * 1024, parallelism=4, hash_len=32, salt_len=16, type=Type.ID
)


class LoginFailed(ComityError):
    """Wrong user name or password (or a disabled or password-less account): deliberately indistinguishable."""

    code = "unauthenticated"


class LoginThrottled(ComityError):
    """Too many failed logins for this user name or from this address; ``retry_after`` is in whole seconds."""

    code = "login-throttled"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after} s")
        self.retry_after = retry_after


def _check_password(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidAccount(f"a password must have {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    """The argon2id PHC string (``$argon2id$v=19$m=...``) of ``password``, with a fresh random salt."""
    _check_password(password)
    return _hasher(hasher).hash(password)


def verify_password(password_hash: str, password: str, hasher: PasswordHasher | None = None) -> bool:
    try:
        return _hasher(hasher).verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str, hasher: PasswordHasher | None = None) -> bool:
    """True when ``password_hash`` was made with other parameters than the hasher's (:data:`PASSWORD_HASHER`)."""
    try:
        return _hasher(hasher).check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def _hasher(hasher: PasswordHasher | None) -> PasswordHasher:
    return PASSWORD_HASHER if hasher is None else hasher


@functools.lru_cache(maxsize=4)
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash(secrets.token_urlsafe(24))


def _verify_or_dummy(password_hash: str | None, password: str, hasher: PasswordHasher) -> bool:
    """Verify against the stored hash, or against a dummy one with the same cost when there is none."""
    if password_hash is None:
        verify_password(_dummy_hash(hasher), password, hasher)
        return False
    return verify_password(password_hash, password, hasher)


@dataclass(frozen=True)
class Throttle:
    """Password-login throttling: after ``per_username`` failures for one name (or ``per_source`` from one address)
    within ``window``, attempts are refused until ``base_delay`` (doubling with every further failure, at most
    ``max_delay``) has passed since the last one. The per-source limit is higher because offices share addresses."""

    window: timedelta = timedelta(minutes=15)
    per_username: int = 5
    per_source: int = 20
    base_delay: timedelta = timedelta(seconds=30)
    max_delay: timedelta = timedelta(minutes=15)

    def wait(self, failures: int, limit: int, last: datetime | None, now: datetime) -> float:
        if failures < limit or last is None:
            return 0.0
        delay = min(self.base_delay * (2 ** min(failures - limit, 16)), self.max_delay)
        return float((last + delay - now).total_seconds())


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
    hasher: PasswordHasher | None = None,
) -> tuple[User, IssuedToken]:
    """Check a password and issue a login token, with throttling.

    Raises :class:`LoginThrottled` (nothing is checked or recorded) or :class:`LoginFailed` (the same for an
    unknown name, a wrong password, a disabled or password-less account). The attempt is recorded before the
    password is checked, so concurrent guesses count too; a success removes the name's failures. The argon2
    verification runs in a thread, outside any transaction. ``hasher`` defaults to :data:`PASSWORD_HASHER`.
    """
    throttle = throttle or Throttle()
    hasher = _hasher(hasher)
    name = username.strip().lower()[:256]
    key = hashlib.sha256(b"comity-login\0" + name.encode("utf-8")).hexdigest()
    source = (source or "unknown")[:64]
    async with engine.begin() as conn:
        # one attempt per name, and one per address, at a time: parallel guesses are counted one after the other,
        # not all below the limit at once; always the name's lock first, so that two attempts never wait on each
        # other's
        await transaction_locks(conn, key, f"comity-login-source:{source}")
        await conn.execute(delete(login_attempts).where(login_attempts.c.attempted_at < now - throttle.window))
        wait = max(
            await _throttle_wait(conn, login_attempts.c.username_sha256 == key, throttle.per_username, throttle, now),
            await _throttle_wait(conn, login_attempts.c.source == source, throttle.per_source, throttle, now),
        )
        if wait > 0:
            raise LoginThrottled(max(1, math.ceil(wait)))
        attempt = (
            await conn.execute(
                insert(login_attempts)
                .values(username_sha256=key, source=source, attempted_at=now)
                .returning(login_attempts.c.id)
            )
        ).scalar_one()
        row = None
        if _USERNAME.fullmatch(name):
            query = select(users.c.password_hash, users.c.disabled).where(users.c.username == name)
            row = (await conn.execute(query)).one_or_none()
    stored = None if row is None else row.password_hash
    verified = await asyncio.to_thread(_verify_or_dummy, stored, password, hasher)
    if not verified or row is None or row.disabled:
        raise LoginFailed("the user name or password is wrong")
    assert stored is not None
    # same password, current parameters: not a password change, so not ledgered
    rehashed = await asyncio.to_thread(hasher.hash, password) if needs_rehash(stored, hasher) else None
    for _ in range(2):
        async with engine.begin() as conn:
            user = await user_by_name(conn, name, lock=True)  # a disable or password change in flight is waited for
            if user.disabled:
                raise LoginFailed("the user name or password is wrong")
            if user.password_hash == stored:
                await conn.execute(
                    delete(login_attempts).where(
                        or_(login_attempts.c.id == attempt, login_attempts.c.username_sha256 == key)
                    )
                )
                if rehashed is not None:
                    await update_user(conn, user, password_hash=rehashed)
                issued = await Tokens.issue(
                    conn, user, now, label="login", expires_at=now + ttl, scopes=scopes, actor=f"user:{user.username}"
                )
                return user, issued
        # the hash changed while we verified: a password change, or a concurrent login's rehash of the same password
        # after the parameters changed (decision 161); the new hash decides, checked outside the row's lock, once
        stored, rehashed = user.password_hash, None
        if stored is None or not await asyncio.to_thread(_verify_or_dummy, stored, password, hasher):
            break
    raise LoginFailed("the user name or password is wrong")


async def _throttle_wait(conn: AsyncConnection, match: Any, limit: int, throttle: Throttle, now: datetime) -> float:
    since = now - throttle.window
    query = select(func.count(), func.max(login_attempts.c.attempted_at)).where(
        and_(match, login_attempts.c.attempted_at >= since)
    )
    count, last = (await conn.execute(query)).one()
    if isinstance(last, str):  # in case an aggregate bypasses the column type
        last = datetime.fromisoformat(last)
    if isinstance(last, datetime) and last.tzinfo is None:
        last = last.replace(tzinfo=now.tzinfo)
    return throttle.wait(int(count), limit, last, now)
