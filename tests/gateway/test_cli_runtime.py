"""``gateway.cli.runtime.run``: a command's event loop outlives aiosqlite's worker threads.

A SQLite connection that fails to open queues its own stop and does not wait for it. When the command then ends
with its one-line error, the loop used to close before the worker thread answered, and Python printed the thread's
``RuntimeError: Event loop is closed`` traceback after the message (about one run in six of ``comity user list``
against a missing database directory).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import aiosqlite
import pytest

from gateway.cli.runtime import _SQLITE_WORKER, run


def test_a_command_returns_only_after_sqlite_worker_threads_have_answered() -> None:
    late: list[BaseException] = []

    def worker(loop: asyncio.AbstractEventLoop) -> None:
        time.sleep(0.05)  # still finishing the connection's stop when the command is done
        try:
            loop.call_soon_threadsafe(lambda: None)
        except RuntimeError as exc:
            late.append(exc)

    threads: list[threading.Thread] = []

    async def command() -> str:
        threads.append(threading.Thread(target=worker, args=(asyncio.get_running_loop(),), name=f"T {_SQLITE_WORKER}"))
        threads[0].start()
        return "done"

    assert run(command()) == "done"
    threads[0].join()
    assert late == []


def test_a_thread_another_one_is_starting_does_not_fail_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """threading.enumerate() lists a thread from the moment start() is called, before it runs, and join() refuses
    such a thread with a RuntimeError: a gateway opening a SQLite connection beside the command (in a test) made the
    command fail now and then as an "unexpected error (RuntimeError)"."""
    starting = threading.Thread(target=lambda: None, name=f"other {_SQLITE_WORKER}")  # never started here
    listed = threading.enumerate

    async def command() -> str:
        monkeypatch.setattr(threading, "enumerate", lambda: [*listed(), starting])
        return "done"

    assert run(command()) == "done"


async def test_aiosqlite_names_its_worker_threads_as_run_expects(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    async with aiosqlite.connect(str(tmp_path / "comity.db")):
        started = [thread for thread in threading.enumerate() if thread not in before]
    assert started and all(thread.name.endswith(_SQLITE_WORKER) for thread in started)
