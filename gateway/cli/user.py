"""``comity user``: create users and issue or revoke their API tokens. Every change is ledgered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from gateway.cli.common import reports_errors
from gateway.cli.runtime import config_option, run, settings_from
from protocol.events import EventType, LedgerEvent
from protocol.timefmt import format_time
from store.db import is_sqlite, make_engine
from store.events import EventLog
from store.users import ROLES, Users

__all__ = ["user"]


@click.group()
def user() -> None:
    """Users of the local API and their bearer tokens."""


async def _create(config_file: Path | None, username: str, role: str, token_days: int | None) -> str | None:
    settings = settings_from(config_file)
    engine = make_engine(settings.database_dsn, pool_size=1)
    try:
        async with engine.begin() as conn:
            now = datetime.now(UTC)
            created = await Users.create(conn, username, role, now)
            await EventLog(for_update=not is_sqlite(settings.database_dsn)).append(
                conn,
                LedgerEvent.parse(
                    {
                        "type": EventType.USER_CHANGED.value,
                        "time": format_time(now),
                        "actor": "system",
                        "subject": f"user:{username}",
                        "state": f"created-{role}",
                    }
                ),
            )
            if token_days is None:
                return None
            expires = None if token_days == 0 else now + timedelta(days=token_days)
            return await Users.issue_token(conn, created, "initial", now, expires)
    finally:
        await engine.dispose()


@user.command()
@config_option
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), default="officer", show_default=True)
@click.option("--token-days", type=int, default=None, help="Also issue a token valid this many days (0: no expiry).")
@reports_errors
def create(config_file: Path | None, username: str, role: str, token_days: int | None) -> None:
    """Create USERNAME with ROLE; with --token-days, print a new token (shown once, stored hashed)."""
    token = run(_create(config_file, username, role, token_days))
    click.echo(f"created {role} {username}", err=True)
    if token is not None:
        click.echo(token)


async def _token(config_file: Path | None, username: str, days: int) -> str:
    settings = settings_from(config_file)
    engine = make_engine(settings.database_dsn, pool_size=1)
    try:
        async with engine.begin() as conn:
            now = datetime.now(UTC)
            found = await Users.by_name(conn, username)
            return await Users.issue_token(conn, found, "cli", now, None if days == 0 else now + timedelta(days=days))
    finally:
        await engine.dispose()


@user.command()
@config_option
@click.argument("username")
@click.option("--days", type=int, default=30, show_default=True, help="Validity in days (0: no expiry).")
@reports_errors
def token(config_file: Path | None, username: str, days: int) -> None:
    """Issue a new bearer token for USERNAME and print it (shown once, stored hashed)."""
    click.echo(run(_token(config_file, username, days)))
