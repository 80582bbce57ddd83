"""gateway.coalesce: concurrent lookups share a query, and every answer comes from a query that started after it was
asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.coalesce import Coalescer, LookupFailed


class Table:
    """A fetch over a dict that records each query's keys and can be held open."""

    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = rows
        self.queries: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.fail: Exception | None = None

    async def fetch(self, keys: Sequence[str]) -> dict[str, int]:
        self.queries.append(list(keys))
        snapshot = {key: self.rows[key] for key in keys if key in self.rows}  # read when the query starts
        self.started.set()
        await self.gate.wait()
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        return snapshot


async def test_lookups_asked_together_are_one_query() -> None:
    table = Table({"a": 1, "b": 2})
    lookups = Coalescer(table.fetch)
    assert list(await asyncio.gather(lookups.get("a"), lookups.get("b"), lookups.get("a"), lookups.get("zz"))) == [
        1,
        2,
        1,
        None,
    ]
    assert table.queries == [["a", "b", "zz"]]
    assert await lookups.get("b") == 2  # alone: its own query at once
    assert table.queries[-1] == ["b"] and lookups.queries == 2


async def test_a_lookup_asked_during_a_query_waits_for_the_next_one_and_sees_what_changed() -> None:
    table = Table({"token": 1})
    lookups = Coalescer(table.fetch)
    table.gate.clear()
    first = asyncio.create_task(lookups.get("token"))
    await table.started.wait()  # the first query has read its rows
    table.rows["token"] = 2  # say, the token was revoked meanwhile
    second = asyncio.create_task(lookups.get("token"))
    third = asyncio.create_task(lookups.get("other"))
    await asyncio.sleep(0)
    assert len(table.queries) == 1  # nothing joins the query in flight
    table.gate.set()
    assert (await first, await second, await third) == (1, 2, None)
    assert table.queries == [["token"], ["token", "other"]]


async def test_an_error_reaches_every_caller_of_its_query_and_the_next_query_runs() -> None:
    table = Table({"a": 1})
    lookups = Coalescer(table.fetch)
    table.fail = RuntimeError("database went away")
    results = await asyncio.gather(lookups.get("a"), lookups.get("b"), return_exceptions=True)
    assert [type(result) for result in results] == [LookupFailed, LookupFailed]
    assert results[0] is not results[1]  # each caller its own exception (and traceback)
    assert all(isinstance(result, LookupFailed) and isinstance(result.__cause__, RuntimeError) for result in results)
    assert await lookups.get("a") == 1


async def test_a_cancelled_caller_leaves_the_query_to_the_others() -> None:
    table = Table({"a": 1})
    lookups = Coalescer(table.fetch)
    table.gate.clear()
    impatient = asyncio.create_task(lookups.get("a"))
    patient = asyncio.create_task(lookups.get("a"))
    await table.started.wait()
    impatient.cancel()
    table.gate.set()
    assert await patient == 1
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_a_query_holds_at_most_max_keys() -> None:
    table = Table({str(i): i for i in range(10)})
    lookups = Coalescer(table.fetch, max_keys=4)
    assert await asyncio.gather(*(lookups.get(str(i)) for i in range(10))) == list(range(10))
    assert [len(keys) for keys in table.queries] == [4, 4, 2]


async def test_stopping_the_drain_cancels_the_callers_still_waiting() -> None:
    table = Table({"a": 1})
    lookups = Coalescer(table.fetch)
    table.gate.clear()
    waiting = asyncio.create_task(lookups.get("a"))
    await table.started.wait()
    later = asyncio.create_task(lookups.get("b"))
    await asyncio.sleep(0)
    assert lookups._drainer is not None
    lookups._drainer.cancel()
    for task in (waiting, later):
        with pytest.raises(asyncio.CancelledError):
            await task
    table.gate.set()
    assert await lookups.get("a") == 1  # a new drain starts with the next lookup


async def test_a_drain_cancelled_before_it_ran_does_not_stall_later_lookups() -> None:
    table = Table({"a": 1})
    lookups = Coalescer(table.fetch)
    first = asyncio.create_task(lookups.get("a"))
    await asyncio.sleep(0)  # first is waiting; its drain task is created but has not run
    assert lookups._drainer is not None
    lookups._drainer.cancel()
    await asyncio.sleep(0)
    assert await asyncio.wait_for(lookups.get("a"), timeout=2) == 1
    first.cancel()


async def test_the_callers_of_a_drain_cancelled_before_it_ran_are_cancelled_not_left_waiting() -> None:
    table = Table({"a": 1})
    lookups = Coalescer(table.fetch)
    first = asyncio.create_task(lookups.get("a"))
    await asyncio.sleep(0)
    assert lookups._drainer is not None
    lookups._drainer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, timeout=2)  # no later lookup needed to end the wait
    assert table.queries == [] and lookups._drainer is None
