"""Background loops (the outbox sender, the checkpointer, the notifier) must stop when their task is cancelled.

Each loop catches ``Exception`` so that one failed round does not end it; a cancellation is a ``BaseException`` and
passes through. But a library can still turn a cancellation that lands in the middle of its work into an ordinary
error (a connection pool returning a connection, an HTTP client closing a socket), and the loop would then sleep and
go on, while the gateway waits for it to stop. Each loop therefore asks, before it sleeps, whether its task has been
asked to stop.
"""

from __future__ import annotations

import asyncio

__all__ = ["stop_if_cancelled"]


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task has a pending cancellation request (Python 3.11+)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
