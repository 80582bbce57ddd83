"""The event log: appends in the caller's transaction, and the stored tree agrees with RFC 9162."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from protocol import merkle
from protocol.events import EventType, LedgerEvent
from store.db import is_sqlite, make_engine, run_migrations
from store.events import EventLog
from store.tables import ledger_entries, ledger_nodes


def event(n: int) -> LedgerEvent:
    return LedgerEvent.parse(
        {
            "type": EventType.USER_CHANGED.value,
            "time": f"2026-11-28T07:40:{n % 60:02d}.000000Z",
            "actor": "system",
            "subject": f"user:u{n}",
        }
    )


async def test_appends_build_the_rfc9162_tree(db_url: str) -> None:
    await run_migrations(db_url)
    engine = make_engine(db_url)
    log = EventLog(for_update=not is_sqlite(db_url))
    try:
        entries: list[bytes] = []
        for batch in range(5):
            async with engine.begin() as conn:
                batch_events = [event(batch * 10 + i) for i in range(batch + 1)]
                indexes = await log.append_many(conn, batch_events)
                assert indexes == list(range(len(entries), len(entries) + len(batch_events)))
                entries += [e.to_bytes() for e in batch_events]
        async with engine.connect() as conn:
            head = await log.head(conn)
            stored = [
                row.entry for row in await conn.execute(select(ledger_entries.c.entry).order_by(ledger_entries.c.idx))
            ]
            nodes = {(r.level, r.idx): bytes(r.hash) for r in await conn.execute(select(ledger_nodes))}
        assert [bytes(e) for e in stored] == entries
        # an independent recomputation of the root from the entries
        builder = merkle.TreeBuilder()
        for entry in entries:
            builder.append_leaf_hash(merkle.leaf_hash(entry))
        assert head.size == len(entries) == 15
        assert head.root == builder.root()
        # every proof read from the stored nodes verifies against that root
        for index, entry in enumerate(entries):
            proof = merkle.inclusion_proof(index, head.size, nodes)
            merkle.verify_inclusion(merkle.leaf_hash(entry), index, head.size, proof, head.root)
        assert json.loads(entries[0])["type"] == "user.changed"
    finally:
        await engine.dispose()


async def test_a_rolled_back_transaction_leaves_no_entry(db_url: str) -> None:
    await run_migrations(db_url)
    engine = make_engine(db_url)
    log = EventLog(for_update=not is_sqlite(db_url))
    try:
        with pytest.raises(RuntimeError, match="the change failed"):  # noqa: PT012 - the transaction is the unit
            async with engine.begin() as conn:
                await log.append(conn, event(1))
                raise RuntimeError("the change failed")
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(ledger_entries))).scalar_one() == 0
            assert (await conn.execute(select(func.count()).select_from(ledger_nodes))).scalar_one() == 0
            assert (await log.head(conn)).size == 0
    finally:
        await engine.dispose()


async def test_concurrent_appends_are_serialised(db_url: str) -> None:
    import asyncio

    await run_migrations(db_url)
    engine = make_engine(db_url, pool_size=8)
    log = EventLog(for_update=not is_sqlite(db_url))

    async def one(n: int) -> int:
        async with engine.begin() as conn:
            return await log.append(conn, event(n))

    try:
        indexes = await asyncio.gather(*(one(n) for n in range(40)))
        assert sorted(indexes) == list(range(40))
        async with engine.connect() as conn:
            head = await log.head(conn)
            entries = [
                bytes(r.entry)
                for r in await conn.execute(select(ledger_entries.c.entry).order_by(ledger_entries.c.idx))
            ]
        builder = merkle.TreeBuilder()
        for entry in entries:
            builder.append_leaf_hash(merkle.leaf_hash(entry))
        assert head.root == builder.root()
    finally:
        await engine.dispose()


async def test_a_batch_its_checkpoint_and_the_queued_rows_are_one_statement_on_postgresql(
    db_url: str, asyncpg_statements: list[str]
) -> None:
    """The group commit's write is one round trip on PostgreSQL (docs/performance.md): entries, nodes, head, the
    checkpoint and every row queued by store.fast; SQLite writes the same rows statement by statement."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from store import fast
    from store.tables import cases, checkpoints

    await run_migrations(db_url)
    engine = make_engine(db_url)
    log = EventLog(for_update=not is_sqlite(db_url))
    now = datetime(2026, 11, 28, 7, 40, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            batch = await log.begin_batch(conn)
            for n in range(3):
                row = {"id": f"case-{n}", "unit": None, "created_at": now, "state": None, "request_type": None}
                await fast.insert(conn, cases, row, insert(cases))
                batch.append(event(n))
            await batch.flush(conn, ("a signed note", now))
        assert asyncpg_statements == ([] if is_sqlite(db_url) else ["WITH h"])
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(cases))).scalar_one() == 3
            assert (await conn.execute(select(func.count()).select_from(ledger_entries))).scalar_one() == 3
            assert (await conn.execute(select(checkpoints.c.size, checkpoints.c.note))).all() == [(3, "a signed note")]
    finally:
        await engine.dispose()


async def test_the_entry_proved_for_a_message_id_is_its_submission_or_reception(db_url: str) -> None:
    """GET /v1/ledger/proofs/inclusion?message_id= proves the message's reception (or submission). Before, it proved
    the first entry naming the id: a refusal of a bogus envelope a peer sent under the id first."""
    from store.ledger import LedgerReader

    message_id = "0b0d8a3e-6c35-4c5d-9a4b-4f1c2b7d3e01"
    common = {"time": "2026-11-28T07:40:00.000000Z", "actor": "peer:au.ag", "message_id": message_id, "from": "au.ag"}
    refused = {**common, "type": EventType.REFUSED.value, "envelope_sha256": "1" * 64, "reason": "signature-invalid"}
    received = {
        **common,
        "type": EventType.RECEIVED.value,
        "to": "ar.mj",
        "kind": "request",
        "envelope_sha256": "2" * 64,
        "marking": {"caveats": [], "level": "CONFIDENTIAL"},
    }
    opened = {**common, "type": EventType.OPENED.value, "actor": "user:olga", "purpose": "review"}
    await run_migrations(db_url)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            log = EventLog(for_update=not is_sqlite(db_url))
            indexes = await log.append_many(conn, [LedgerEvent.parse(e) for e in (refused, received, opened)])
        async with engine.connect() as conn:
            assert await LedgerReader.index_of_message(conn, message_id) == indexes[1]
            assert await LedgerReader.index_of_message(conn, "0f8fad5b-d9cb-469f-a165-70867728950e") is None
    finally:
        await engine.dispose()
