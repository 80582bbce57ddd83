"""``comity peer``: ledger alarms about counterparts, and clearing them after investigation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from gateway.cli.common import CommandError, reports_errors
from gateway.cli.runtime import config_option, run, settings_from
from protocol.events import EventType, LedgerEvent
from protocol.messages import validate_authority_id
from protocol.timefmt import format_time
from store.db import is_sqlite, make_engine
from store.events import EventLog
from store.ledger import Alarm, WitnessState

__all__ = ["peer"]


@click.group()
def peer() -> None:
    """Counterparts whose ledger was found forked or rewritten."""


async def _alarms(config_file: Path | None) -> list[Alarm]:
    engine = make_engine(settings_from(config_file).database_dsn, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await WitnessState.open_alarms(conn)
    finally:
        await engine.dispose()


@peer.command()
@config_option
@reports_errors
def alarms(config_file: Path | None) -> None:
    """List open alarms (a peer with an open alarm is blocked)."""
    found = run(_alarms(config_file))
    for alarm in found:
        click.echo(f"{alarm.peer}\t{format_time(alarm.raised_at)}\t{alarm.reason}\t{alarm.detail}")
    if not found:
        click.echo("no open alarms")


async def _clear(
    config_file: Path | None, authority_id: str, operator: str, forget_history: bool, forget_receipt_proofs: bool
) -> int:
    settings = settings_from(config_file)
    engine = make_engine(settings.database_dsn, pool_size=1)
    try:
        async with engine.begin() as conn:
            now = datetime.now(UTC)
            cleared = await WitnessState.clear(
                conn,
                authority_id,
                operator,
                now,
                forget_history=forget_history,
                forget_receipt_proofs=forget_receipt_proofs,
            )
            if cleared:
                event = LedgerEvent.parse(
                    {
                        "type": EventType.PEER_ALARM_CLEARED.value,
                        "time": format_time(now),
                        "actor": f"user:{operator}",
                        "from": authority_id,
                    }
                )
                await EventLog(for_update=not is_sqlite(settings.database_dsn)).append(conn, event)
            return cleared
    finally:
        await engine.dispose()


@peer.command()
@config_option
@click.argument("authority_id")
@click.option("--operator", required=True, help="Who investigated and clears the alarm (ledgered).")
@click.option(
    "--forget-history",
    is_flag=True,
    help="Also drop the checkpoints held from the peer: its next checkpoint is trusted as the new starting point.",
)
@click.option(
    "--forget-receipt-proofs",
    is_flag=True,
    help="Also forget that the peer served receipt proofs: accept that it went back to a version without them.",
)
@reports_errors
def clear(
    config_file: Path | None, authority_id: str, operator: str, forget_history: bool, forget_receipt_proofs: bool
) -> None:
    """Clear the open alarms about AUTHORITY_ID; exchanges with it resume within a second."""
    validate_authority_id(authority_id)
    cleared = run(_clear(config_file, authority_id, operator, forget_history, forget_receipt_proofs))
    if not cleared:
        raise CommandError(f"no open alarm about {authority_id}")
    click.echo(f"cleared {cleared} alarm(s) about {authority_id}")
