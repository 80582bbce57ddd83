"""``comity user``: accounts (role, clearance, caveats, unit, password, enabled) and their API tokens.

Every change is a ``user.changed`` ledger event in the transaction that makes it, with ``--operator`` as the actor
(``system``, or the name of an enabled admin). Passwords and tokens never reach the ledger or the logs; a token is
printed once, on stdout, and stored as its SHA-256.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.cli.common import CommandError, reports_errors
from gateway.cli.runtime import config_option, run, settings_from
from protocol.markings import MarkingScheme
from protocol.timefmt import format_time
from store.db import make_engine
from store.users import ROLES, SCOPES, IssuedToken, TokenInfo, User, Users

__all__ = ["PASSWORD_ENV", "user"]

PASSWORD_ENV = "COMITY_USER_PASSWORD"  # noqa: S105 - the name of a variable, not a secret
MAX_DAYS = 366

_T = TypeVar("_T")
Action = Callable[[AsyncConnection, datetime, str], Awaitable[_T]]

operator_option = click.option(
    "--operator",
    default="system",
    envvar="COMITY_OPERATOR",
    show_default=True,
    help="Who makes the change, for the ledger: an enabled admin's user name, or 'system' [env: COMITY_OPERATOR].",
)


@click.group()
def user() -> None:
    """Users of the local API: roles, clearances, caveats, units, passwords and bearer tokens."""


async def _in_transaction(config_file: Path | None, operator: str, action: Action[_T]) -> _T:
    """Run ``action(conn, now, actor)`` in one transaction of the configured database."""
    settings = settings_from(config_file)
    engine = make_engine(settings.database_dsn, pool_size=1)
    try:
        async with engine.begin() as conn:
            now = datetime.now(UTC)
            actor = await Users.actor(conn, operator)
            return await action(conn, now, actor)
    finally:
        await engine.dispose()


def _level(value: str) -> str:
    """A level of the scheme, also written in any case with '-' or '_' for spaces (STRICTLY-CONFIDENTIAL); anything
    else as given, for the store to refuse with the list of levels."""
    return MarkingScheme().level_named(value)


from_env_option = click.option(
    "--from-env",
    is_flag=True,
    help=f"Take the password from {PASSWORD_ENV} instead of a prompt.",
)


def _password(wanted: bool, from_env: bool) -> str | None:
    """The password a command sets: none unless ``wanted``; from COMITY_USER_PASSWORD only with ``--from-env``,
    else typed at a prompt. A variable left set from an earlier command must never become another account's
    password unasked, so a set variable that is not used is named on stderr (decision 109)."""
    value = os.environ.get(PASSWORD_ENV)
    if not (wanted and from_env):
        if value is not None:
            click.echo(f"comity: {PASSWORD_ENV} is set but not used: give --from-env to use it", err=True)
        if not wanted:
            return None
        try:
            value = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
        except click.Abort:  # end of input or ^C: one line, as read_passphrase says it for the passphrase
            raise CommandError(
                f"no password was given; type one at the prompt, or give --from-env with {PASSWORD_ENV}"
            ) from None
    elif value is None:
        raise CommandError(f"--from-env: {PASSWORD_ENV} is not set")
    if not value:
        raise CommandError("the password must not be empty")
    return value


def _describe(found: User) -> str:
    caveats = ",".join(found.caveats) or "-"
    state = "disabled" if found.disabled else "enabled"
    password = "yes" if found.has_password else "no"
    return (
        f"{found.username} role={found.role} clearance={found.clearance.replace(' ', '-')} caveats={caveats} "
        f"unit={found.unit or '-'} password={password} {state}"
    )


def _describe_token(info: TokenInfo, now: datetime) -> str:
    if info.revoked_at is not None:
        state = f"revoked {format_time(info.revoked_at)}"
    elif info.expires_at is not None and info.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    expires = "never" if info.expires_at is None else format_time(info.expires_at)
    return (
        f"  token {info.token_id} label={info.label} scopes={','.join(sorted(info.scopes))} expires={expires} {state}"
    )


# --- create ---------------------------------------------------------------------------------------------------


@user.command()
@config_option
@operator_option
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), default="officer", show_default=True)
@click.option("--clearance", default="UNCLASSIFIED", show_default=True, help="A level of the marking scheme.")
@click.option("--caveat", "caveats", multiple=True, help="A caveat the user may see (repeat for several).")
@click.option("--unit", default="", help="The user's unit, e.g. mla-unit.")
@click.option(
    "--password/--no-password",
    "password_mode",
    default=None,
    help="Set a password, typed at a prompt (or --from-env). Default: none (a token-only account).",
)
@from_env_option
@click.option(
    "--token-days",
    type=click.IntRange(1, MAX_DAYS),
    default=None,
    help="Also issue a token valid this many days (printed once).",
)
@reports_errors
def create(
    config_file: Path | None,
    operator: str,
    username: str,
    role: str,
    clearance: str,
    caveats: tuple[str, ...],
    unit: str,
    password_mode: bool | None,
    from_env: bool,
    token_days: int | None,
) -> None:
    """Create USERNAME; with --token-days, print a new bearer token (shown once, stored hashed)."""
    if from_env and password_mode is False:
        raise CommandError("--from-env gives a password: it does not go with --no-password")
    password = _password(bool(password_mode) or from_env, from_env)

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> tuple[User, IssuedToken | None]:
        created = await Users.create(
            conn,
            username,
            role,
            now,
            clearance=_level(clearance),
            caveats=caveats,
            unit=unit,
            password=password,
            actor=actor,
        )
        if token_days is None:
            return created, None
        issued = await Users.issue(
            conn, created, now, label="initial", expires_at=now + timedelta(days=token_days), actor=actor
        )
        return created, issued

    created, issued = run(_in_transaction(config_file, operator, action))
    click.echo(f"created {_describe(created)}", err=True)
    if issued is not None:
        click.echo(f"token {issued.token_id} expires {format_time(issued.expires_at)}", err=True)
        click.echo(issued.token)


# --- changes --------------------------------------------------------------------------------------------------


def _change(config_file: Path | None, operator: str, action: Action[User]) -> None:
    changed = run(_in_transaction(config_file, operator, action))
    click.echo(_describe(changed))


@user.command("set-role")
@config_option
@operator_option
@click.argument("username")
@click.argument("role", type=click.Choice(ROLES))
@reports_errors
def set_role(config_file: Path | None, operator: str, username: str, role: str) -> None:
    """Give USERNAME the ROLE (its tokens keep only the scopes the new role allows)."""

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> User:
        return await Users.set_role(conn, username, role, now, actor=actor)

    _change(config_file, operator, action)


@user.command("set-clearance")
@config_option
@operator_option
@click.argument("username")
@click.argument("level")
@reports_errors
def set_clearance(config_file: Path | None, operator: str, username: str, level: str) -> None:
    """Clear USERNAME up to LEVEL (e.g. CONFIDENTIAL, STRICTLY-CONFIDENTIAL)."""

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> User:
        return await Users.set_clearance(conn, username, _level(level), now, actor=actor)

    _change(config_file, operator, action)


@user.command("set-caveats")
@config_option
@operator_option
@click.argument("username")
@click.argument("caveats", nargs=-1)
@reports_errors
def set_caveats(config_file: Path | None, operator: str, username: str, caveats: tuple[str, ...]) -> None:
    """Authorise USERNAME for exactly CAVEATS (none: no caveated material)."""

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> User:
        return await Users.set_caveats(conn, username, caveats, now, actor=actor)

    _change(config_file, operator, action)


@user.command("set-unit")
@config_option
@operator_option
@click.argument("username")
@click.argument("unit")
@reports_errors
def set_unit(config_file: Path | None, operator: str, username: str, unit: str) -> None:
    """Move USERNAME to UNIT."""

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> User:
        return await Users.set_unit(conn, username, unit, now, actor=actor)

    _change(config_file, operator, action)


@user.command()
@config_option
@operator_option
@click.argument("username")
@reports_errors
def disable(config_file: Path | None, operator: str, username: str) -> None:
    """Disable USERNAME and revoke all its tokens."""

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> User:
        return await Users.set_disabled(conn, username, True, now, actor=actor)

    _change(config_file, operator, action)


@user.command()
@config_option
@operator_option
@click.argument("username")
@reports_errors
def enable(config_file: Path | None, operator: str, username: str) -> None:
    """Enable USERNAME again (its old tokens stay revoked)."""

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> User:
        return await Users.set_disabled(conn, username, False, now, actor=actor)

    _change(config_file, operator, action)


@user.command("set-password")
@config_option
@operator_option
@click.argument("username")
@click.option("--remove", is_flag=True, help="Remove the password: the account can then only use tokens.")
@from_env_option
@reports_errors
def set_password(config_file: Path | None, operator: str, username: str, remove: bool, from_env: bool) -> None:
    """Set the password of USERNAME (typed at a prompt, or --from-env); tokens from logins are revoked."""
    if remove and from_env:
        raise CommandError("--remove sets no password: it does not go with --from-env")
    password = _password(not remove, from_env)

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> User:
        return await Users.set_password(conn, username, password, now, actor=actor)

    _change(config_file, operator, action)


# --- tokens ---------------------------------------------------------------------------------------------------


@user.command()
@config_option
@operator_option
@click.argument("username")
@click.option("--days", type=click.IntRange(1, MAX_DAYS), default=30, show_default=True, help="Validity in days.")
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(SCOPES),
    multiple=True,
    help="Limit the token to this scope (repeat; default: all the role allows).",
)
@click.option("--label", default="cli", show_default=True, help="A name to revoke it by.")
@reports_errors
def token(
    config_file: Path | None, operator: str, username: str, days: int, scopes: tuple[str, ...], label: str
) -> None:
    """Issue a new bearer token for USERNAME and print it (shown once, stored hashed)."""

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> IssuedToken:
        found = await Users.by_name(conn, username)
        return await Users.issue(
            conn,
            found,
            now,
            label=label,
            expires_at=now + timedelta(days=days),
            scopes=scopes or None,
            actor=actor,
        )

    issued = run(_in_transaction(config_file, operator, action))
    click.echo(
        f"token {issued.token_id} for {username} scopes={','.join(sorted(issued.scopes))} "
        f"expires {format_time(issued.expires_at)}",
        err=True,
    )
    click.echo(issued.token)


@user.command()
@config_option
@operator_option
@click.argument("username")
@click.option("--id", "token_id", help="Revoke the token with this id (see 'comity user list --tokens').")
@click.option("--label", help="Revoke the active tokens with this label.")
@click.option("--all", "revoke_all", is_flag=True, help="Revoke every token of USERNAME.")
@reports_errors
def revoke(
    config_file: Path | None, operator: str, username: str, token_id: str | None, label: str | None, revoke_all: bool
) -> None:
    """Revoke tokens of USERNAME: one by --id, those with --label, or --all."""
    if sum((token_id is not None, label is not None, revoke_all)) != 1:
        raise CommandError("give exactly one of --id, --label or --all")

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> int:
        if revoke_all:
            return await Users.revoke_tokens(conn, await Users.by_name(conn, username), now, actor=actor)
        return await Users.revoke_token(conn, username, now, token_id=token_id, label=label, actor=actor)

    count = run(_in_transaction(config_file, operator, action))
    click.echo(f"revoked {count} token{'' if count == 1 else 's'} of {username}")


# --- list -----------------------------------------------------------------------------------------------------


@user.command("list")
@config_option
@click.option("--tokens", "with_tokens", is_flag=True, help="Also list each user's tokens (ids, never secrets).")
@reports_errors
def list_users(config_file: Path | None, with_tokens: bool) -> None:
    """List the users (no passwords, hashes or tokens)."""

    async def action(conn: AsyncConnection, now: datetime, actor: str) -> list[str]:
        lines = []
        for found in await Users.list_users(conn):
            lines.append(_describe(found))
            if with_tokens:
                lines += [_describe_token(info, now) for info in await Users.tokens_of(conn, found.username)]
        return lines

    for line in run(_in_transaction(config_file, "system", action)):
        click.echo(line)
