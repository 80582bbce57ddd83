"""Users, their passwords and bearer tokens, and the throttling of password logins.

* A user has a role (officer, supervisor, auditor, admin), a clearance (a level of the marking scheme), the caveats it
  is authorised for, and a unit. Case assignment lives elsewhere.
* Passwords are hashed with argon2id (argon2-cffi, the RFC 9106 low-memory profile: t=3, m=64 MiB, p=4). A login for
  an unknown user verifies against a dummy hash, so both paths cost the same.
* Tokens are 256-bit random, shown once and stored as SHA-256; each has a public id, a label, scopes (at most what
  its user's role allows, re-checked on every use), an expiry, and can be revoked.
* Every change of a user or a token is a ``user.changed`` ledger event appended in the caller's transaction (actor,
  subject ``user:<name>``, state; a marking for clearance and caveats; never a password, hash or token).
* Password logins are throttled per attempted user name (whether it exists or not) and per source address.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from protocol.errors import ComityError
from protocol.events import EventType, LedgerEvent
from protocol.markings import MarkingScheme
from protocol.messages import Marking
from protocol.timefmt import format_time
from store.errors import Conflict, NotFound
from store.events import EventLog
from store.tables import login_attempts, tokens, users

__all__ = [
    "LOGIN_TOKEN_TTL",
    "MAX_TOKEN_TTL",
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

ROLES = ("officer", "supervisor", "auditor", "admin")
SCOPES = ("messages:read", "messages:write", "content:open", "cases:assign", "ledger:read", "admin")
# what a role may hold; a token's scopes are a subset, intersected again with the role's on every request
ROLE_SCOPES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "officer": frozenset({"messages:read", "messages:write", "content:open"}),
        "supervisor": frozenset({"messages:read", "messages:write", "content:open", "cases:assign", "ledger:read"}),
        "auditor": frozenset({"messages:read", "ledger:read"}),  # metadata only: never content:open
        "admin": frozenset({"admin", "messages:read", "ledger:read"}),  # manages accounts, never sees content
    }
)
TOKEN_PREFIX = "cmt_"  # noqa: S105 - a prefix, not a secret
LOGIN_TOKEN_TTL = timedelta(hours=12)
MAX_TOKEN_TTL = timedelta(days=366)
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
DEFAULT_CLEARANCE = "UNCLASSIFIED"

# RFC 9106 section 4, second recommended option (argon2-cffi's default profile), spelled out so that a library
# upgrade never changes it silently; stored hashes carry their parameters, and logins rehash outdated ones
PASSWORD_HASHER = PasswordHasher(
    time_cost=3, memory_cost=64 * 1024, parallelism=4, hash_len=32, salt_len=16, type=Type.ID
)

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # what a ledger actor "user:<name>" allows
_UNIT = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")


class InvalidAccount(ComityError):
    """A user name, role, clearance, caveat, unit, label, scope, expiry or password that is not acceptable."""

    code = "invalid-request"


class LoginFailed(ComityError):
    """Wrong user name or password (or a disabled or password-less account): deliberately indistinguishable."""

    code = "unauthenticated"


class LoginThrottled(ComityError):
    """Too many failed logins for this user name or from this address; ``retry_after`` is in whole seconds."""

    code = "login-throttled"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after} s")
        self.retry_after = retry_after


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_password(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidAccount(f"a password must have {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    """The argon2id PHC string (``$argon2id$v=19$m=...``) of ``password``, with a fresh random salt."""
    _check_password(password)
    return PASSWORD_HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return PASSWORD_HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when ``password_hash`` was made with other parameters than :data:`PASSWORD_HASHER`'s."""
    try:
        return PASSWORD_HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@functools.lru_cache(maxsize=4)
def _dummy_hash(time_cost: int, memory_cost: int, parallelism: int) -> str:
    return PASSWORD_HASHER.hash(secrets.token_urlsafe(24))


def _verify_or_dummy(password_hash: str | None, password: str) -> bool:
    """Verify against the stored hash, or against a dummy one with the same cost when there is none."""
    hasher = PASSWORD_HASHER
    if password_hash is None:
        verify_password(_dummy_hash(hasher.time_cost, hasher.memory_cost, hasher.parallelism), password)
        return False
    return verify_password(password_hash, password)


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
        return all(caveat.split(":", 1)[0] in self.caveats for caveat in marking.caveats)


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
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


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


def _check_label(label: str) -> None:
    if not _LABEL.fullmatch(label):
        raise InvalidAccount("a token label is 1 to 64 lowercase letters, digits or '-'")


def _scopes_text(scopes: Iterable[str]) -> str:
    return " ".join(sorted(set(scopes)))


def _user_from(row: Any, *, scopes: frozenset[str] = frozenset(), token_id: str | None = None) -> User:
    mapping = row._mapping
    return User(
        id=int(row.id),
        username=row.username,
        role=row.role,
        clearance=row.clearance,
        caveats=tuple(json.loads(row.caveats)),
        unit=row.unit,
        disabled=bool(row.disabled),
        password_hash=mapping.get("password_hash"),
        created_at=row.created_at,
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
        password_hash = None if password is None else hash_password(password)
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
        row = (
            await conn.execute(select(*_USER_COLUMNS, users.c.password_hash).where(users.c.username == username))
        ).one_or_none()
        if row is None:
            raise NotFound(f"no user {username!r}")
        return _user_from(row)

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
        await conn.execute(update(users).where(users.c.id == user.id).values(**values))

    @staticmethod
    async def set_role(conn: AsyncConnection, username: str, role: str, now: datetime, *, actor: str) -> User:
        _check_role(role)
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
        user = await Users.by_name(conn, username)
        if user.caveats != normal:
            await Users._change(conn, user, caveats=json.dumps(list(normal)))
            await _record(conn, now, actor, username, "caveats-changed", marking=_marking_of(user.clearance, normal))
        return await Users.by_name(conn, username)

    @staticmethod
    async def set_unit(conn: AsyncConnection, username: str, unit: str, now: datetime, *, actor: str) -> User:
        _check_unit(unit)
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
        password_hash = None if password is None else hash_password(password)
        user = await Users.by_name(conn, username)
        await Users._change(conn, user, password_hash=password_hash)
        await _record(conn, now, actor, username, "password-changed" if password is not None else "password-removed")
        await Users.revoke_token(conn, username, now, label="login", actor=actor)
        return await Users.by_name(conn, username)

    # --- tokens -----------------------------------------------------------------------------------------------

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
        current = await Users.by_name(conn, user.username)
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
        issued = await Users.issue(conn, user, now, label=label, expires_at=expires_at, scopes=scopes, actor=actor)
        return issued.token

    @staticmethod
    async def authenticate(conn: AsyncConnection, token: str, now: datetime) -> User | None:
        """The user of a valid token (with the token's scopes, cut to what the role allows now), else None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        query = (
            select(
                *_USER_COLUMNS,
                tokens.c.expires_at,
                tokens.c.revoked_at,
                tokens.c.token_id,
                tokens.c.scopes,
            )
            .join(tokens, tokens.c.user_id == users.c.id)
            .where(tokens.c.token_hash == hash_token(token), users.c.disabled.is_(False))
        )
        row = (await conn.execute(query)).one_or_none()
        if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        scopes = frozenset(row.scopes.split()) & ROLE_SCOPES.get(row.role, frozenset())
        return _user_from(row, scopes=scopes, token_id=row.token_id)

    @staticmethod
    async def tokens_of(conn: AsyncConnection, username: str) -> list[TokenInfo]:
        """The tokens of a user, oldest first (ids, labels, scopes and times: no hashes)."""
        user = await Users.by_name(conn, username)
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
        user = await Users.by_name(conn, username)
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
        user = await Users.authenticate(conn, token, now)
        if user is None or user.token_id is None:
            return None
        await Users.revoke_token(conn, user.username, now, token_id=user.token_id, actor=f"user:{user.username}")
        return user

    # --- password login ---------------------------------------------------------------------------------------

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
        """Check a password and issue a login token, with throttling.

        Raises :class:`LoginThrottled` (nothing is checked or recorded) or :class:`LoginFailed` (the same for an
        unknown name, a wrong password, a disabled or password-less account). The attempt is recorded before the
        password is checked, so concurrent guesses count too; a success removes the name's failures. The argon2
        verification runs in a thread, outside any transaction.
        """
        throttle = throttle or Throttle()
        name = username.strip().lower()[:256]
        key = hashlib.sha256(b"comity-login\0" + name.encode("utf-8")).hexdigest()
        source = (source or "unknown")[:64]
        async with engine.begin() as conn:
            await conn.execute(delete(login_attempts).where(login_attempts.c.attempted_at < now - throttle.window))
            wait = max(
                await _throttle_wait(
                    conn, login_attempts.c.username_sha256 == key, throttle.per_username, throttle, now
                ),
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
        verified = await asyncio.to_thread(_verify_or_dummy, stored, password)
        if not verified or row is None or row.disabled:
            raise LoginFailed("the user name or password is wrong")
        assert stored is not None
        # same password, current parameters: not a password change, so not ledgered
        rehashed = await asyncio.to_thread(PASSWORD_HASHER.hash, password) if needs_rehash(stored) else None
        async with engine.begin() as conn:
            user = await Users.by_name(conn, name)
            if user.disabled or user.password_hash != stored:
                raise LoginFailed("the user name or password is wrong")  # changed while we verified
            await conn.execute(
                delete(login_attempts).where(
                    or_(login_attempts.c.id == attempt, login_attempts.c.username_sha256 == key)
                )
            )
            if rehashed is not None:
                await Users._change(conn, user, password_hash=rehashed)
            issued = await Users.issue(
                conn, user, now, label="login", expires_at=now + ttl, scopes=scopes, actor=f"user:{user.username}"
            )
        return user, issued


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
