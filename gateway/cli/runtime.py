"""Helpers for commands that work on a configured gateway: load settings, run a coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from config.settings import Settings, load_settings

__all__ = ["config_option", "run", "settings_from"]

_T = TypeVar("_T")

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="COMITY_CONFIG",
    help="The gateway's comity.toml [env: COMITY_CONFIG].",
)


def settings_from(config_file: Path | None) -> Settings:
    return load_settings(config_file)


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(coroutine)
