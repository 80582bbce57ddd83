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

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol import merkle
from protocol.checkpoint import Checkpoint
from protocol.events import LedgerEvent
from protocol.timefmt import parse_time
from store.tables import checkpoints, ledger_entries, ledger_head, ledger_nodes

__all__ = ["CheckpointSigner", "EventLog", "TreeHead"]

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


class EventLog:
    """Appends events to this gateway's ledger and reads its head."""

    def __init__(self, *, for_update: bool) -> None:
        # PostgreSQL needs SELECT ... FOR UPDATE; SQLite's BEGIN IMMEDIATE already holds the write lock
        self._for_update = for_update

    async def head(self, conn: AsyncConnection, *, lock: bool = False) -> TreeHead:
        query = select(ledger_head.c.size, ledger_head.c.frontier).where(ledger_head.c.id == 1)
        if lock and self._for_update:
            query = query.with_for_update()
        row = (await conn.execute(query)).one()
        return TreeHead(row.size, _unpack(row.size, row.frontier))

    async def append(self, conn: AsyncConnection, event: LedgerEvent) -> int:
        """Record ``event`` in the caller's transaction; return its leaf index."""
        return (await self.append_many(conn, [event]))[0]

    async def append_many(self, conn: AsyncConnection, events: Sequence[LedgerEvent]) -> list[int]:
        """Record several events in order, in the caller's transaction (one head update for the batch)."""
        head = await self.head(conn, lock=True)
        size, nodes = head.size, dict(head.frontier)
        entry_rows, node_rows, indexes = [], [], []
        for event in events:
            entry = event.to_bytes()
            created = merkle.nodes_created_by_append(size, merkle.leaf_hash(entry), nodes)
            for node, digest in created:
                nodes[node] = digest
                node_rows.append({"level": node[0], "idx": node[1], "hash": digest})
            entry_rows.append(
                {
                    "idx": size,
                    "entry": entry,
                    "message_id": event.message_id,
                    "type": event.type.value,
                    "time": parse_time(event.time),
                }
            )
            indexes.append(size)
            size += 1
        await conn.execute(insert(ledger_entries), entry_rows)
        await conn.execute(insert(ledger_nodes), node_rows)
        await conn.execute(
            update(ledger_head).where(ledger_head.c.id == 1).values(size=size, frontier=_pack(size, nodes))
        )
        return indexes

    async def record_checkpoint(self, conn: AsyncConnection, origin: str, sign: CheckpointSigner, now: datetime) -> str:
        """Sign a checkpoint of the current head (once per size) and return the signed note."""
        head = await self.head(conn)
        existing = (
            await conn.execute(select(checkpoints.c.note).where(checkpoints.c.size == head.size))
        ).scalar_one_or_none()
        if existing is not None:
            return str(existing)
        note = sign(Checkpoint(origin=origin, size=head.size, root_hash=head.root).to_text())
        await conn.execute(insert(checkpoints).values(size=head.size, note=note, created_at=now))
        return note

    async def latest_checkpoint(self, conn: AsyncConnection) -> str | None:
        query = select(checkpoints.c.note).order_by(checkpoints.c.size.desc()).limit(1)
        return (await conn.execute(query)).scalar_one_or_none()
