"""The one interface that records an event: :meth:`EventLog.append`, in the caller's transaction.

Every change a gateway makes and its ledger entry commit together or not at all (no change without its entry, no
entry without its change). Appending extends the RFC 9162 tree: the single ``ledger_head`` row holds the size and
the frontier (the perfect subtrees whose fold is the root), so an append reads one row, writes the entry, the
O(log n) subtree nodes it completes and the new head. Locking that row serialises appends, also across gateway
replicas sharing one PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol import merkle
from protocol.checkpoint import Checkpoint
from protocol.events import LedgerEvent
from protocol.timefmt import parse_time
from store import fast
from store.tables import checkpoints, ledger_entries, ledger_head, ledger_nodes

__all__ = ["CheckpointSigner", "EventLog", "LedgerBatch", "TreeHead"]

# built once: every group commit runs these
_INSERT_ENTRIES = insert(ledger_entries)
_INSERT_NODES = insert(ledger_nodes)
_UPDATE_HEAD = (
    update(ledger_head).where(ledger_head.c.id == 1).values(size=bindparam("b_size"), frontier=bindparam("b_frontier"))
)
_HEAD = select(ledger_head.c.size, ledger_head.c.frontier).where(ledger_head.c.id == 1)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_INSERT_CHECKPOINT = insert(checkpoints)

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


class LedgerBatch:
    """Appends computed in memory under the head lock, written with one statement per table on flush.

    Indexes are assigned as events are appended, so a caller can name an entry's index (a receipt does) before the
    rows are written; they are written, with the O(log n) subtree nodes each append completes, by :meth:`flush`.
    """

    def __init__(self, head: TreeHead) -> None:
        self.start = head.size
        self.size = head.size
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

    async def flush(self, conn: AsyncConnection) -> TreeHead:
        """Write what was appended since the last flush; return the new head."""
        if self._entries:
            await fast.insert_many(conn, ledger_entries, self._entries, _INSERT_ENTRIES)
            await fast.insert_many(conn, ledger_nodes, self._node_rows, _INSERT_NODES)
            head = self.head()
            frontier = _pack(head.size, head.frontier)
            await fast.execute(
                conn,
                "UPDATE ledger_head SET size = $1, frontier = $2 WHERE id = 1",
                (head.size, frontier),
                _UPDATE_HEAD,
                {"b_size": head.size, "b_frontier": frontier},
            )
            self._entries, self._node_rows = [], []
            # keep only the frontier: older nodes are never read by later appends
            self._nodes = dict(head.frontier)
        return self.head()


class EventLog:
    """Appends events to this gateway's ledger and reads its head."""

    def __init__(self, *, for_update: bool) -> None:
        # PostgreSQL needs SELECT ... FOR UPDATE; SQLite's BEGIN IMMEDIATE already holds the write lock
        self._for_update = for_update

    async def head(self, conn: AsyncConnection, *, lock: bool = False) -> TreeHead:
        row = (await conn.execute(_HEAD_FOR_UPDATE if lock and self._for_update else _HEAD)).one()
        return TreeHead(row.size, _unpack(row.size, row.frontier))

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

    async def record_checkpoint(
        self,
        conn: AsyncConnection,
        origin: str,
        sign: CheckpointSigner,
        now: datetime,
        head: TreeHead | None = None,
        *,
        grew: bool = False,
    ) -> str:
        """Sign a checkpoint of ``head`` (default: the stored head), once per size, and return the signed note.

        ``grew``: the caller's transaction appended up to ``head`` under the head lock, so no checkpoint of this
        size can exist yet (sizes only grow) and the lookup is skipped."""
        head = head or await self.head(conn)
        if not grew:
            existing = (
                await conn.execute(select(checkpoints.c.note).where(checkpoints.c.size == head.size))
            ).scalar_one_or_none()
            if existing is not None:
                return str(existing)
        note = sign(Checkpoint(origin=origin, size=head.size, root_hash=head.root).to_text())
        await fast.insert(conn, checkpoints, {"size": head.size, "note": note, "created_at": now}, _INSERT_CHECKPOINT)
        return note
