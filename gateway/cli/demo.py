"""``comity demo``: the end-to-end scenario of ``make demo``."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.common import reports_errors

__all__ = ["demo"]


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=Path(".demo"), show_default=True)
@reports_errors
def demo(workdir: Path) -> None:
    """Create two authorities and exchange a request and its response between their gateways."""
    from gateway.demo import run_demo

    run_demo(workdir)
