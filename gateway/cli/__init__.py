"""The ``comity`` command. Subcommands load lazily so that ``comity --help`` stays fast."""

from __future__ import annotations

import importlib
import os
from typing import Any

import click
from click.exceptions import NoArgsIsHelpError

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
    def invoke(self, ctx: click.Context) -> Any:
        """Every failure is one line: a command's own errors say what to do; anything unexpected is named by its
        type only, since its message may hold what it was handed (a passphrase, a token, a URL with a password).
        ``COMITY_DEBUG=1`` lets the traceback through."""
        from gateway.cli.common import CommandError

        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:  # a group named without a command: its help, as click shows it
            raise
        except click.UsageError as exc:  # a subcommand's command line, parsed in here
            raise _one_line(exc) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("COMITY_DEBUG") == "1":
                raise
            if isinstance(exc, OSError) and exc.strerror:
                where = f"{exc.filename}: " if exc.filename else ""
                raise CommandError(f"{where}{exc.strerror}") from None
            raise CommandError(
                f"unexpected error ({type(exc).__name__}); its details are not shown, as they may hold secrets: "
                "run again with COMITY_DEBUG=1 to see them"
            ) from None

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # the top level's own command line
            raise _one_line(exc) from None

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


def _one_line(exc: click.UsageError) -> click.ClickException:
    """A command line click refused (an unknown option, a value out of range, a file that does not exist), as one
    line ``comity: <message>``, exit code 2, instead of click's usage block."""
    from gateway.cli.common import CommandLineError

    where = exc.ctx.command_path if exc.ctx is not None else "comity"
    return CommandLineError(f"{exc.format_message().rstrip('.')}; see '{where} --help'")


@click.group(cls=_LazyGroup)
@click.version_option(package_name="comity")
def main() -> None:
    """Comity: the gateway central authorities run to exchange MLA, extradition and asset-recovery requests."""
