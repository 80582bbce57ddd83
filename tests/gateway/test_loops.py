"""A background loop stops when cancelled even if a library swallowed the cancellation (gateway/loops.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.loops import stop_if_cancelled


async def test_a_loop_whose_cancellation_was_swallowed_still_stops() -> None:
    rounds = 0
    started = asyncio.Event()

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                started.set()
                await asyncio.sleep(10)  # the cancellation lands here
            except asyncio.CancelledError:
                pass  # what a careless library does with it
            stop_if_cancelled()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert rounds == 1


async def test_a_loop_that_was_not_cancelled_goes_on() -> None:
    stop_if_cancelled()  # nothing asked this task to stop: no error
