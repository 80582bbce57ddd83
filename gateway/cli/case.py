"""``comity case``: case work for the operator, read from the database directly (docs/requests.md, "Case work").

``comity case due --overdue`` lists open critical dates and tasks past due; ``comity case due --upcoming DAYS`` those
due from today up to DAYS days ahead; ``comity case work CASE_ID`` shows a case's assignees, flags, dates and tasks
and its oral request. Ids, kinds, dates and user names only: notes and next actions are for cleared officers through
the API, never printed here.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from config.settings import Settings
from gateway.casework import PAGE, date_json
from gateway.cli.common import CommandError, reports_errors
from gateway.cli.runtime import config_option, run, settings_from
from protocol.casework import MAX_WINDOW_DAYS
from store.cases import Cases
from store.casework import CaseDate, CaseWork
from store.db import make_engine

__all__ = ["case"]


@click.group()
def case() -> None:
    """Case work: critical dates and tasks that are overdue or coming up, and a case's work."""


_SHOWN = ("id", "case_id", "kind", "due", "state")  # never the note (decision 39)


def _item(item: CaseDate, today: date) -> dict[str, Any]:
    shown = date_json(item, today)
    return {key: shown[key] for key in _SHOWN}


async def _due(settings: Settings, upcoming: int | None, today: date) -> list[CaseDate]:
    """Every open item of the period, soonest first, read page by page (there is no cut-off)."""
    first, last = (None, today - timedelta(days=1)) if upcoming is None else (today, today + timedelta(days=upcoming))
    engine = make_engine(settings.database_dsn, pool_size=1)
    found: list[CaseDate] = []
    after: tuple[date, int] | None = None
    try:
        async with engine.connect() as conn:
            while True:
                page = await CaseWork.open_between(conn, first, last, limit=PAGE, after=after)
                found.extend(page)
                if len(page) < PAGE:
                    return found
                after = (page[-1].due, page[-1].id)
    finally:
        await engine.dispose()


@case.command()
@config_option
@click.option("--overdue", "overdue", is_flag=True, help="Open items past their due date (the default).")
@click.option(
    "--upcoming",
    type=click.IntRange(0, MAX_WINDOW_DAYS),
    metavar="DAYS",
    help="Open items due from today up to DAYS days ahead.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tab-separated lines.")
@reports_errors
def due(config_file: Path | None, overdue: bool, upcoming: int | None, as_json: bool) -> None:
    """List open critical dates and tasks, overdue or coming up (in the time_zone setting's calendar)."""
    if overdue and upcoming is not None:
        raise CommandError("choose --overdue or --upcoming DAYS, not both")
    settings = settings_from(config_file)
    today = settings.today(datetime.now(UTC))
    items = [_item(item, today) for item in run(_due(settings, upcoming, today))]
    if as_json:
        click.echo(json.dumps({"items": items}, indent=2))
        return
    for item in items:
        click.echo(f"{item['due']}\t{item['state']}\t{item['kind']}\t{item['case_id']}\t{item['id']}")
    if not items:
        click.echo("nothing overdue" if upcoming is None else f"nothing due within {upcoming} days")


async def _work(settings: Settings, case_id: str, today: date) -> dict[str, Any]:
    engine = make_engine(settings.database_dsn, pool_size=1)
    try:
        async with engine.connect() as conn:
            found = await Cases.get(conn, case_id)
            action = await CaseWork.next_action(conn, case_id)
            oral = await CaseWork.oral(conn, case_id)
            return {
                "case_id": case_id,
                "unit": found.unit,
                "state": found.state,
                "assignees": await Cases.assignee_names(conn, case_id),
                "next_action_set": action is not None and action.text is not None,
                "flags": [flag.flag for flag in await CaseWork.flags(conn, case_id)],
                "dates": [_item(item, today) for item in await CaseWork.dates(conn, case_id)],
                "oral_request": None
                if oral is None
                else {
                    "peer": oral.peer,
                    "direction": "received" if oral.direction == "in" else "made",
                    "on": oral.oral_on.isoformat(),
                    "confirmed_by": oral.confirmed_by,
                },
            }
    finally:
        await engine.dispose()


@case.command()
@config_option
@click.argument("case_id")
@reports_errors
def work(config_file: Path | None, case_id: str) -> None:
    """Show a case's work (JSON): assignees, flags, dates and tasks, oral request; never notes."""
    settings = settings_from(config_file)
    click.echo(json.dumps(run(_work(settings, case_id, settings.today(datetime.now(UTC)))), indent=2))
