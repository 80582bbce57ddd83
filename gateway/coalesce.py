"""Lookups by key that arrive together go to the database as one query.

Every API call looks up its bearer token, and every incoming envelope asks whether its message id was seen: one
round trip each, which under load cost more than the rest of the read (decision 69). A :class:`Coalescer` sends the
keys asked for while no query of its own is in flight at once, in one query, and those asked for while one is in
flight together in the next, as soon as it returns. So each answer comes from a query that started after its key was
asked for: nothing is cached, and a token revoked before the call is refused exactly as with a query of its own.
Under a light load each lookup is still its own query, sent one event-loop turn later (the drain is a task).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Coalescer", "LookupFailed"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# one query's keys: bounded so that a statement's array stays small whatever the load
MAX_KEYS = 256


class LookupFailed(RuntimeError):
    """The query a lookup went out in failed; ``__cause__`` is what ``fetch`` raised."""


class Coalescer(Generic[K, V]):
    """``await get(key)`` is ``fetch([key]).get(key)``, with concurrent keys fetched together.

    ``fetch`` answers a list of distinct keys with a mapping holding those it found; an error it raises reaches
    every caller whose key was in that query as a :class:`LookupFailed` of its own, caused by that error.
    """

    def __init__(self, fetch: Callable[[Sequence[K]], Awaitable[dict[K, V]]], *, max_keys: int = MAX_KEYS) -> None:
        self._fetch = fetch
        self._max_keys = max_keys
        self._waiting: dict[K, asyncio.Future[V | None]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self.queries = 0  # for tests and the benchmark's counts

    async def get(self, key: K) -> V | None:
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)  # an error whose callers were all cancelled is not "never retrieved"
        if self._drainer is None or self._drainer.done():  # done: cancelled before it ever ran, say
            self._drainer = asyncio.create_task(self._drain())
            self._drainer.add_done_callback(self._drained)
        # a caller that is cancelled leaves the query to the others: shield the future they share
        return await asyncio.shield(future)

    def _drained(self, task: asyncio.Task[None]) -> None:
        """However the drain ended (even cancelled before it ran): what still waits for it is cancelled, unless a
        new drain has taken over."""
        if self._drainer is task:
            self._drainer = None
            for future in self._waiting.values():
                future.cancel()
            self._waiting.clear()

    async def _drain(self) -> None:
        while self._waiting:
            keys = list(self._waiting)[: self._max_keys]
            batch = {key: self._waiting.pop(key) for key in keys}
            self.queries += 1
            try:
                found = await self._fetch(keys)
            except Exception as error:
                for future in batch.values():
                    if not future.done():  # each caller its own exception: tracebacks stay per request
                        failed = LookupFailed(f"the lookup failed ({type(error).__name__})")
                        failed.__cause__ = error
                        future.set_exception(failed)
                continue
            except BaseException:
                for future in batch.values():
                    future.cancel()
                raise  # a cancellation (shutdown) ends the drain; _drained cancels the rest
            for key, future in batch.items():
                if not future.done():
                    future.set_result(found.get(key))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
