"""The receipts a peer owes the witness, kept in the database (decision 176): replicas adding and settling at once
lose none of each other's, and the list stays bounded."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from store.ledger import WitnessState


def _receipt(number: int) -> dict[str, object]:
    return {"message_id": f"m{number}", "ledger_index": number}


async def _owe(engine: AsyncEngine, number: int, limit: int = 256) -> list[str]:
    async with engine.begin() as conn:
        return await WitnessState.owe_receipts(conn, "au.ag", [_receipt(number)], limit)


async def _owed(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [str(item["message_id"]) for item in await WitnessState.owed_receipts(conn, "au.ag")]


async def test_replicas_that_owe_and_settle_at_once_lose_nothing(engine: AsyncEngine) -> None:
    # the first receipts ever owed, from several replicas at once: none overwrites another's
    await asyncio.gather(*(_owe(engine, number) for number in range(8)))
    assert sorted(await _owed(engine)) == [f"m{number}" for number in range(8)]

    async def settle(ids: list[str]) -> int:
        async with engine.begin() as conn:
            return await WitnessState.settle_receipts(conn, "au.ag", ids)

    # one replica settles two while others owe two more
    await asyncio.gather(settle(["m0", "m1"]), _owe(engine, 8), _owe(engine, 9))
    assert sorted(await _owed(engine)) == sorted([f"m{number}" for number in range(2, 10)])
    assert await settle([f"m{number}" for number in range(2, 10)]) == 0
    assert await _owed(engine) == []


async def test_a_receipt_owed_again_moves_last_and_the_oldest_go_beyond_the_limit(engine: AsyncEngine) -> None:
    for number in range(3):
        assert await _owe(engine, number, limit=3) == []
    assert await _owe(engine, 0, limit=3) == []  # owed again: once, now the newest
    assert await _owed(engine) == ["m1", "m2", "m0"]
    assert await _owe(engine, 3, limit=3) == ["m1"]
    assert await _owed(engine) == ["m2", "m0", "m3"]
