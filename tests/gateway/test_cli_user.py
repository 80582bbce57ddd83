"""``comity user`` on both stores: every command, the ledger events they leave (with the operator as actor), no secret
in any output or ledger entry, and one-line errors. The commands run their own event loop, so they run in a thread."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher, Type
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

import store.users
from config.settings import settings_toml
from gateway.cli import main
from store.db import make_engine, run_migrations
from store.tables import ledger_entries, users
from store.users import ROLE_SCOPES, Users

PASSWORD = "correct horse battery staple"
OTHER = "a different passphrase, typed"
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=16, type=Type.ID)


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.users, "PASSWORD_HASHER", CHEAP)
    monkeypatch.delenv("COMITY_OPERATOR", raising=False)
    monkeypatch.delenv("COMITY_USER_PASSWORD", raising=False)


@pytest.fixture
async def gateway_db(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Path, AsyncEngine]]:
    await run_migrations(db_url)
    config = tmp_path / "comity.toml"
    config.write_text(settings_toml({"authority_id": "ar.mj", "data_dir": tmp_path, "database_url": db_url}))
    engine = make_engine(db_url)
    try:
        yield config, engine
    finally:
        await engine.dispose()


async def comity(config: Path, *args: str, password: str | None = None, stdin: str | None = None) -> Result:
    env = {"COMITY_USER_PASSWORD": password} if password is not None else {}
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, ["user", *args, "--config", str(config)], stdin, env)


async def ok(config: Path, *args: str, **kwargs: Any) -> Result:
    result = await comity(config, *args, **kwargs)
    assert result.exit_code == 0, result.output
    return result


async def events(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(ledger_entries.c.entry).order_by(ledger_entries.c.idx))
        return [json.loads(bytes(row.entry)) for row in rows]


async def test_every_command_changes_the_account_and_is_ledgered(gateway_db: tuple[Path, AsyncEngine]) -> None:
    config, engine = gateway_db
    await ok(config, "create", "root", "--role", "admin", "--from-env", password=PASSWORD)
    created = await ok(
        config,
        "create",
        "alice",
        "--clearance",
        "strictly-confidential",
        "--caveat",
        "uncac-46-20",
        "--caveat",
        "no-onward",
        "--unit",
        "mla-unit",
        "--token-days",
        "2",
        "--operator",
        "root",
        "--from-env",
        password=PASSWORD,
    )
    initial = created.stdout.strip().splitlines()[-1]
    assert initial.startswith("cmt_") and created.stdout.strip() == initial  # only the token on stdout
    assert "created alice role=officer clearance=STRICTLY-CONFIDENTIAL caveats=no-onward,uncac-46-20" in created.stderr

    now = datetime.now(UTC)
    async with engine.connect() as conn:
        alice = await Users.authenticate(conn, initial, now)
        assert alice is not None and alice.scopes == ROLE_SCOPES["officer"]
        assert (alice.clearance, alice.caveats, alice.unit) == (
            "STRICTLY CONFIDENTIAL",
            ("no-onward", "uncac-46-20"),
            "mla-unit",
        )
        assert await Users.authenticate(conn, initial, now + timedelta(days=2, minutes=1)) is None

    as_root = ("--operator", "root")
    assert "role=supervisor" in (await ok(config, "set-role", "alice", "supervisor", *as_root)).stdout
    assert "clearance=CONFIDENTIAL" in (await ok(config, "set-clearance", "alice", "CONFIDENTIAL", *as_root)).stdout
    assert "caveats=embargo" in (await ok(config, "set-caveats", "alice", "embargo", *as_root)).stdout
    assert "unit=central-authority" in (await ok(config, "set-unit", "alice", "central-authority", *as_root)).stdout
    issued = await ok(
        config, "token", "alice", "--days", "7", "--scope", "messages:read", "--label", "laptop", *as_root
    )
    laptop = issued.stdout.strip()
    assert "scopes=messages:read" in issued.stderr and laptop not in issued.stderr
    async with engine.connect() as conn:
        user = await Users.authenticate(conn, laptop, now)
        assert user is not None and user.scopes == {"messages:read"}
        laptop_id = user.token_id
    other = (await ok(config, "token", "alice", *as_root)).stdout.strip()
    async with engine.connect() as conn:
        other_user = await Users.authenticate(conn, other, now)
        assert other_user is not None
    assert "revoked 1 token of alice" in (await ok(config, "revoke", "alice", "--label", "laptop", *as_root)).stdout
    assert (await ok(config, "revoke", "alice", "--id", str(other_user.token_id), *as_root)).stdout.startswith(
        "revoked 1"
    )
    assert "revoked 1 token" in (await ok(config, "revoke", "alice", "--all", *as_root)).stdout
    async with engine.connect() as conn:
        assert all([await Users.authenticate(conn, t, now) is None for t in (initial, laptop, other)])

    assert "disabled" in (await ok(config, "disable", "alice", *as_root)).stdout
    assert "enabled" in (await ok(config, "enable", "alice", *as_root)).stdout
    await ok(config, "set-password", "alice", "--from-env", *as_root, password=PASSWORD + " new")
    _, login = await Users.login(engine, "alice", PASSWORD + " new", "10.0.0.1", now)
    assert "password=no" in (await ok(config, "set-password", "alice", "--remove", *as_root)).stdout

    listing = await ok(config, "list", "--tokens")
    lines = listing.stdout.splitlines()
    assert lines[0].startswith("alice role=supervisor clearance=CONFIDENTIAL caveats=embargo unit=central-authority")
    assert any(f"token {laptop_id} label=laptop scopes=messages:read" in line and "revoked" in line for line in lines)
    assert lines[-1] == "root role=admin clearance=UNCLASSIFIED caveats=- unit=- password=yes enabled"

    ledgered = await events(engine)
    states = [(e["actor"], e["subject"], e["state"]) for e in ledgered]
    assert states == [
        ("system", "user:root", "created-admin"),
        ("user:root", "user:alice", "created-officer"),
        ("user:root", "user:alice", "token-issued"),
        ("user:root", "user:alice", "role-supervisor"),
        ("user:root", "user:alice", "clearance-changed"),
        ("user:root", "user:alice", "caveats-changed"),
        ("user:root", "user:alice", "unit-changed"),
        ("user:root", "user:alice", "token-issued"),
        ("user:root", "user:alice", "token-issued"),
        ("user:root", "user:alice", "token-revoked"),
        ("user:root", "user:alice", "token-revoked"),
        ("user:root", "user:alice", "tokens-revoked"),
        ("user:root", "user:alice", "disabled"),
        ("user:root", "user:alice", "enabled"),
        ("user:root", "user:alice", "password-changed"),
        ("user:alice", "user:alice", "token-issued"),
        ("user:root", "user:alice", "password-removed"),
        ("user:root", "user:alice", "token-revoked"),  # removing the password ends its login sessions
    ]
    assert ledgered[4]["marking"] == {"level": "CONFIDENTIAL", "caveats": ["no-onward", "uncac-46-20"]}
    assert ledgered[9]["related_id"] == laptop_id and ledgered[9]["reason"] == "laptop"

    everything = listing.stdout + listing.stderr + json.dumps(ledgered)
    async with engine.connect() as conn:
        hashes = [row.password_hash for row in await conn.execute(select(users.c.password_hash)) if row.password_hash]
    for secret in (PASSWORD, initial, laptop, other, login.token, "cmt_", "argon2", *hashes):
        assert secret not in everything


async def test_passwords_come_from_the_environment_or_a_prompt(gateway_db: tuple[Path, AsyncEngine]) -> None:
    config, engine = gateway_db
    await ok(config, "create", "tok")  # no password anywhere: a token-only account, and no prompt
    await ok(config, "create", "env", "--from-env", password=PASSWORD)
    await ok(config, "create", "prompted", "--password", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    await ok(config, "create", "refused", "--no-password", password=PASSWORD)
    # a variable left from creating the first account is not the next one's password without --from-env:
    # none without --password, the prompt's with it, and set-password also prompts (decision 109)
    left = await ok(config, "create", "leftover", password=PASSWORD)
    typed = await ok(config, "create", "typed", "--password", password=PASSWORD, stdin=f"{OTHER}\n{OTHER}\n")
    await ok(config, "create", "reset", "--from-env", password=PASSWORD)
    reset = await ok(config, "set-password", "reset", password=PASSWORD, stdin=f"{OTHER}\n{OTHER}\n")
    for result in (left, typed, reset):
        assert "COMITY_USER_PASSWORD is set but not used: give --from-env to use it" in result.stderr
        assert PASSWORD not in result.output
    for args, message in (
        (("create", "x", "--from-env"), "comity: --from-env: COMITY_USER_PASSWORD is not set"),
        (("create", "x", "--from-env", "--no-password"), "comity: --from-env gives a password"),
        (("set-password", "env", "--from-env"), "comity: --from-env: COMITY_USER_PASSWORD is not set"),
        (("set-password", "env", "--from-env", "--remove"), "comity: --remove sets no password"),
    ):
        refused = await comity(config, *args, password=PASSWORD if "--remove" in args else None)
        assert refused.exit_code == 1 and refused.stderr.startswith(message), (args, refused.output)
    async with engine.connect() as conn:
        found = {u.username: u for u in await Users.list_users(conn)}
        hashes = {
            row.username: row.password_hash
            for row in await conn.execute(select(users.c.username, users.c.password_hash))
        }
    assert found.keys() == {"tok", "env", "prompted", "refused", "leftover", "typed", "reset"}
    assert hashes["tok"] is None and hashes["refused"] is None and hashes["leftover"] is None
    for name, password in (("env", PASSWORD), ("prompted", PASSWORD), ("typed", OTHER), ("reset", OTHER)):
        assert hashes[name].startswith("$argon2id$")
        user, _ = await Users.login(engine, name, password, "10.0.0.1", datetime.now(UTC))
        assert user.username == name


async def test_a_password_prompt_without_input_is_one_line(gateway_db: tuple[Path, AsyncEngine]) -> None:
    """End of input at the password prompt (nothing piped, a closed stdin): one 'comity:' line, not click's
    'Aborted!', and nothing created or changed."""
    config, engine = gateway_db
    await ok(config, "create", "bob")
    expected = "comity: no password was given; type one at the prompt, or give --from-env with COMITY_USER_PASSWORD"
    for args in (("create", "carol", "--password"), ("set-password", "bob")):
        refused = await comity(config, *args, stdin="")
        assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit), refused.output
        assert [line for line in refused.stderr.splitlines() if line.strip()][-1] == expected
        assert "Aborted!" not in refused.output
    async with engine.connect() as conn:
        found = {u.username: u for u in await Users.list_users(conn)}
    assert found.keys() == {"bob"} and not found["bob"].has_password


async def test_an_admin_does_not_widen_her_own_access(gateway_db: tuple[Path, AsyncEngine]) -> None:
    """Role, clearance, caveats and unit of an admin are changed by another admin or the host's operator, so one
    admin alone cannot make herself an officer cleared to open content (decision 108)."""
    config, engine = gateway_db
    await ok(config, "create", "root", "--role", "admin")
    await ok(config, "create", "rita", "--role", "admin")
    before = len(await events(engine))
    for args in (
        ("set-role", "root", "officer"),
        ("set-clearance", "root", "CONFIDENTIAL"),
        ("set-caveats", "root", "uncac-46-20"),
        ("set-unit", "root", "mla"),
    ):
        refused = await comity(config, *args, "--operator", "root")
        assert refused.exit_code == 1, refused.output
        assert "comity: an admin does not change her own" in refused.stderr
    assert len(await events(engine)) == before  # nothing changed, nothing ledgered
    await ok(config, "set-clearance", "root", "CONFIDENTIAL", "--operator", "rita")  # another admin may
    await ok(config, "set-role", "rita", "officer", "--operator", "system")  # and so may the host's operator


async def test_errors_are_one_line(gateway_db: tuple[Path, AsyncEngine]) -> None:
    config, _ = gateway_db
    await ok(config, "create", "alice")
    cases: list[tuple[tuple[str, ...], str]] = [
        (("create", "alice"), "comity: user 'alice' already exists"),
        (("create", "Bob"), "comity: a user name is"),
        (("create", "bob", "--clearance", "TOP SECRET"), "comity: clearance must be one of UNCLASSIFIED"),
        (("create", "bob", "--caveat", "noforn"), "comity: unknown caveat 'noforn'"),
        (("set-role", "ghost", "admin"), "comity: no user 'ghost'"),
        (("set-unit", "alice", "x", "--operator", "alice"), "comity: operator 'alice' is not an enabled admin"),
        (("disable", "alice", "--operator", "ghost"), "comity: operator 'ghost' is not a user"),
        (("revoke", "alice"), "comity: give exactly one of --id, --label or --all"),
        (("revoke", "alice", "--id", "zz"), "comity: a token id is 16 hex digits"),
        (("token", "alice", "--scope", "admin"), "comity: the officer role cannot hold admin"),
        (("set-password", "alice", "--from-env"), "comity: a password must have 12"),
    ]
    for args, message in cases:
        result = await comity(config, *args, password="short" if args[0] == "set-password" else None)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, (args, result.stderr)
        assert "Traceback" not in result.output
    result = await comity(config, "token", "alice", "--days", "0")
    assert result.exit_code == 2  # every token expires: a usage error


async def test_an_unreachable_database_is_a_one_line_error(db_url: str, tmp_path: Path) -> None:
    gone = (
        f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'comity.db'}"
        if db_url.startswith("sqlite")
        else "postgresql+asyncpg://postgres@127.0.0.1:1/test"  # nothing listens there
    )
    config = tmp_path / "comity.toml"
    config.write_text(settings_toml({"authority_id": "ar.mj", "data_dir": tmp_path, "database_url": gone}))
    result = await comity(config, "list")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("comity: the database is unavailable (") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
