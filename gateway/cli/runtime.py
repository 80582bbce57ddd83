"""Helpers for commands that work on a configured gateway: load settings, run a coroutine."""

from __future__ import annotations

import asyncio
import threading
import time
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

        return uvloop.run(_settled(coroutine))
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(_settled(coroutine))


_SQLITE_WORKER = "(_connection_worker_thread)"  # aiosqlite names each connection's thread after this function
SQLITE_WORKERS_GRACE = 1.0  # seconds; only a connection left open would make us wait this long


async def _settled(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine``, then let aiosqlite's worker threads answer their last call while the loop still runs.

    A SQLite connection that fails to open queues its own stop without waiting for it; if the command ends (with
    its one-line error) and the loop closes first, the thread's answer hits a closed loop and Python prints its
    traceback to stderr after our message.
    """
    before = set(threading.enumerate())  # only this command's own connections (a test may run gateways beside it)
    try:
        return await coroutine
    finally:
        deadline = time.monotonic() + SQLITE_WORKERS_GRACE
        for thread in set(threading.enumerate()) - before:
            # is_alive: enumerate() also lists a thread another one is starting (a test's gateway opening a
            # connection beside the command), which join() refuses with a RuntimeError until it runs; ours run
            if thread.name.endswith(_SQLITE_WORKER) and thread.is_alive():
                await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
