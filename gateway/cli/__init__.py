"""The ``comity`` command. Subcommands load lazily so that ``comity --help`` stays fast."""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["main"]

# name -> "module:attribute"; each module owns one command or group
_COMMANDS = {
    "init": "gateway.cli.init:init",
    "keys": "gateway.cli.keys:keys",
    "directory": "gateway.cli.directory:directory",
    "user": "gateway.cli.user:user",
    "peer": "gateway.cli.peer:peer",
    "db": "gateway.cli.db:db",
    "serve": "gateway.cli.serve:serve",
    "demo": "gateway.cli.demo:demo",
    "request": "gateway.cli.request:request",
    "audit": "gateway.cli.audit:audit",
    "case": "gateway.cli.case:case",
    "stats": "gateway.cli.stats:stats",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command: Any = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="comity")
def main() -> None:
    """Comity: the gateway central authorities run to exchange MLA, extradition and asset-recovery requests."""
