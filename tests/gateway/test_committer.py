"""The group commit: units commit with their events, from a remembered head that another writer may have moved."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import committer as committer_module
from gateway.committer import Committer, Finish, Tx, done
from protocol import merkle
from protocol.events import EventType, LedgerEvent
from store import fast
from store.db import is_sqlite, make_engine, run_migrations
from store.delivery import record_delivery
from store.events import EventLog
from store.tables import case_stats, cases, checkpoints, ledger_entries, ledger_head, ledger_nodes, messages, outbox

NOW = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)


class Owner:
    """What the committer uses of a gateway."""

    def __init__(self, engine: AsyncEngine, sqlite: bool) -> None:
        self.engine = engine
        self.events = EventLog(for_update=not sqlite)
        self.origin = "comity-ledger/test"

    def clock(self) -> datetime:
        return NOW

    def sign_checkpoint(self, body: str) -> str:
        return body + "\n— test signature\n"


@pytest.fixture
async def owner(db_url: str) -> AsyncIterator[Owner]:
    await run_migrations(db_url)
    engine = make_engine(db_url)
    yield Owner(engine, is_sqlite(db_url))
    await engine.dispose()


def unit(name: str, *, fail: bool = False, checkpoint: bool = False) -> Any:
    """A unit that records one event and queues a case row named ``name``; its result is the event's index."""

    async def run(tx: Tx) -> Finish[int]:
        index = tx.record(EventType.USER_CHANGED, "system", subject=f"user:{name}")
        await fast.insert(tx.conn, cases, {"id": name, "unit": None, "created_at": NOW, "state": None}, insert(cases))
        if fail:
            raise RuntimeError(f"{name} failed")
        tx.wants_checkpoint = tx.wants_checkpoint or checkpoint
        return await done(index)

    return run


async def stored_tree(engine: AsyncEngine, log: EventLog) -> tuple[list[bytes], list[str]]:
    """The stored entries, checked against the stored head and nodes; and the case rows."""
    async with engine.connect() as conn:
        head = await log.head(conn)
        entries = [bytes(r.entry) for r in await conn.execute(select(ledger_entries.c.entry).order_by("idx"))]
        nodes = {(r.level, r.idx): bytes(r.hash) for r in await conn.execute(select(ledger_nodes))}
        case_ids = sorted((await conn.execute(select(cases.c.id))).scalars())
    builder = merkle.TreeBuilder()
    for entry in entries:
        builder.append_leaf_hash(merkle.leaf_hash(entry))
    assert head.size == len(entries)
    assert head.root == builder.root()
    for index, entry in enumerate(entries):
        proof = merkle.inclusion_proof(index, head.size, nodes)
        merkle.verify_inclusion(merkle.leaf_hash(entry), index, head.size, proof, head.root)
    return entries, case_ids


def subjects(entries: list[bytes]) -> list[str]:
    return [json.loads(entry).get("subject", "") for entry in entries]


async def append_outside(owner: Owner, *names: str) -> None:
    """Another writer (a CLI command, another replica) appends while the committer remembers its head."""
    async with owner.engine.begin() as conn:
        events = [
            LedgerEvent.parse(
                {
                    "type": "user.changed",
                    "time": "2026-11-28T16:00:00.000000Z",
                    "actor": "system",
                    "subject": f"user:{n}",
                }
            )
            for n in names
        ]
        await owner.events.append_many(conn, events)


async def test_a_batch_after_another_writer_continues_the_ledger(owner: Owner) -> None:
    committer = Committer(owner)
    try:
        assert await committer.run(unit("a")) == 0
        await append_outside(owner, "cli-1", "cli-2")
        assert await committer.run(unit("b")) == 3
        assert await committer.run(unit("c", checkpoint=True)) == 4
    finally:
        await committer.close()
    entries, case_ids = await stored_tree(owner.engine, owner.events)
    assert subjects(entries) == ["user:a", "user:cli-1", "user:cli-2", "user:b", "user:c"]
    assert case_ids == ["a", "b", "c"]
    async with owner.engine.connect() as conn:
        assert (await conn.execute(select(checkpoints.c.size))).scalars().all() == [5]


async def test_a_history_rewritten_under_the_committer_is_extended_as_stored(owner: Owner) -> None:
    """Same size, another tree: the remembered head must not be written over the rewritten one (a peer's witness
    would then never see the rewrite, tests/gateway/test_witness.py)."""
    committer = Committer(owner)
    try:
        await committer.run(unit("a"))
        await committer.run(unit("b"))
        async with owner.engine.begin() as conn:
            for table in (ledger_entries, ledger_nodes, checkpoints):
                await conn.execute(delete(table))
            await conn.execute(update(ledger_head).values(size=0, frontier=b""))
        await append_outside(owner, "rewritten-a", "rewritten-b")
        assert await committer.run(unit("c")) == 2
    finally:
        await committer.close()
    entries, _ = await stored_tree(owner.engine, owner.events)
    assert subjects(entries) == ["user:rewritten-a", "user:rewritten-b", "user:c"]


async def test_a_failing_unit_fails_alone_and_leaves_nothing(owner: Owner) -> None:
    committer = Committer(owner)
    try:
        await committer.run(unit("first"))  # the head is remembered from here on
        results = await asyncio.gather(
            committer.run(unit("ok-1")),
            committer.run(unit("bad", fail=True)),
            committer.run(unit("ok-2")),
            return_exceptions=True,
        )
    finally:
        await committer.close()
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "bad failed"
    assert sorted(r for r in results if isinstance(r, int)) == [1, 2]
    entries, case_ids = await stored_tree(owner.engine, owner.events)
    assert subjects(entries)[0] == "user:first" and sorted(subjects(entries)[1:]) == ["user:ok-1", "user:ok-2"]
    assert case_ids == ["first", "ok-1", "ok-2"]


async def test_on_postgresql_a_batch_from_a_remembered_head_is_one_statement(
    pg_url: str, asyncpg_statements: list[str]
) -> None:
    """No BEGIN, no head lock, no COMMIT: the entries, nodes, head and the units' rows in one statement, which is
    the whole transaction (docs/performance.md)."""
    await run_migrations(pg_url)
    engine = make_engine(pg_url)
    owner = Owner(engine, sqlite=False)
    committer = Committer(owner)
    sent = asyncpg_statements

    def sqlalchemy_statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        sent.append(" ".join(statement.split()[:2]))

    event.listen(engine.sync_engine, "before_cursor_execute", sqlalchemy_statement)
    try:
        await committer.run(unit("a"))  # the head is read under its lock the first time
        assert sent == ["BEGIN", "SELECT ledger_head.size,", "WITH h", "COMMIT"]
        sent.clear()
        await committer.run(unit("b"))
        assert sent == ["WITH h"]
    finally:
        await committer.close()
        await engine.dispose()


# -- receipts in a batch from the remembered head: guarded writes (store/delivery.py) -----------------------------


def delivery_unit(message_id: str, outbox: Any) -> Any:
    """The sender's receipt unit (gateway/outbox.py) in short: record the delivery, then its events if it counted."""
    from tests.store.test_delivery import RECEIVED, SENT

    async def run(tx: Tx) -> Finish[bool]:
        delivered = await record_delivery(
            tx.conn, outbox, message_id, sent_at=SENT, received_at=RECEIVED, receipt=f"receipt of {message_id}"
        )
        if delivered:
            tx.record(EventType.RECEIPT_RECORDED, "system", message_id=message_id, to="au.ag")
        return await done(delivered)

    return run


async def test_receipts_from_the_remembered_head_are_recorded_once(
    owner: Owner, db_url: str, monkeypatch: pytest.MonkeyPatch, asyncpg_statements: list[str]
) -> None:
    """A batch of receipts from the remembered head is one statement on PostgreSQL; a receipt another replica
    recorded meanwhile makes that statement write nothing, and the batch run again records the others only."""
    from tests.store.test_delivery import OUTBOX, RECEIVED, SENT, add_message, message, stats

    for name in ("request-1", "request-2", "request-3", "taken", "refused"):
        await add_message(owner.engine, name, request=True)
    acknowledged = SENT + timedelta(seconds=5, microseconds=999)  # an acknowledgement that overtook the receipt
    async with owner.engine.begin() as conn:
        await conn.execute(
            update(case_stats).where(case_stats.c.case_id == "request-2").values(acknowledged_at=acknowledged)
        )
    sent = asyncpg_statements
    committer = Committer(owner)
    try:
        assert await committer.run(delivery_unit("request-1", OUTBOX))  # reads the head under its lock
        sent.clear()
        assert await committer.run(delivery_unit("request-2", OUTBOX))  # from the remembered head
        if not is_sqlite(db_url):
            assert sent == ["WITH g0_lock"]  # the receipt, its event, the head: one statement
        # another replica records the receipt of "taken"; a refusal of "refused" was recorded (its outbox row gone,
        # no receipt): a late receipt must count for neither
        async with owner.engine.begin() as conn:
            await conn.execute(update(messages).where(messages.c.id == "taken").values(receipt="the other's"))
            await conn.execute(update(messages).where(messages.c.id == "refused").values(state="refused"))
            await conn.execute(delete(outbox).where(outbox.c.message_id.in_(["taken", "refused"])))
        monkeypatch.setattr(committer_module, "LOCKED_AFTER_A_MISS", 0.0)  # every batch tries the remembered head
        results = []
        for name in ("taken", "refused", "request-3"):
            sent.clear()
            results.append(await committer.run(delivery_unit(name, OUTBOX)))
            if not is_sqlite(db_url):  # from the remembered head first; for the first two, then from the lock
                assert sent[0] == "WITH g0_lock" and (len(sent) == 1) is (name == "request-3")
    finally:
        await committer.close()
    assert results == [False, False, True]
    assert (await message(owner.engine, "refused"))[0] == "refused"
    for name in ("request-1", "request-2", "request-3"):
        assert await message(owner.engine, name) == ("delivered", RECEIVED, f"receipt of {name}")
        assert (await stats(owner.engine, name))["start_at"] == SENT
    assert (await message(owner.engine, "taken"))[2] == "the other's"
    # the wait to the acknowledgement counted from the send, rounded down to the millisecond as in Python
    assert (await stats(owner.engine, "request-2"))["wait_acknowledge_ms"] == 5000
    assert (await stats(owner.engine, "request-1"))["wait_acknowledge_ms"] is None
    entries, _ = await stored_tree(owner.engine, owner.events)
    recorded = [json.loads(entry)["message_id"] for entry in entries]
    assert sorted(recorded) == ["request-1", "request-2", "request-3"]
    async with owner.engine.connect() as conn:
        assert set((await conn.execute(select(outbox.c.message_id))).scalars()) == set()


async def test_a_batch_after_its_connection_was_killed_commits_on_a_new_one(pg_url: str) -> None:
    """A server restart or a killed backend: the group talks to asyncpg itself, so it must close the broken
    connection (SQLAlchemy's pool would otherwise hand it out again, batch after batch)."""
    import asyncpg

    from tests.conftest import PG_ADMIN_DSN

    await run_migrations(pg_url)
    engine = make_engine(pg_url, pool_size=2)
    owner = Owner(engine, sqlite=False)
    committer = Committer(owner)
    try:
        assert await committer.run(unit("a")) == 0
        async with engine.connect() as conn:  # LIFO: the connection the batch used
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        assert await committer.run(unit("b")) == 1
        assert await committer.run(unit("c")) == 2
    finally:
        await committer.close()
    entries, case_ids = await stored_tree(engine, owner.events)
    await engine.dispose()
    assert subjects(entries) == ["user:a", "user:b", "user:c"]
    assert case_ids == ["a", "b", "c"]


def _final_statement(sql: str, driver: Any) -> bool:
    """The statement that commits a group: COMMIT, or its one statement sent in autocommit (store/fast.py)."""
    return sql == "COMMIT" or (sql.startswith("WITH") and not driver.is_in_transaction())


def _lose_the_answer(monkeypatch: pytest.MonkeyPatch, *, after_sending: bool) -> None:
    """The next group's final statement loses its connection: after the server ran it (the answer is lost), or
    before it reached the server."""
    import asyncpg

    real, armed = fast._run, [True]

    async def run(driver: Any, sql: str, args: Any, **kw: Any) -> Any:
        final = armed[0] and _final_statement(sql, driver)
        if final:
            armed[0] = False
            if not after_sending:
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        result = await real(driver, sql, args, **kw)
        if final:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return result

    monkeypatch.setattr(fast, "_run", run)


@pytest.fixture
async def pg_owner(pg_url: str) -> AsyncIterator[Owner]:
    await run_migrations(pg_url)
    engine = make_engine(pg_url)
    yield Owner(engine, sqlite=False)
    await engine.dispose()


@pytest.mark.parametrize("remembered", [True, False], ids=["remembered-head", "locked-head"])
async def test_a_batch_whose_commit_went_unanswered_but_committed_is_not_run_again(
    pg_owner: Owner, monkeypatch: pytest.MonkeyPatch, remembered: bool
) -> None:
    """The server committed, the answer was lost with the connection: the batch's entries are read back, its
    results stand, and its units do not run a second time (a unit keyed by nothing unique, like a refusal or an
    opening, used to commit twice)."""
    committer = Committer(pg_owner)
    try:
        assert await committer.run(unit("a")) == 0
        if not remembered:
            committer._head = None
        _lose_the_answer(monkeypatch, after_sending=True)
        assert await committer.run(unit("b")) == 1
        assert await committer.run(unit("c")) == 2
    finally:
        await committer.close()
    entries, case_ids = await stored_tree(pg_owner.engine, pg_owner.events)
    assert subjects(entries) == ["user:a", "user:b", "user:c"]
    assert case_ids == ["a", "b", "c"]


async def test_a_batch_lost_before_its_commit_reached_the_database_runs_again(
    pg_owner: Owner, monkeypatch: pytest.MonkeyPatch
) -> None:
    committer = Committer(pg_owner)
    try:
        assert await committer.run(unit("a")) == 0
        _lose_the_answer(monkeypatch, after_sending=False)
        assert await committer.run(unit("b")) == 1
    finally:
        await committer.close()
    entries, case_ids = await stored_tree(pg_owner.engine, pg_owner.events)
    assert subjects(entries) == ["user:a", "user:b"] and case_ids == ["a", "b"]


async def test_a_batch_whose_outcome_cannot_be_read_back_fails_as_unknown_and_is_not_run_again(
    pg_owner: Owner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database stays out of reach after the lost answer: the caller gets OutcomeUnknown (a 503 to retry),
    and the unit, which did commit, is not run again."""
    committer = Committer(pg_owner)
    working = pg_owner.engine
    try:
        assert await committer.run(unit("a")) == 0
        _lose_the_answer(monkeypatch, after_sending=True)
        pg_owner.engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test")  # the read-back's
        with pytest.raises(committer_module.OutcomeUnknown):
            await committer.run(unit("b"))
    finally:
        await committer.close()
        await pg_owner.engine.dispose()
        pg_owner.engine = working
    entries, case_ids = await stored_tree(working, pg_owner.events)
    assert subjects(entries) == ["user:a", "user:b"] and case_ids == ["a", "b"]


async def test_a_lost_statement_still_waiting_for_a_lock_is_ended_before_the_read_back(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lost statement is still on the server, waiting for a receipt's outbox row (its lock comes before the
    head's): a read-back then saw no entries, the units ran again, and the lost statement committed too (a unit with
    no unique key, twice). Its server process is now ended first. The process is modelled by the same statement run
    on a second connection, whose pid the committer is told is its own."""
    import asyncpg

    from tests.store.test_delivery import OUTBOX, add_message

    await run_migrations(pg_url)
    engine = make_engine(pg_url)
    owner = Owner(engine, sqlite=False)
    for name in ("r1", "r2"):
        await add_message(engine, name, request=True)
    committer = Committer(owner)
    lost = await engine.connect()
    lost_driver = (await lost.get_raw_connection()).driver_connection
    assert lost_driver is not None
    blocker = await engine.connect()  # say the outbox worker renewing r2's lease
    running: list[asyncio.Task[Any]] = []
    real_run, armed = fast._run, [True]

    async def run(driver: Any, sql: str, args: Any, **kw: Any) -> Any:
        if armed[0] and _final_statement(sql, driver):
            armed[0] = False
            running.append(asyncio.create_task(lost_driver.fetchrow(sql, *args)))
            await asyncio.sleep(0.3)  # on the server, waiting for r2's outbox row
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await real_run(driver, sql, args, **kw)

    real_backend = fast.backend

    async def backend(conn: Any) -> fast.Backend | None:
        return await real_backend(lost)

    real_committed = Committer._committed

    async def committed(self: Committer, final: Any, error: Exception) -> bool:
        answer = await real_committed(self, final, error)
        await blocker.commit()  # r2's row free again: a statement still running would go on and commit now
        await asyncio.gather(*running, return_exceptions=True)
        return answer

    def record_only(name: str) -> Any:
        async def unit(tx: Tx) -> Finish[int]:
            return await done(tx.record(EventType.USER_CHANGED, "system", subject=f"user:{name}"))

        return unit

    try:
        assert await committer.run(delivery_unit("r1", OUTBOX))  # from the locked head; remembered after
        await blocker.execute(text("SELECT 1 FROM outbox WHERE message_id = 'r2' FOR UPDATE"))
        monkeypatch.setattr(fast, "_run", run)
        monkeypatch.setattr(fast, "backend", backend)
        monkeypatch.setattr(committer_module.Committer, "_committed", committed)
        results = await asyncio.gather(committer.run(delivery_unit("r2", OUTBOX)), committer.run(record_only("x")))
    finally:
        await committer.close()
        await blocker.close()
        await lost.invalidate()  # its server process was ended: not back into the pool
        await lost.close()
    entries, _ = await stored_tree(engine, owner.events)
    await engine.dispose()
    assert subjects(entries).count("user:x") == 1, subjects(entries)
    assert results[0] is True, results


async def test_the_read_back_leaves_alone_a_later_process_given_the_lost_ones_pid(pg_url: str) -> None:
    """After a restart of the server, or once the lost process ended by itself, its pid may be another session's:
    the read-back ends a process only if its start time is the lost one's too. Before, it ended whatever process
    had the pid."""
    await run_migrations(pg_url)
    engine = make_engine(pg_url)
    try:
        other = await engine.connect()  # a session of the same role that happens to have the pid now
        current = await fast.backend(other)
        assert current is not None
        earlier = fast.Backend(current.pid, current.started - timedelta(hours=1))
        async with engine.connect() as conn:
            await asyncio.wait_for(committer_module._ended(conn, earlier), 5)
        assert (await other.execute(text("SELECT 1"))).scalar_one() == 1  # still alive
        async with engine.connect() as conn:  # the process itself is ended, and waited for
            await asyncio.wait_for(committer_module._ended(conn, current), 5)
        with pytest.raises(DBAPIError):
            await other.execute(text("SELECT 1"))
        await other.invalidate()
        await other.close()
    finally:
        await engine.dispose()


async def test_a_final_statement_the_database_refused_is_run_again_without_a_read_back(
    pg_owner: Owner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock at the final statement is an answer (rolled back), not a lost one: the units run again. The
    read-back ran for it too, took the very connection back from the pool and ended its own server process, so the
    batch failed as OutcomeUnknown."""
    import asyncpg

    committer = Committer(pg_owner)
    real, armed = fast._run, [True]
    read_back: list[int] = []

    async def run(driver: Any, sql: str, args: Any, **kw: Any) -> Any:
        if armed[0] and _final_statement(sql, driver):
            armed[0] = False
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
        return await real(driver, sql, args, **kw)

    async def ended(conn: Any, lost: fast.Backend) -> None:
        read_back.append(lost.pid)

    try:
        assert await committer.run(unit("a")) == 0
        monkeypatch.setattr(fast, "_run", run)
        monkeypatch.setattr(committer_module, "_ended", ended)
        assert await committer.run(unit("b")) == 1
    finally:
        await committer.close()
    entries, case_ids = await stored_tree(pg_owner.engine, pg_owner.events)
    assert subjects(entries) == ["user:a", "user:b"] and case_ids == ["a", "b"]
    assert read_back == []
