"""``comity audit``: verify a ledger without trusting its operator, print a message's timeline, export events.

Sources: ``--database URL`` (the gateway's database, read-only) or ``--url URL --token TOKEN`` (the gateway's
auditor API). ``docs/ledger.md`` describes every check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from gateway.cli.common import CommandError, one_line
from protocol.errors import ComityError

__all__ = ["audit"]

_T = TypeVar("_T")


def _run(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    from gateway.audit import AuditFailure, SourceError, StateError

    try:
        return asyncio.run(make())
    except AuditFailure as exc:
        raise CommandError(exc.line) from None
    except (SourceError, StateError) as exc:
        raise CommandError(str(exc)) from None
    except ComityError as exc:
        raise CommandError(exc.message) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise CommandError(f"{where}{exc.strerror or exc}") from None


async def _export_to_file(out_file: Path, write: Callable[[IO[str]], Awaitable[int]]) -> int:
    """Run ``write`` into a new file beside ``out_file`` (mode 0600: ledger events) that replaces it only once the
    export is complete: a failure part-way leaves ``out_file`` as it was, or absent."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below, before the rename)
        "w", encoding="utf-8", newline="", dir=out_file.parent, prefix=f".{out_file.name}.", delete=False
    )
    try:
        with handle:
            count = await write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, out_file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)
        raise
    return count


def _token(token: str | None, token_file: Path | None) -> str | None:
    if token_file is not None:
        return token_file.read_text(encoding="utf-8").strip()
    return token or os.environ.get("COMITY_AUDIT_TOKEN")


def _source_options(multiple: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option(
            "--database",
            "databases" if multiple else "database",
            multiple=multiple,
            metavar="URL",
            help="read the gateway's database: sqlite+aiosqlite:///file or postgresql+asyncpg://...?comity_schema=S",
        )(function)
        function = click.option(
            "--url", "urls" if multiple else "url", multiple=multiple, metavar="URL", help="the gateway's API"
        )(function)
        function = click.option(
            "--token",
            "tokens" if multiple else "token",
            multiple=multiple,
            metavar="TOKEN",
            help="auditor bearer token for --url (else COMITY_AUDIT_TOKEN)",
        )(function)
        function = click.option(
            "--token-file",
            "token_files" if multiple else "token_file",
            multiple=multiple,
            type=click.Path(path_type=Path, dir_okay=False),
            help="read the token from a file" + (" (one per --url, instead of --token)" if multiple else ""),
        )(function)
        return function

    return decorate


def _one_source(database: str | None, url: str | None, token: str | None) -> tuple[str | None, str | None, str | None]:
    if (database is None) == (url is None):
        raise CommandError("give exactly one source: --database URL, or --url URL with --token")
    if url is not None and not token:
        raise CommandError("--url needs an auditor token: --token, --token-file or COMITY_AUDIT_TOKEN")
    return database, url, token


@click.group()
def audit() -> None:
    """Verify a ledger without trusting its operator; timelines and exports of its events."""


@audit.command()
@_source_options(multiple=False)
@click.option(
    "--directory",
    "directory_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="the signed directory (directory.jws)",
)
@click.option(
    "--directory-key",
    "directory_key_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="the pinned directory key (public JWK)",
)
@click.option("--authority", "authority_id", required=True, help="the authority whose ledger this is, e.g. ar.mj")
@click.option(
    "--state",
    "state_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="the auditor's state file [default: $XDG_STATE_HOME/comity/audit-state.json]",
)
@click.option("--no-state", is_flag=True, help="neither read nor write a state file (no check against earlier runs)")
@click.option(
    "--max-unwitnessed",
    type=click.IntRange(min=0),
    help="fail if more entries than this follow the largest size a witness cosigned",
)
@click.option("--progress/--no-progress", default=None, help="progress on stderr [default: when stderr is a terminal]")
def verify(
    database: str | None,
    url: str | None,
    token: str | None,
    token_file: Path | None,
    directory_file: Path,
    directory_key_file: Path,
    authority_id: str,
    state_file: Path | None,
    no_state: bool,
    max_unwitnessed: int | None,
    progress: bool | None,
) -> None:
    """Recompute the tree, check every checkpoint, cosignature and invariant; exit 0 only if everything holds."""
    from gateway.audit import AuditState, load_trust, open_source, verify_ledger
    from gateway.audit.state import default_state_path

    database, url, token = _one_source(database, url, _token(token, token_file))
    show = sys.stderr.isatty() if progress is None else progress

    def report(done: int, total: int, seconds: float) -> None:
        percent = 100.0 * done / total if total else 100.0
        rate = done / seconds if seconds > 0 else 0.0
        click.echo(f"\r  {done:,} / {total:,} entries ({percent:5.1f}%)  {rate:,.0f} entries/s   ", err=True, nl=False)

    async def main() -> list[str]:
        trust = load_trust(directory_file, directory_key_file, authority_id)
        state = AuditState(None if no_state else (state_file or default_state_path()))
        source = await open_source(database=database, url=url, token=token)
        try:
            summary = await verify_ledger(
                source, trust, state, progress=report if show else None, max_unwitnessed=max_unwitnessed
            )
        finally:
            if show:
                click.echo("", err=True)
            await source.close()
        return summary.lines()

    for line in _run(main):
        click.echo(line)


@audit.command()
@click.argument("message_id")
@_source_options(multiple=True)
def timeline(
    message_id: str,
    databases: tuple[str, ...],
    urls: tuple[str, ...],
    tokens: tuple[str, ...],
    token_files: tuple[Path, ...],
) -> None:
    """Milestones of MESSAGE_ID with durations, from one or several ledgers (repeat --database, or --url with
    --token-file or --token)."""
    from gateway.audit import open_source
    from gateway.audit.export import side_timeline, write_timeline

    if tokens and token_files:
        raise CommandError("give the tokens with --token-file (kept off the command line) or --token, not both")
    if token_files:  # a token on the command line shows in the process list and the shell's history
        tokens = tuple(path.read_text(encoding="utf-8").strip() for path in token_files)
    if not databases and not urls:
        raise CommandError("give at least one source: --database URL or --url URL --token TOKEN")
    if urls and len(tokens) != len(urls):
        default = os.environ.get("COMITY_AUDIT_TOKEN")
        if tokens or not default:
            raise CommandError("give one --token per --url (or COMITY_AUDIT_TOKEN for all)")
        tokens = tuple(default for _ in urls)

    async def main() -> None:
        sides = []
        for database in databases:
            source = await open_source(database=database)
            try:
                sides.append(await side_timeline(source, message_id))
            finally:
                await source.close()
        for url, token in zip(urls, tokens, strict=True):
            source = await open_source(url=url, token=token)
            try:
                sides.append(await side_timeline(source, message_id))
            finally:
                await source.close()
        write_timeline(message_id, sides, sys.stdout)

    _run(main)


@audit.command()
@_source_options(multiple=False)
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--since", help="first date or time included (2026-11-01 or RFC 3339 UTC)")
@click.option("--until", help="last date included, or an RFC 3339 UTC time excluded")
@click.option("--counterpart", help="only events with this authority (from, to or peer actor)")
@click.option("--kind", help="only this message kind (request, response, acknowledgement, ...)")
@click.option("--type", "event_type", help="only this event type (message.received, or just received)")
@click.option("--case", help="only events whose 'case' member is this (the schema has no such member yet)")
@click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False), help="write here, not stdout")
def export(
    database: str | None,
    url: str | None,
    token: str | None,
    token_file: Path | None,
    fmt: str,
    since: str | None,
    until: str | None,
    counterpart: str | None,
    kind: str | None,
    event_type: str | None,
    case: str | None,
    out_file: Path | None,
) -> None:
    """Write the ledger's events as CSV or JSON lines, filtered. Nothing is verified: run 'audit verify'."""
    from gateway.audit import open_source
    from gateway.audit.export import ExportFilter, export_events, parse_bound

    database, url, token = _one_source(database, url, _token(token, token_file))
    try:
        only = ExportFilter(
            since=None if since is None else parse_bound(since, end=False),
            until=None if until is None else parse_bound(until, end=True),
            counterpart=counterpart,
            kind=kind,
            case=case,
            type=event_type,
        )
    except ValueError as exc:
        raise CommandError(one_line(str(exc))) from None

    async def main() -> int:
        source = await open_source(database=database, url=url, token=token)
        try:
            if out_file is None:
                return await export_events(source, sys.stdout, fmt=fmt, only=only)
            return await _export_to_file(out_file, lambda handle: export_events(source, handle, fmt=fmt, only=only))
        finally:
            await source.close()

    count = _run(main)
    click.echo(f"{count:,} events exported", err=True)
