"""``comity stats [NAME]``: the statistics of docs/requests.md, read from the gateway's database directly.

Without NAME every statistic is printed. Filters as in the API (``--from 2025 --to 2026-06-30 --direction incoming
--type extradition ...``); ``--format table`` (default), ``json`` or ``csv`` (one statistic). Errors are one line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from config.settings import Settings
from gateway.cli.common import CommandError, reports_errors
from gateway.cli.runtime import config_option, run, settings_from
from protocol.stats import Filters, Statistic, StatTable, parse_filters, to_csv
from store.db import make_engine
from store.stats import compute

__all__ = ["stats"]

_OPTIONS = {
    "direction": "incoming or outgoing",
    "from": "first year (YYYY) or day (YYYY-MM-DD) a case was opened",
    "to": "last year or day, inclusive",
    "counterpart": "the other authority's id, e.g. ar.mj",
    "country": "its country, e.g. AR",
    "type": "request type, e.g. mla-criminal",
    "legal_basis": "uncac, treaty or reciprocity",
    "offence": "UNCAC article, e.g. 23",
    "assistance": "assistance sought, e.g. tracing-proceeds",
    "state": "open or closed",
    "officer": "user name of an assigned officer",
}


async def _compute(settings: Settings, names: list[Statistic], filters: Filters, now: datetime) -> list[StatTable]:
    engine = make_engine(settings.database_dsn, pool_size=1)
    today, utc_day = settings.today(now), now.date()
    try:
        async with engine.connect() as conn:
            return [await compute(conn, name, filters, today=today, utc_day=utc_day) for name in names]
    finally:
        await engine.dispose()


def _table_text(table: StatTable) -> str:
    cells = [list(table.columns)] + [["" if v is None else str(v) for v in row] for row in table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    lines = [f"{table.statistic.value}"]
    for row in cells:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if not table.rows:
        lines.append("(none)")
    return "\n".join(lines)


def _option(name: str, help_text: str) -> click.Option:
    return click.Option([f"--{name.replace('_', '-')}", name], default=None, help=help_text)


@click.command(params=[_option(name, text) for name, text in _OPTIONS.items()])
@click.argument("name", required=False, type=click.Choice([s.value for s in Statistic]))
@click.option("--format", "output", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@config_option
@reports_errors
def stats(name: str | None, output: str, config_file: Path | None, **given: str | None) -> None:
    """Statistics of requests sent and received: counts by year, country, type, offence, legal basis, assistance,
    outcome, refusal ground and officer; open and closed; waiting times; overdue cases."""
    filters = parse_filters({key: value for key, value in given.items() if value is not None})
    names = [Statistic(name)] if name else list(Statistic)
    if output == "csv" and len(names) != 1:
        raise CommandError("--format csv prints one statistic: name it, e.g. 'comity stats by-year --format csv'")
    settings = settings_from(config_file)
    tables = run(_compute(settings, names, filters, datetime.now(UTC)))
    if output == "csv":
        click.echo(to_csv(tables[0]), nl=False)
    elif output == "json":
        body = {"filters": filters.to_json(), "statistics": {t.statistic.value: t.to_json()["rows"] for t in tables}}
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo("\n\n".join(_table_text(table) for table in tables))
