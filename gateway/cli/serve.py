"""``comity serve``: run the gateway until SIGTERM or SIGINT."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.app import serve_forever
from gateway.cli.common import read_passphrase, reports_errors
from gateway.cli.keys import keys_in_use
from gateway.cli.runtime import config_option, run, settings_from
from gateway.context import Gateway
from gateway.logs import configure_logging

__all__ = ["serve"]


async def _serve(config_file: Path | None, passphrase: bytes) -> None:
    settings = settings_from(config_file)
    configure_logging(settings.log_level)
    with keys_in_use(settings.keys_path):  # no key rotation under a running gateway (gateway/cli/keys.py)
        gw = await Gateway.load(settings, passphrase)
        await serve_forever(gw)


@click.command()
@config_option
@reports_errors
def serve(config_file: Path | None) -> None:
    """Run the federation endpoint (mutual TLS), the local API and the outbox sender."""
    passphrase = read_passphrase("COMITY_PASSPHRASE", confirm=False)
    run(_serve(config_file, passphrase))
