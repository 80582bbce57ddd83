"""``comity db``: schema migrations."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.common import reports_errors
from gateway.cli.runtime import config_option, run, settings_from
from store.db import run_migrations

__all__ = ["db"]


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@config_option
@click.option("--revision", default="head", show_default=True)
@reports_errors
def upgrade(config_file: Path | None, revision: str) -> None:
    """Bring the database schema up to REVISION (never down); print the revision it is at then."""
    settings = settings_from(config_file)
    reached = run(run_migrations(settings.database_dsn, revision))
    click.echo(f"database at {reached or 'base'}")
