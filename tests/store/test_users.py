"""Accounts on both stores: argon2id passwords, scoped expiring revocable tokens, disabled users, login throttling on
an injected clock, and a ledger event for every change that carries no secret."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher, Type
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

import store.users
from protocol.markings import MarkingScheme
from protocol.messages import Marking
from store.db import make_engine, run_migrations
from store.errors import Conflict, NotFound
from store.tables import ledger_entries, login_attempts, tokens, users
from store.tokens import MAX_TOKEN_TTL, Tokens, token_digest
from store.users import (
    ROLE_SCOPES,
    InvalidAccount,
    LoginFailed,
    LoginThrottled,
    Throttle,
    User,
    Users,
    hash_password,
    hash_token,
    needs_rehash,
    verify_password,
)

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
PASSWORD = "correct horse battery staple"
# cheap argon2id for the tests that are not about the parameters (the memory floor is 8 KiB per lane)
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=16, type=Type.ID)


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=16, type=Type.ID)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


@pytest.fixture
def cheap(monkeypatch: pytest.MonkeyPatch) -> PasswordHasher:
    monkeypatch.setattr(store.users, "PASSWORD_HASHER", CHEAP)
    return CHEAP


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await run_migrations(db_url)
    created = make_engine(db_url)
    try:
        yield created
    finally:
        await created.dispose()


async def ledger(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(ledger_entries.c.entry).order_by(ledger_entries.c.idx))
        return [json.loads(bytes(row.entry)) for row in rows]


async def ledger_bytes(engine: AsyncEngine) -> bytes:
    async with engine.connect() as conn:
        return b"".join(bytes(row.entry) for row in await conn.execute(select(ledger_entries.c.entry)))


# --- passwords ------------------------------------------------------------------------------------------------


def test_passwords_are_argon2id_with_safe_parameters() -> None:
    hashed = hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert PASSWORD not in hashed
    assert verify_password(hashed, PASSWORD)
    assert not verify_password(hashed, PASSWORD + "!")
    assert not verify_password("not a hash", PASSWORD)
    assert hash_password(PASSWORD) != hashed  # salted
    assert not needs_rehash(hashed)
    assert needs_rehash(CHEAP.hash(PASSWORD))  # weaker parameters than the current ones
    with pytest.raises(InvalidAccount):
        hash_password("short")


def test_a_user_never_shows_its_password_hash() -> None:
    user = User(1, "alice", "officer", password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA")
    assert "argon2" not in repr(user) and user.has_password


# --- accounts -------------------------------------------------------------------------------------------------


async def test_create_stores_every_field_and_refuses_bad_values(engine: AsyncEngine, cheap: PasswordHasher) -> None:
    async with engine.begin() as conn:
        created = await Users.create(
            conn,
            "alice",
            "supervisor",
            T0,
            clearance="STRICTLY CONFIDENTIAL",
            caveats=["uncac-46-20", "no-onward", "uncac-46-20"],
            unit="mla-unit",
            password=PASSWORD,
        )
        await Users.create(conn, "bob", "officer", T0)  # the old call: defaults, no password
    async with engine.connect() as conn:
        alice = await Users.by_name(conn, "alice")
        bob = await Users.by_name(conn, "bob")
        listed = await Users.list_users(conn)
    assert alice == created
    assert (alice.role, alice.clearance, alice.caveats, alice.unit) == (
        "supervisor",
        "STRICTLY CONFIDENTIAL",
        ("no-onward", "uncac-46-20"),
        "mla-unit",
    )
    assert alice.password_hash is not None and alice.password_hash.startswith("$argon2id$")
    assert alice.created_at == T0 and not alice.disabled
    assert (bob.clearance, bob.caveats, bob.unit, bob.has_password) == ("UNCLASSIFIED", (), "", False)
    assert [u.username for u in listed] == ["alice", "bob"]
    assert [u.has_password for u in listed] == [True, False]

    bad: list[tuple[dict[str, Any], str]] = [
        ({"username": "Alice"}, "user name"),
        ({"username": "a b"}, "user name"),
        ({"role": "root"}, "role"),
        ({"clearance": "TOP SECRET"}, "clearance"),
        ({"caveats": ["nofourn"]}, "caveat"),
        ({"unit": "MLA unit"}, "unit"),
        ({"password": "short"}, "password"),
    ]
    for change, word in bad:
        arguments: dict[str, Any] = {"username": "carol", "role": "officer", **change}
        async with engine.begin() as conn:
            with pytest.raises(InvalidAccount, match=word):
                await Users.create(
                    conn,
                    arguments.pop("username"),
                    arguments.pop("role"),
                    T0,
                    **arguments,
                )
    async with engine.begin() as conn:
        with pytest.raises(Conflict):
            await Users.create(conn, "alice", "officer", T0)
    async with engine.connect() as conn:
        with pytest.raises(NotFound):
            await Users.by_name(conn, "carol")


def test_clearance_and_caveats_decide_what_a_user_may_see() -> None:
    scheme = MarkingScheme()
    user = User(1, "alice", "officer", clearance="CONFIDENTIAL", caveats=("embargo", "uncac-46-20"))
    assert user.cleared_for(Marking(level="CONFIDENTIAL", caveats=["embargo:2027-03-01", "uncac-46-20"]), scheme)
    assert user.cleared_for(Marking(level="UNCLASSIFIED"), scheme)
    assert not user.cleared_for(Marking(level="STRICTLY CONFIDENTIAL"), scheme)
    assert not user.cleared_for(Marking(level="CONFIDENTIAL", caveats=["no-onward"]), scheme)
    assert not user.cleared_for(Marking(level="TOP SECRET"), scheme)


# --- tokens ---------------------------------------------------------------------------------------------------


async def test_tokens_are_scoped_expiring_and_revocable(engine: AsyncEngine) -> None:
    day = T0 + timedelta(days=1)
    async with engine.begin() as conn:
        alice = await Users.create(conn, "alice", "officer", T0, unit="mla-unit")
        full = await Users.issue(conn, alice, T0, label="cli", expires_at=day)
        reader = await Users.issue(conn, alice, T0, label="reader", expires_at=day, scopes=["messages:read"])
        legacy = await Users.issue_token(conn, alice, "initial", T0, day)  # the old signature
        for scopes, word in ((["admin"], "cannot hold"), (["messages:delete"], "unknown scope"), ([], "at least")):
            with pytest.raises(InvalidAccount, match=word):
                await Users.issue(conn, alice, T0, label="x", expires_at=day, scopes=scopes)
        for expires in (T0, T0 + timedelta(days=367)):
            with pytest.raises(InvalidAccount, match="expires"):
                await Users.issue(conn, alice, T0, label="x", expires_at=expires)
        with pytest.raises(InvalidAccount, match="expir"):
            await Users.issue_token(conn, alice, "forever", T0, None)
        with pytest.raises(InvalidAccount, match="label"):
            await Users.issue(conn, alice, T0, label="My Laptop", expires_at=day)
        stored = {row.token_hash for row in await conn.execute(select(tokens.c.token_hash))}
    assert stored == {hash_token(t) for t in (full.token, reader.token, legacy)}
    assert full.token.startswith("cmt_") and len(full.token) == 4 + 43  # 256 bits
    assert full.token not in repr(full)

    async with engine.begin() as conn:
        user = await Users.authenticate(conn, full.token, T0)
        assert user is not None and user.username == "alice" and user.unit == "mla-unit"
        assert user.scopes == ROLE_SCOPES["officer"] and user.token_id == full.token_id
        user = await Users.authenticate(conn, reader.token, T0)
        assert user is not None and user.scopes == {"messages:read"}
        assert await Users.authenticate(conn, full.token, day) is None  # expired at its expiry
        assert await Users.authenticate(conn, full.token + "x", T0) is None
        assert await Users.authenticate(conn, "not-a-token", T0) is None

        # a role change narrows what existing tokens carry at once
        await Users.set_role(conn, "alice", "auditor", T0, actor="system")
        user = await Users.authenticate(conn, full.token, T0)
        assert user is not None and user.scopes == {"messages:read"}
        await Users.set_role(conn, "alice", "officer", T0, actor="system")

        assert await Users.revoke_token(conn, "alice", T0, token_id=full.token_id) == 1
        assert await Users.authenticate(conn, full.token, T0) is None
        assert await Users.authenticate(conn, reader.token, T0) is not None
        assert await Users.revoke_token(conn, "alice", T0, label="reader") == 1
        assert await Users.revoke_token(conn, "alice", T0, label="reader") == 0
        assert await Users.authenticate(conn, reader.token, T0) is None
        with pytest.raises(InvalidAccount):
            await Users.revoke_token(conn, "alice", T0)
        assert await Users.revoke_tokens(conn, alice, T0) == 1
        assert await Users.authenticate(conn, legacy, T0) is None
        infos = await Users.tokens_of(conn, "alice")
    assert {info.label for info in infos} == {"cli", "reader", "initial"}
    assert not any(info.active(T0) for info in infos)


async def test_tokens_by_digest_answers_several_in_one_query(engine: AsyncEngine, cheap: PasswordHasher) -> None:
    """The API's token lookup (gathered by gateway.coalesce): rows by hash, none for a disabled user's or an unknown
    hash; user_of applies revocation and expiry as authenticate does."""
    async with engine.begin() as conn:
        alice = await Users.create(conn, "alice", "officer", T0, password=PASSWORD)
        bob = await Users.create(conn, "bob", "officer", T0, password=PASSWORD)
        first = await Users.issue_token(conn, alice, "one", T0, T0 + timedelta(days=1))
        second = await Users.issue_token(conn, alice, "two", T0, T0 + timedelta(hours=1))
        bobs = await Users.issue_token(conn, bob, "cli", T0, T0 + timedelta(days=1))
        await Users.set_disabled(conn, "bob", True, T0, actor="system")
        await Users.revoke_token(conn, "alice", T0, label="one")
    digests = [hash_token(token) for token in (first, second, bobs)]
    assert [token_digest(token) for token in (first, second, bobs)] == digests
    assert token_digest("not-a-token") is None
    async with engine.connect() as conn:
        found = await Tokens.by_digest(conn, [*digests, "0" * 64])
    assert set(found) == set(digests[:2])
    assert Tokens.user_of(found[digests[0]], T0) is None  # revoked
    user = Tokens.user_of(found[digests[1]], T0)
    assert user is not None and user.username == "alice" and user.scopes == ROLE_SCOPES["officer"]
    assert Tokens.user_of(found[digests[1]], T0 + timedelta(hours=1)) is None  # expired
    assert Tokens.user_of(None, T0) is None


async def test_disabled_users_cannot_authenticate_and_stay_revoked(engine: AsyncEngine, cheap: PasswordHasher) -> None:
    async with engine.begin() as conn:
        alice = await Users.create(conn, "alice", "officer", T0, password=PASSWORD)
        token = await Users.issue_token(conn, alice, "cli", T0, T0 + timedelta(days=1))
        await Users.set_disabled(conn, "alice", True, T0, actor="system")
        assert await Users.authenticate(conn, token, T0) is None
        with pytest.raises(InvalidAccount, match="disabled"):
            await Users.issue_token(conn, alice, "cli", T0, T0 + timedelta(days=1))
    with pytest.raises(LoginFailed):
        await Users.login(engine, "alice", PASSWORD, "10.0.0.1", T0)
    async with engine.begin() as conn:
        await Users.set_disabled(conn, "alice", False, T0, actor="system")
        assert await Users.authenticate(conn, token, T0) is None  # enabling resurrects no token
    _, issued = await Users.login(engine, "alice", PASSWORD, "10.0.0.1", T0)
    async with engine.connect() as conn:
        assert await Users.authenticate(conn, issued.token, T0) is not None


async def test_a_token_issued_while_the_user_is_being_disabled_does_not_outlive_it(
    engine: AsyncEngine, cheap: PasswordHasher
) -> None:
    """An admin's disable revokes the tokens it sees; a token issued meanwhile waits for the change and is refused,
    or it would be one the disable never revoked, working again after an enable."""
    async with engine.begin() as conn:
        alice = await Users.create(conn, "alice", "officer", T0, password=PASSWORD)
    admin = await engine.connect()
    try:
        change = await admin.begin()
        await Users.set_disabled(admin, "alice", True, T0, actor="system")  # not committed yet

        async def issue() -> object:
            async with engine.begin() as conn:
                return await Users.issue_token(conn, alice, "cli", T0, T0 + timedelta(days=1))

        issuing = asyncio.create_task(issue())
        await asyncio.sleep(0.5)
        assert not issuing.done()
        await change.commit()
    finally:
        await admin.close()
    with pytest.raises(InvalidAccount, match="disabled"):
        await issuing
    async with engine.begin() as conn:
        await Users.set_disabled(conn, "alice", False, T0, actor="system")
        assert [t.label for t in await Users.tokens_of(conn, "alice")] == []


# --- login ----------------------------------------------------------------------------------------------------


async def test_login_issues_a_12_hour_token_and_rehashes_old_parameters(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = PasswordHasher(time_cost=2, memory_cost=8, parallelism=1, hash_len=16, salt_len=16, type=Type.ID)
    monkeypatch.setattr(store.users, "PASSWORD_HASHER", old)
    async with engine.begin() as conn:
        await Users.create(conn, "alice", "supervisor", T0, password=PASSWORD)
    monkeypatch.setattr(store.users, "PASSWORD_HASHER", CHEAP)
    user, issued = await Users.login(engine, " Alice ", PASSWORD, "10.0.0.1", T0, scopes=["ledger:read"])
    assert user.username == "alice"
    assert issued.expires_at == T0 + timedelta(hours=12) and issued.label == "login"
    assert issued.scopes == {"ledger:read"}
    async with engine.connect() as conn:
        assert (await Users.by_name(conn, "alice")).password_hash.startswith("$argon2id$v=19$m=8,t=1,p=1$")  # type: ignore[union-attr]
        assert await Users.authenticate(conn, issued.token, T0 + timedelta(hours=12)) is None
    _, issued = await Users.login(engine, "alice", PASSWORD, "10.0.0.1", T0)  # the new hash verifies
    assert issued.scopes == ROLE_SCOPES["supervisor"]


async def test_a_hash_changed_during_a_login_decides_by_whether_the_password_still_verifies(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two logins at once right after the hashing parameters were raised: the first rehashed the password, and the
    second, which had verified against the old hash, was told its right password was wrong (decision 161). A
    password changed meanwhile still fails the login."""
    import store.logins

    old = PasswordHasher(time_cost=2, memory_cost=8, parallelism=1, hash_len=16, salt_len=16, type=Type.ID)
    monkeypatch.setattr(store.users, "PASSWORD_HASHER", old)
    async with engine.begin() as conn:
        await Users.create(conn, "alice", "officer", T0, password=PASSWORD)
    monkeypatch.setattr(store.users, "PASSWORD_HASHER", CHEAP)

    async def attempt(source: str) -> str:
        try:
            await Users.login(engine, "alice", PASSWORD, source, T0)
        except LoginFailed:
            return "failed"
        return "ok"

    assert list(await asyncio.gather(attempt("10.0.0.1"), attempt("10.0.0.2"))) == ["ok", "ok"]

    real = store.logins._verify_or_dummy
    changed: list[int] = []

    def verify_then_change(*args: Any) -> bool:
        verified = real(*args)
        if not changed:  # the administrator sets a new password while this login verifies the old one
            changed.append(1)
            asyncio.run_coroutine_threadsafe(_set_password(engine, "alice", PASSWORD + " 2"), loop).result()
        return verified

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(store.logins, "_verify_or_dummy", verify_then_change)
    assert await attempt("10.0.0.3") == "failed"
    monkeypatch.setattr(store.logins, "_verify_or_dummy", real)
    assert await attempt("10.0.0.4") == "failed" and await _login_ok(engine, PASSWORD + " 2")


async def _set_password(engine: AsyncEngine, name: str, password: str) -> None:
    async with engine.begin() as conn:
        await Users.set_password(conn, name, password, T0, actor="user:root")


async def _login_ok(engine: AsyncEngine, password: str) -> bool:
    user, _ = await Users.login(engine, "alice", password, "10.0.0.5", T0)
    return user.username == "alice"


async def test_unknown_and_passwordless_users_cost_a_verification_and_fail_alike(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    hasher = CountingHasher()
    monkeypatch.setattr(store.users, "PASSWORD_HASHER", hasher)
    async with engine.begin() as conn:
        await Users.create(conn, "alice", "officer", T0, password=PASSWORD)
        await Users.create(conn, "bob", "officer", T0)
        await Users.create(conn, "carol", "officer", T0, password=PASSWORD)
        await Users.set_disabled(conn, "carol", True, T0, actor="system")
    messages: list[tuple[str, str]] = []
    for name, password in (("alice", "wrong password!"), ("nobody", PASSWORD), ("bob", PASSWORD), ("carol", PASSWORD)):
        before = len(hasher.verified)
        with pytest.raises(LoginFailed) as failure:
            await Users.login(engine, name, password, f"10.0.0.{len(messages)}", T0)
        assert len(hasher.verified) == before + 1, name  # one argon2 verification on every path
        messages.append((failure.value.code, failure.value.message))
    assert len(set(messages)) == 1 and messages[0][0] == "unauthenticated"


async def test_failed_logins_are_throttled_with_an_increasing_delay(engine: AsyncEngine, cheap: PasswordHasher) -> None:
    async with engine.begin() as conn:
        await Users.create(conn, "alice", "officer", T0, password=PASSWORD)

    async def attempt(name: str, password: str, at: datetime, source: str = "10.0.0.1") -> str:
        try:
            await Users.login(engine, name, password, source, at)
        except LoginThrottled as exc:
            return f"throttled {exc.retry_after}"
        except LoginFailed:
            return "failed"
        return "ok"

    now = T0
    for _ in range(5):
        assert await attempt("alice", "wrong password!", now) == "failed"
        now += timedelta(seconds=1)
    # the sixth is refused without checking the password, even the right one, from anywhere
    assert await attempt("alice", PASSWORD, now) == "throttled 29"
    assert await attempt("alice", PASSWORD, now, source="192.0.2.7") == "throttled 29"
    now = T0 + timedelta(seconds=4 + 30)
    assert await attempt("alice", "wrong password!", now) == "failed"  # one try after the delay...
    assert await attempt("alice", PASSWORD, now) == "throttled 60"  # ...and the next delay doubles
    now += timedelta(seconds=60)
    assert await attempt("alice", "wrong password!", now) == "failed"
    assert await attempt("alice", PASSWORD, now + timedelta(seconds=119)) == "throttled 1"
    assert await attempt("alice", PASSWORD, now + timedelta(seconds=120)) == "ok"  # and a success clears them
    for i in range(4):
        assert await attempt("alice", "wrong password!", now + timedelta(seconds=121 + i)) == "failed"
    assert await attempt("alice", PASSWORD, now + timedelta(seconds=130)) == "ok"

    # an unknown name is throttled exactly like a known one: no way to tell which names exist
    for _ in range(5):
        assert await attempt("nobody", PASSWORD, T0, source="10.0.0.9") == "failed"
    assert await attempt("nobody", PASSWORD, T0, source="10.0.0.9") == "throttled 30"
    # failures older than the window are forgotten
    assert await attempt("nobody", PASSWORD, T0 + timedelta(minutes=15, seconds=1), source="10.0.0.9") == "failed"
    async with engine.connect() as conn:
        stored = [row.username_sha256 for row in await conn.execute(select(login_attempts))]
    assert stored and all(len(value) == 64 and "nobody" not in value for value in stored)


async def test_one_source_guessing_many_names_is_throttled(engine: AsyncEngine, cheap: PasswordHasher) -> None:
    async with engine.begin() as conn:
        await Users.create(conn, "alice", "officer", T0, password=PASSWORD)
    throttle = Throttle(per_source=8)
    for i in range(8):
        with pytest.raises(LoginFailed):
            await Users.login(engine, f"user{i}", PASSWORD, "198.51.100.1", T0, throttle=throttle)
    with pytest.raises(LoginThrottled) as refused:
        await Users.login(engine, "alice", PASSWORD, "198.51.100.1", T0, throttle=throttle)
    assert refused.value.code == "login-throttled" and refused.value.retry_after == 30
    _, issued = await Users.login(engine, "alice", PASSWORD, "198.51.100.2", T0, throttle=throttle)
    assert issued.token


# --- ledger ---------------------------------------------------------------------------------------------------


async def test_every_change_is_ledgered_without_secrets(engine: AsyncEngine, cheap: PasswordHasher) -> None:
    async with engine.begin() as conn:
        await Users.create(conn, "root", "admin", T0)
        actor = await Users.actor(conn, "root")
        assert actor == "user:root" and await Users.actor(conn, "system") == "system"
        alice = await Users.create(
            conn, "alice", "officer", T0, password=PASSWORD, unit="mla-unit", caveats=["no-onward"], actor=actor
        )
        with pytest.raises(InvalidAccount):
            await Users.actor(conn, "alice")  # not an admin
        with pytest.raises(InvalidAccount):
            await Users.actor(conn, "ghost")
        await Users.set_role(conn, "alice", "supervisor", T0, actor=actor)
        await Users.set_role(conn, "alice", "supervisor", T0, actor=actor)  # no change, no event
        await Users.set_clearance(conn, "alice", "STRICTLY CONFIDENTIAL", T0, actor=actor)
        await Users.set_caveats(conn, "alice", ["uncac-46-19", "embargo"], T0, actor=actor)
        await Users.set_unit(conn, "alice", "central-authority", T0, actor=actor)
        cli = await Users.issue(conn, alice, T0, label="cli", expires_at=T0 + timedelta(days=30), actor=actor)
        await Users.revoke_token(conn, "alice", T0, token_id=cli.token_id, actor=actor)
        await Users.set_password(conn, "alice", PASSWORD + " 2", T0, actor=actor)
    _, login = await Users.login(engine, "alice", PASSWORD + " 2", "10.0.0.1", T0)
    async with engine.begin() as conn:
        assert await Users.revoke_presented(conn, login.token, T0) is not None
        await Users.issue(conn, alice, T0, label="spare", expires_at=T0 + timedelta(days=1), actor=actor)
        await Users.set_disabled(conn, "alice", True, T0, actor=actor)
        await Users.set_disabled(conn, "alice", False, T0, actor="system")

    events = await ledger(engine)
    assert all(e["type"] == "user.changed" and e["time"] == "2026-11-28T08:00:00.000000Z" for e in events)
    summary = [
        (e["actor"], e["subject"], e["state"], e.get("marking"), e.get("reason"), "related_id" in e) for e in events
    ]
    unclassified = {"level": "UNCLASSIFIED", "caveats": []}
    assert summary == [
        ("system", "user:root", "created-admin", unclassified, None, False),
        (
            "user:root",
            "user:alice",
            "created-officer",
            {"level": "UNCLASSIFIED", "caveats": ["no-onward"]},
            "mla-unit",
            False,
        ),
        ("user:root", "user:alice", "role-supervisor", None, None, False),
        (
            "user:root",
            "user:alice",
            "clearance-changed",
            {"level": "STRICTLY CONFIDENTIAL", "caveats": ["no-onward"]},
            None,
            False,
        ),
        (
            "user:root",
            "user:alice",
            "caveats-changed",
            {"level": "STRICTLY CONFIDENTIAL", "caveats": ["embargo", "uncac-46-19"]},
            None,
            False,
        ),
        ("user:root", "user:alice", "unit-changed", None, "central-authority", False),
        ("user:root", "user:alice", "token-issued", None, "cli", True),
        ("user:root", "user:alice", "token-revoked", None, "cli", True),
        ("user:root", "user:alice", "password-changed", None, None, False),
        ("user:alice", "user:alice", "token-issued", None, "login", True),
        ("user:alice", "user:alice", "token-revoked", None, "login", True),
        ("user:root", "user:alice", "token-issued", None, "spare", True),
        ("user:root", "user:alice", "disabled", None, None, False),
        ("user:root", "user:alice", "tokens-revoked", None, None, False),
        ("system", "user:alice", "enabled", None, None, False),
    ]
    assert events[6]["related_id"] == events[7]["related_id"] == cli.token_id
    assert events[9]["related_id"] == events[10]["related_id"] == login.token_id

    raw = await ledger_bytes(engine)
    async with engine.connect() as conn:
        secrets = [row.password_hash for row in await conn.execute(select(users.c.password_hash)) if row.password_hash]
        secrets += [row.token_hash for row in await conn.execute(select(tokens.c.token_hash))]
    for secret in [PASSWORD, PASSWORD + " 2", cli.token, login.token, "$argon2", *secrets]:
        assert secret.encode() not in raw


async def test_a_failed_change_leaves_no_event(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await Users.create(conn, "alice", "officer", T0)
    before = len(await ledger(engine))

    async def two_changes_the_second_refused() -> None:
        async with engine.begin() as conn:
            await Users.set_unit(conn, "alice", "unit-2", T0, actor="system")
            await Users.set_clearance(conn, "alice", "TOP SECRET", T0, actor="system")

    with pytest.raises(InvalidAccount):
        await two_changes_the_second_refused()
    async with engine.connect() as conn:
        assert (await Users.by_name(conn, "alice")).unit == ""  # rolled back with its event
    assert len(await ledger(engine)) == before


# --- migration ------------------------------------------------------------------------------------------------


async def test_migrations_0003_and_0010_keep_old_tokens_with_their_role_scopes_and_an_expiry(db_url: str) -> None:
    await run_migrations(db_url, "0002")
    engine = make_engine(db_url)
    token = "cmt_" + "a" * 43
    try:
        async with engine.begin() as conn:
            for name, role in (("alice", "officer"), ("audrey", "auditor")):
                await conn.execute(insert(users).values(username=name, role=role, created_at=T0, disabled=False))
            user_id = (await conn.execute(select(users.c.id).where(users.c.username == "audrey"))).scalar_one()
            # a token as 0002 knew them: no id, no scopes, no expiry
            legacy = {"token_hash": hash_token(token), "user_id": user_id, "label": "cli", "created_at": T0}
            await conn.execute(insert(tokens).values(**legacy, expires_at=None))
        await run_migrations(db_url)
        async with engine.connect() as conn:
            user = await Users.authenticate(conn, token, T0)
            alice = await Users.by_name(conn, "alice")
        assert user is not None and user.username == "audrey"
        # every scope the role held then; metrics:read came later and no migration grants it (decision 122)
        assert user.scopes == ROLE_SCOPES["auditor"] - {"metrics:read"} and user.token_id == hash_token(token)[:16]
        assert (alice.clearance, alice.caveats, alice.unit, alice.password_hash) == ("UNCLASSIFIED", (), "", None)
        # 0010: it expires, at the latest a token may (it had no expiry at all)
        later = datetime.now(UTC) + MAX_TOKEN_TTL
        async with engine.connect() as conn:
            assert await Users.authenticate(conn, token, later - timedelta(minutes=1)) is not None
            assert await Users.authenticate(conn, token, later + timedelta(minutes=1)) is None
        # a row given no expiry behind the code's back does not authenticate
        async with engine.begin() as conn:
            await conn.execute(update(tokens).values(expires_at=None))
        async with engine.connect() as conn:
            assert await Users.authenticate(conn, token, T0) is None
    finally:
        await engine.dispose()


async def _login_outcome(engine: AsyncEngine, username: str, password: str, source: str) -> str:
    """``ok``, ``failed`` or ``throttled``: what one login attempt came to."""
    try:
        await Users.login(engine, username, password, source, T0)
    except LoginThrottled:
        return "throttled"
    except LoginFailed:
        return "failed"
    return "ok"


async def test_a_burst_of_parallel_guesses_is_throttled_like_a_sequence(
    engine: AsyncEngine, cheap: PasswordHasher
) -> None:
    """Twelve wrong passwords at once: five are checked, the rest are throttled (the count is serialised)."""
    async with engine.begin() as conn:
        await Users.create(conn, "alice", "officer", T0, password=PASSWORD)
    outcomes = await asyncio.gather(
        *(_login_outcome(engine, "alice", f"wrong password {i:04d}", f"10.0.0.{i}") for i in range(12))
    )
    assert sorted(outcomes).count("failed") == 5, outcomes
    assert outcomes.count("throttled") == 7, outcomes


async def test_a_burst_of_guesses_at_many_names_from_one_address_is_throttled_like_a_sequence(
    engine: AsyncEngine, cheap: PasswordHasher
) -> None:
    """Thirty names guessed at once from one address: twenty are checked, the rest are throttled (decision 108)."""
    outcomes = await asyncio.gather(
        *(_login_outcome(engine, f"nobody{i}", "wrong password", "203.0.113.5") for i in range(30))
    )
    assert outcomes.count("failed") == 20 and outcomes.count("throttled") == 10, outcomes
