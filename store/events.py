"""The one interface that records an event: :meth:`EventLog.append`, in the caller's transaction.

Every change a gateway makes and its ledger entry commit together or not at all (no change without its entry, no
entry without its change). Appending extends the RFC 9162 tree: the single ``ledger_head`` row holds the size and
the frontier (the perfect subtrees whose fold is the root), so an append reads one row, writes the entry, the
O(log n) subtree nodes it completes and the new head. Locking that row serialises appends, also across gateway
replicas sharing one PostgreSQL.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol import merkle
from protocol.checkpoint import Checkpoint
from protocol.events import LedgerEvent
from protocol.timefmt import parse_time
from store import fast, sqlite_fast
from store.tables import checkpoints, ledger_entries, ledger_head, ledger_nodes

__all__ = ["CheckpointSigner", "EventLog", "LedgerBatch", "LedgerHeadMoved", "TreeHead"]

# built once: every group commit runs these
_INSERT_ENTRIES = insert(ledger_entries)
_INSERT_NODES = insert(ledger_nodes)
_UPDATE_HEAD = (
    update(ledger_head).where(ledger_head.c.id == 1).values(size=bindparam("b_size"), frontier=bindparam("b_frontier"))
)
_HEAD_COLUMNS = (ledger_head.c.size, ledger_head.c.frontier)
_HEAD = select(*_HEAD_COLUMNS).where(ledger_head.c.id == 1)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_HEAD_SQLITE = "SELECT size, frontier FROM ledger_head WHERE id = 1"
_INSERT_CHECKPOINT = insert(checkpoints)


@functools.lru_cache(maxsize=64)
def _flush_statement(first: int, condition: str, checkpoint: bool) -> tuple[tuple[str, ...], str]:
    """PostgreSQL: a batch's entries, nodes, checkpoint and head in one statement with the rows store.fast queued
    (placeholders from ``first``): one round trip per group commit (docs/performance.md). Data-modifying CTEs all
    run to completion, and foreign keys are checked at the end of the statement.

    The head moves only from the one the batch started at, size and frontier (``h``), and only if ``condition``
    (that of the guarded writes store.fast queued) holds; nothing else is written unless it did. A batch computed
    from a head another writer has changed since (a head cached by the group commit, read without a lock; or a
    history rewritten under the running gateway), or whose guarded writes found their rows changed, changes
    nothing, and the statement says so (``applied`` 0)."""
    n = [f"${first + i}" for i in range(14)]  # placeholders only: no value is ever formatted into the text
    entries = f"{n[0]}::bigint[], {n[1]}::bytea[], {n[2]}::varchar[], {n[3]}::varchar[], {n[4]}::timestamptz[]"
    nodes = f"{n[5]}::integer[], {n[6]}::bigint[], {n[7]}::bytea[]"
    moved = "WHERE EXISTS (SELECT 1 FROM h)"
    ctes = [
        f"h AS (UPDATE ledger_head SET size = {n[8]}::bigint, frontier = {n[9]} "  # noqa: S608
        f"WHERE id = 1 AND size = {n[10]}::bigint AND frontier = {n[11]}::bytea AND {condition} RETURNING size)",
        f"e AS (INSERT INTO ledger_entries (idx, entry, message_id, type, time) "  # noqa: S608
        f"SELECT * FROM unnest({entries}) {moved})",
        f"n AS (INSERT INTO ledger_nodes (level, idx, hash) SELECT * FROM unnest({nodes}) {moved})",  # noqa: S608
    ]
    if checkpoint:
        ctes.append(
            f"c AS (INSERT INTO checkpoints (size, note, created_at) "
            f"SELECT {n[8]}::bigint, {n[12]}::varchar, {n[13]}::timestamptz {moved})"
        )
    return tuple(ctes), "SELECT count(*) AS applied FROM h"


class LedgerHeadMoved(RuntimeError):
    """A batch wrote nothing: the ledger head is no longer the one it was computed from (another writer appended
    first), or its guarded writes found their rows changed (store.fast)."""


# checkpoint body text in, signed note out (crypto.note.sign_note with the gateway's signer)
CheckpointSigner = Callable[[str], str]


@dataclass(frozen=True)
class TreeHead:
    size: int
    frontier: dict[merkle.NodeId, bytes]

    @property
    def root(self) -> bytes:
        return merkle.root_hash(self.size, self.frontier)


def _pack(size: int, nodes: dict[merkle.NodeId, bytes]) -> bytes:
    return b"".join(nodes[node] for node in merkle.root_needs(size))


def _unpack(size: int, blob: bytes) -> dict[merkle.NodeId, bytes]:
    needed = merkle.root_needs(size)
    if len(blob) != merkle.HASH_SIZE * len(needed):
        raise ValueError("ledger head frontier does not match its size")
    return {node: blob[i * merkle.HASH_SIZE : (i + 1) * merkle.HASH_SIZE] for i, node in enumerate(needed)}


def _signed(head: TreeHead, origin: str, sign: CheckpointSigner) -> str:
    """The signed note of a checkpoint of ``head``."""
    return sign(Checkpoint(origin=origin, size=head.size, root_hash=head.root).to_text())


class LedgerBatch:
    """Appends computed in memory under the head lock, written with one statement per table on flush.

    Indexes are assigned as events are appended, so a caller can name an entry's index (a receipt does) before the
    rows are written; they are written, with the O(log n) subtree nodes each append completes, by :meth:`flush`.
    """

    def __init__(self, head: TreeHead) -> None:
        self.start = head.size
        self.size = head.size
        self._stored = (head.size, _pack(head.size, head.frontier))  # the head in the database, as far as we know
        self._nodes = dict(head.frontier)
        self._entries: list[dict[str, object]] = []
        self._node_rows: list[dict[str, object]] = []

    def append(self, event: LedgerEvent) -> int:
        entry = event.to_bytes()
        for node, digest in merkle.nodes_created_by_append(self.size, merkle.leaf_hash(entry), self._nodes):
            self._nodes[node] = digest
            self._node_rows.append({"level": node[0], "idx": node[1], "hash": digest})
        self._entries.append(
            {
                "idx": self.size,
                "entry": entry,
                "message_id": event.message_id,
                "type": event.type.value,
                "time": parse_time(event.time),
            }
        )
        self.size += 1
        return self.size - 1

    def head(self) -> TreeHead:
        return TreeHead(self.size, {node: self._nodes[node] for node in merkle.root_needs(self.size)})

    def pending(self) -> list[dict[str, object]]:
        """The rows of the entries appended since the last flush (``idx``, ``entry``, ...): what a flush about to run
        writes. The list itself, not a copy: a flush starts a new one, so it keeps what that flush wrote."""
        return self._entries

    async def flush(self, conn: AsyncConnection, checkpoint: tuple[str, datetime] | None = None) -> TreeHead:
        """Write what was appended since the last flush, and ``checkpoint`` (a signed note of the new head and its
        time) beside it if given; return the new head."""
        if self._entries:
            head = self.head()
            frontier = _pack(head.size, head.frontier)
            if not await self._flush_direct(conn, head.size, frontier, checkpoint):
                await fast.insert_many(conn, ledger_entries, self._entries, _INSERT_ENTRIES)
                await fast.insert_many(conn, ledger_nodes, self._node_rows, _INSERT_NODES)
                await fast.execute(
                    conn,
                    "UPDATE ledger_head SET size = $1, frontier = $2 WHERE id = 1",
                    (head.size, frontier),
                    _UPDATE_HEAD,
                    {"b_size": head.size, "b_frontier": frontier},
                )
                if checkpoint is not None:
                    row = {"size": head.size, "note": checkpoint[0], "created_at": checkpoint[1]}
                    await fast.insert(conn, checkpoints, row, _INSERT_CHECKPOINT)
            self._entries, self._node_rows = [], []
            self._stored = (head.size, frontier)
            # keep only the frontier: older nodes are never read by later appends
            self._nodes = dict(head.frontier)
        elif checkpoint is not None:
            raise ValueError("a checkpoint is written with the entries it covers")
        return self.head()

    async def _flush_direct(
        self, conn: AsyncConnection, size: int, frontier: bytes, checkpoint: tuple[str, datetime] | None
    ) -> bool:
        entries, nodes = self._entries, self._node_rows
        args: list[object] = [
            [e["idx"] for e in entries],
            [e["entry"] for e in entries],
            [e["message_id"] for e in entries],
            [e["type"] for e in entries],
            [e["time"] for e in entries],
            [n["level"] for n in nodes],
            [n["idx"] for n in nodes],
            [n["hash"] for n in nodes],
            size,
            frontier,
            *self._stored,
        ]
        tail = functools.partial(_flush_statement, checkpoint=checkpoint is not None)
        # the rows the units queued are written only with the entries that record them
        row = await fast.execute_direct(conn, tail, [*args, *(checkpoint or ())], gate="h")
        if row is None:
            return False
        if row["applied"] != 1:
            raise LedgerHeadMoved(
                f"the ledger head changed from size {self._stored[0]}, or a guarded write's rows changed, "
                "before this batch was written: nothing was written"
            )
        return True


class EventLog:
    """Appends events to this gateway's ledger and reads its head."""

    def __init__(self, *, for_update: bool) -> None:
        # PostgreSQL needs SELECT ... FOR UPDATE; SQLite's BEGIN IMMEDIATE already holds the write lock
        self._for_update = for_update

    async def head(self, conn: AsyncConnection, *, lock: bool = False) -> TreeHead:
        lite = await sqlite_fast.driver(conn)  # SQLite in a transaction: every group commit reads it
        if lite is not None:
            rows = await sqlite_fast.typed_rows(lite, conn.dialect, _HEAD_SQLITE, (), _HEAD_COLUMNS)
            if not rows:
                raise NoResultFound("the ledger head row is missing")  # as SQLAlchemy's .one() raises
            size, frontier = rows[0]["size"], rows[0]["frontier"]
        else:
            row = (await conn.execute(_HEAD_FOR_UPDATE if lock and self._for_update else _HEAD)).one()
            size, frontier = row.size, row.frontier
        return TreeHead(size, _unpack(size, frontier))

    async def begin_batch(self, conn: AsyncConnection) -> LedgerBatch:
        """Lock the head for the caller's transaction and start a batch of appends."""
        return LedgerBatch(await self.head(conn, lock=True))

    async def append(self, conn: AsyncConnection, event: LedgerEvent) -> int:
        """Record ``event`` in the caller's transaction; return its leaf index."""
        return (await self.append_many(conn, [event]))[0]

    async def append_many(self, conn: AsyncConnection, events: Sequence[LedgerEvent]) -> list[int]:
        """Record several events in order, in the caller's transaction (one head update for the batch)."""
        batch = await self.begin_batch(conn)
        indexes = [batch.append(event) for event in events]
        await batch.flush(conn)
        return indexes

    async def batch_checkpoint(
        self, conn: AsyncConnection, batch: LedgerBatch, origin: str, sign: CheckpointSigner, now: datetime
    ) -> tuple[str, tuple[str, datetime] | None]:
        """A signed checkpoint of the head ``batch`` makes, before the batch is written: the note, and what to give
        ``batch.flush`` so that it is stored with the entries it covers (None when the batch appended nothing and
        the note is the one stored for that size already, or a new one stored here)."""
        head = batch.head()
        if head.size == batch.start:  # nothing appended: the stored head (the batch's may be a remembered one)
            return await self.record_checkpoint(conn, origin, sign, now), None
        note = _signed(head, origin, sign)
        return note, (note, now)

    async def record_checkpoint(
        self,
        conn: AsyncConnection,
        origin: str,
        sign: CheckpointSigner,
        now: datetime,
    ) -> str:
        """Sign a checkpoint of the stored head, once per size, and return the signed note."""
        head = await self.head(conn)
        existing = (
            await conn.execute(select(checkpoints.c.note).where(checkpoints.c.size == head.size))
        ).scalar_one_or_none()
        if existing is not None:
            return str(existing)
        note = _signed(head, origin, sign)
        await fast.insert(conn, checkpoints, {"size": head.size, "note": note, "created_at": now}, _INSERT_CHECKPOINT)
        return note
