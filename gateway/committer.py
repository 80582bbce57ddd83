"""Group commit: the changes that append ledger events, run together in few, larger transactions.

One transaction per step per message cannot reach a thousand envelopes a second (DESIGN.md, "What the machine
allows"): every commit waits for the disk and every append takes the ledger head lock. Here a single worker per
gateway takes every unit of work queued meanwhile (up to ``max_batch``), runs them in order in one transaction
under one head lock, signs one checkpoint for the batch, lets each unit finish with that checkpoint (a receipt
carries it), writes the ledger entries and the rows the units queued (on PostgreSQL in one statement,
store/fast.py), and commits once. A batch signs that checkpoint only when one of its units asks for it
(``tx.wants_checkpoint``); the checkpointer asks every second.

A unit is ``async def unit(tx) -> finish`` and ``async def finish(checkpoint_note) -> result``: the first phase
changes rows and records events (their indexes are known at once); the second runs once the batch's checkpoint is
signed (from the head computed in memory), before the entries are written with it at the end of the transaction.
If a batch fails, it is rolled back and its units are run again one by one, so one unit's failure (a duplicate
message id, say) is that unit's alone. Every unit still commits with its events or not at all.

If the connection is lost while the batch's final statements are on their way (its entries, or COMMIT), the
database may have committed without our hearing it: running the units again would commit them twice (a second
``message.opened``, a second alarm). The committer then ends the lost connection's server process if it still runs
(PostgreSQL: ``pg_terminate_backend``, then waits until it is gone, so that its statement has committed or rolled back
for good; it may still be waiting for a row lock before the head's), and reads back on a new connection whether the
batch's entries are stored: if they are, the batch committed and its results stand; if other entries or none are
there, it did not, and the units run again; if that cannot be done, every unit of the batch fails with
:class:`OutcomeUnknown` (a 503 to retry), never run twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import select, text
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.logs import get_logger
from protocol.events import EventType, LedgerEvent
from protocol.messages import MessagePayload
from protocol.timefmt import format_time
from store import fast
from store.errors import StoreUnavailable, connection_lost, transient_cause
from store.events import LedgerBatch, TreeHead
from store.tables import ledger_entries, ledger_head

__all__ = ["LOCKED_AFTER_A_MISS", "READ_BACK_SECONDS", "Committer", "Finish", "OutcomeUnknown", "Tx", "Unit"]

# seconds during which batches read the head under its lock after one from the remembered head failed
LOCKED_AFTER_A_MISS = 1.0
# how long reading back whether a batch whose commit went unanswered committed may take, lock wait included
READ_BACK_SECONDS = 30.0


class OutcomeUnknown(StoreUnavailable):
    """The connection was lost as a batch was being committed, and whether it committed could not be read back."""


T = TypeVar("T")
Finish = Callable[[str], Awaitable[T]]
Unit = Callable[["Tx"], Awaitable[Finish[T]]]


@dataclass
class Tx:
    """What a unit sees: the transaction's connection and the ledger batch it appends to."""

    conn: AsyncConnection
    batch: LedgerBatch
    clock: Callable[[], datetime]
    # a unit whose finish needs a checkpoint covering its events (a receipt carries one) sets this; other batches
    # leave checkpoints to the checkpointer's tick (at least every second while the ledger grows)
    wants_checkpoint: bool = False

    def record_message(
        self, type: EventType, actor: str, payload: MessagePayload, envelope_sha256: str, *, at: datetime | None = None
    ) -> int:
        """Record an event about a whole message: its id, kind, parties, reply link, digest and marking."""
        return self.record(
            type,
            actor,
            at=at,
            message_id=payload.id,
            kind=payload.kind.value,
            from_=payload.from_,
            to=payload.to,
            in_reply_to=payload.in_reply_to,
            envelope_sha256=envelope_sha256,
            marking=payload.marking.to_json(),
        )

    def record_downgrade(self, actor: str, payload: MessagePayload) -> int:
        """Record that ``payload``, an answer, carries a marking below what it answers (both sides write this)."""
        return self.record(
            EventType.MARKING_DOWNGRADED,
            actor,
            message_id=payload.id,
            related_id=payload.in_reply_to,
            marking=payload.marking.to_json(),
            state="downgraded",
        )

    def record(self, type: EventType, actor: str, *, at: datetime | None = None, **fields: Any) -> int:
        """Append one ledger event to this transaction; its time is ``at`` (when it happened) or now."""
        event = LedgerEvent.parse(
            {"type": type.value, "time": format_time(at or self.clock()), "actor": actor, **fields}
        )
        return self.batch.append(event)


async def done(result: T) -> Finish[T]:
    """A finish step that only returns ``result`` (for units that do not need the checkpoint)."""

    async def finish(_checkpoint: str) -> T:
        return result

    return finish


@dataclass
class _Job(Generic[T]):
    unit: Unit[T]
    future: asyncio.Future[T]


@dataclass
class _Final:
    """What a batch is about to write once its units have finished: set just before its final statements."""

    results: list[Any] | None = None
    entries: list[dict[str, object]] = field(default_factory=list)  # the batch's ledger rows (LedgerBatch.pending)
    batch: LedgerBatch | None = None
    backend: fast.Backend | None = None  # PostgreSQL: the server process of the batch's connection


class Committer:
    def __init__(self, gateway: Any, *, max_batch: int = 128) -> None:
        self.gw = gateway
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Job[Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.log = get_logger(component="committer")
        # PostgreSQL: transactions run by store.fast.group on an autocommit view of the engine, each batch starting
        # from the head the last one committed (None: read it under its lock)
        engine = gateway.engine
        sqlite = engine.dialect.name == "sqlite"
        self._autocommit: AsyncEngine | None = (
            None if sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._head: TreeHead | None = None
        self._locked_until = 0.0  # time.monotonic() before which batches start from the locked head

    async def run(self, unit: Unit[T]) -> T:
        """Run ``unit`` in the next batch; return its result or raise its error."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(unit, future))
        # shielded: a caller cancelled mid-way (a shutdown timeout) does not stop its unit, which still commits or
        # fails whole; callers therefore clean up only on an error, never on cancellation
        return await asyncio.shield(future)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _work(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [job for job in jobs if not job.future.done()]
            if not jobs:
                continue
            try:
                results = await self._attempt(jobs)
            except Exception as exc:
                if len(jobs) == 1 or isinstance(transient_cause(exc), StoreUnavailable | PoolTimeout):
                    # no connection to be had: every unit would fail alone too, each after its own timeout (a
                    # deadlock or a lost connection is still retried unit by unit: alone, each may succeed)
                    for job in jobs:
                        _settle(job.future, exc)
                    continue
                # isolate the failing unit: run each alone
                for job in jobs:
                    try:
                        result = (await self._attempt([job]))[0]
                    except Exception as single:
                        _settle(job.future, single)
                    else:
                        _resolve(job.future, result)
                continue
            for job, result in zip(jobs, results, strict=True):
                _resolve(job.future, result)

    async def _attempt(self, jobs: list[_Job[Any]]) -> list[Any]:
        """Run ``jobs`` in one transaction from the head this worker remembers; if that fails, whatever the reason
        (another writer moved the head, or a unit failed), forget it and run them once more from the head read
        under its lock, so a moved head never reaches a unit as its error. After such a failure the next second's
        batches start from the locked head: another writer (a replica) is likely still at work."""
        head = self._head if time.monotonic() >= self._locked_until else None
        if head is None:
            return await self._transaction(jobs, None)
        try:
            return await self._transaction(jobs, head)
        except OutcomeUnknown:
            raise  # it may have committed: never run again
        except Exception:
            self._head = None
            self._locked_until = time.monotonic() + LOCKED_AFTER_A_MISS
        return await self._transaction(jobs, None)

    async def _transaction(self, jobs: list[_Job[Any]], head: TreeHead | None) -> list[Any]:
        final = _Final()
        try:
            return await self._write(jobs, head, final)
        except Exception as error:
            if final.results is None or not connection_lost(error):
                # failed before its final statements, by a statement's own refusal, or answered with an error (a
                # deadlock, a serialization failure: rolled back): nothing committed, nothing to read back
                raise
            if not await self._committed(final, error):
                raise
            self.log.warning("commit_answer_lost", committed=True, entries=len(final.entries))
            if self._autocommit is not None and final.batch is not None:
                self._head = final.batch.head()
            return final.results

    async def _committed(self, final: _Final, error: Exception) -> bool:
        """Whether a batch whose final statements went unanswered committed: its entries are stored at their
        indexes, read once its server process has ended (so its statement can no longer commit after the read), and
        behind a share lock on the ledger head; if that cannot be done, :class:`OutcomeUnknown`."""
        if not final.entries:  # nothing of it can be recognised
            raise OutcomeUnknown("the database connection was lost as a batch was committed") from error

        written = {cast(int, row["idx"]): row["entry"] for row in final.entries}

        async def read() -> dict[int, bytes]:
            first, last = min(written), max(written)
            async with self.gw.engine.begin() as conn:
                if final.backend is not None:
                    await _ended(conn, final.backend)
                lock = select(ledger_head.c.size).where(ledger_head.c.id == 1).with_for_update(read=True)
                await conn.execute(lock)
                query = select(ledger_entries.c.idx, ledger_entries.c.entry).where(
                    ledger_entries.c.idx >= first, ledger_entries.c.idx <= last
                )
                return {int(row.idx): bytes(row.entry) for row in await conn.execute(query)}

        try:
            stored = await asyncio.wait_for(read(), READ_BACK_SECONDS)
        except Exception:
            self.log.warning("commit_answer_lost", committed="unknown", entries=len(final.entries))
            raise OutcomeUnknown("the database connection was lost as a batch was committed") from error
        return all(stored.get(index) == entry for index, entry in written.items())

    async def _write(self, jobs: list[_Job[Any]], head: TreeHead | None, final: _Final) -> list[Any]:
        gw = self.gw
        if self._autocommit is None:  # SQLite: SQLAlchemy's transaction (BEGIN IMMEDIATE), the head read in it
            async with gw.engine.begin() as conn:
                return await self._run(conn, jobs, await gw.events.begin_batch(conn), final)
        # from a remembered head, units may assume what usually holds (a receipt not yet recorded) and leave the
        # check to the batch's one statement (store/delivery.py); a failed batch runs again from the locked head
        async with fast.group(self._autocommit, optimistic=head is not None) as conn:
            final.backend = await fast.backend(conn)
            batch = LedgerBatch(head) if head is not None else await gw.events.begin_batch(conn)
            results = await self._run(conn, jobs, batch, final)
        self._head = batch.head()  # committed: the next batch may start here without reading it
        return results

    async def _run(self, conn: AsyncConnection, jobs: list[_Job[Any]], batch: LedgerBatch, final: _Final) -> list[Any]:
        gw = self.gw
        tx = Tx(conn, batch, gw.clock)
        finishers = [await job.unit(tx) for job in jobs]
        note, checkpoint = "", None
        if tx.wants_checkpoint:
            note, checkpoint = await gw.events.batch_checkpoint(conn, batch, gw.origin, gw.sign_checkpoint, gw.clock())
        covered = batch.size
        results = [await finish(note) for finish in finishers]
        if batch.size != covered:  # a finish must not append: the checkpoint would not cover its entry
            raise RuntimeError("a unit's finish step appended to the ledger after the checkpoint was signed")
        # the entries, the checkpoint, the head and every row the units queued (store/fast.py): on PostgreSQL
        # one statement, which writes nothing if the head has moved since the batch began (store/events.py)
        final.results, final.entries, final.batch = results, batch.pending(), batch
        await batch.flush(conn, checkpoint)
        return results


async def _ended(conn: AsyncConnection, lost: fast.Backend) -> None:
    """End the server process ``lost`` (a connection of ours whose answer was lost; the same role may end it) and
    wait until it is gone: then whatever it was running has committed or rolled back. The process is named by its
    pid and its start time, so a later process given the same pid (after a restart of the server, or once the lost
    one ended by itself) is left alone."""
    if (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() == lost.pid:
        return  # the pool handed back the very connection: it is alive, so nothing of it is still running
    named = {"pid": lost.pid, "started": lost.started}
    this = "FROM pg_stat_activity WHERE pid = :pid AND backend_start = :started"
    await conn.execute(text(f"SELECT pg_terminate_backend(pid) {this}"), named)
    # a transaction reads pg_stat_activity once and keeps that snapshot: clear it at every look
    alive = text(f"SELECT pg_stat_clear_snapshot(), EXISTS (SELECT 1 {this})")
    while True:
        if not (await conn.execute(alive, named)).one()[1]:
            return
        await asyncio.sleep(0.02)


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _settle(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
