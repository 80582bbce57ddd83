"""Reading the ledger: entries, stored subtree nodes for proofs, checkpoints with their cosignatures, and the
witness state kept about counterparts' ledgers (verified checkpoints, alarms)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol import merkle
from protocol.checkpoint import SERVED_COSIGNATURES
from protocol.events import EventType
from store.db import transaction_locks
from store.facts import claim_fact, delete_fact, read_fact, write_fact
from store.tables import checkpoints, cosignatures, ledger_entries, ledger_nodes, peer_alarms, peer_checkpoints

__all__ = ["Alarm", "LedgerReader", "PeerCheckpoint", "WitnessState"]

# rows per query when a plan needs many nodes (keeps the statement small on both stores)
_CHUNK = 200


class LedgerReader:
    @staticmethod
    async def nodes(conn: AsyncConnection, needed: Sequence[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        """The stored hashes of the perfect subtrees ``needed``, in one query per 200 nodes."""
        found: dict[merkle.NodeId, bytes] = {}
        wanted = list(dict.fromkeys(needed))
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            if conn.dialect.name == "sqlite":
                # SQLite's planner uses the primary key for OR-ed equalities, not for a row-value IN
                condition = or_(*(and_(ledger_nodes.c.level == lv, ledger_nodes.c.idx == ix) for lv, ix in chunk))
            else:
                # a row-value IN with one expanding parameter: the statement compiles once and stays cached
                condition = tuple_(ledger_nodes.c.level, ledger_nodes.c.idx).in_(chunk)
            query = select(ledger_nodes.c.level, ledger_nodes.c.idx, ledger_nodes.c.hash).where(condition)
            for row in await conn.execute(query):
                found[(row.level, row.idx)] = bytes(row.hash)
        return found

    @staticmethod
    async def root(conn: AsyncConnection, size: int) -> bytes:
        return merkle.root_hash(size, await LedgerReader.nodes(conn, merkle.root_needs(size)))

    @staticmethod
    async def inclusion(conn: AsyncConnection, index: int, size: int) -> tuple[bytes, list[bytes], bytes]:
        """(leaf hash, proof, root) for ``index`` in the tree of ``size``: O(log n) stored nodes."""
        needed = merkle.inclusion_needs(index, size) + merkle.root_needs(size) + [(0, index)]
        nodes = await LedgerReader.nodes(conn, needed)
        return nodes[(0, index)], merkle.inclusion_proof(index, size, nodes), merkle.root_hash(size, nodes)

    @staticmethod
    async def consistency(conn: AsyncConnection, size1: int, size2: int) -> list[bytes]:
        nodes = await LedgerReader.nodes(conn, merkle.consistency_needs(size1, size2))
        return merkle.consistency_proof(size1, size2, nodes)

    @staticmethod
    async def entry(conn: AsyncConnection, index: int) -> tuple[str, bytes] | None:
        """The type and the RFC 8785 bytes of the entry at ``index``."""
        query = select(ledger_entries.c.type, ledger_entries.c.entry).where(ledger_entries.c.idx == index)
        row = (await conn.execute(query)).first()
        return None if row is None else (str(row.type), bytes(row.entry))

    @staticmethod
    async def index_of_message(conn: AsyncConnection, message_id: str) -> int | None:
        """The entry of ``message_id``'s submission or reception: not a refusal of an envelope that claimed the id
        first (a peer's bogus envelope, a transient refusal), nor any later event about it."""
        query = (
            select(ledger_entries.c.idx)
            .where(
                ledger_entries.c.message_id == message_id,
                ledger_entries.c.type.in_([EventType.SUBMITTED.value, EventType.RECEIVED.value]),
            )
            .order_by(ledger_entries.c.idx)
            .limit(1)
        )
        return (await conn.execute(query)).scalar_one_or_none()

    @staticmethod
    async def entry_page(conn: AsyncConnection, start: int, end: int) -> list[bytes]:
        """The entries from ``start`` to ``end`` (excluded), in order, read at once."""
        query = (
            select(ledger_entries.c.entry)
            .where(ledger_entries.c.idx >= start, ledger_entries.c.idx < end)
            .order_by(ledger_entries.c.idx)
        )
        return [bytes(row.entry) for row in await conn.execute(query)]

    @staticmethod
    async def checkpoint_notes(conn: AsyncConnection, after: int, limit: int) -> list[tuple[int, str]]:
        """Checkpoints larger than ``after``, ascending, each with the cosignature lines received for it."""
        query = select(checkpoints.c.size, checkpoints.c.note).where(checkpoints.c.size > after)
        rows = (await conn.execute(query.order_by(checkpoints.c.size).limit(limit))).all()
        if not rows:
            return []
        sizes = [row.size for row in rows]
        found: dict[int, list[tuple[str, str]]] = {}
        cosigned = select(cosignatures.c.size, cosignatures.c.witness, cosignatures.c.line)
        order = (cosignatures.c.size, cosignatures.c.received_at, cosignatures.c.witness)
        for row in await conn.execute(cosigned.where(cosignatures.c.size.in_(sizes)).order_by(*order)):
            kept = found.setdefault(row.size, [])
            if len(kept) < SERVED_COSIGNATURES:  # the first witnesses to cosign it
                kept.append((row.witness, row.line))
        return [
            (row.size, _with_lines(row.note, [line for _, line in sorted(found.get(row.size, []))])) for row in rows
        ]

    @staticmethod
    async def first_checkpoint_at(conn: AsyncConnection) -> datetime | None:
        """When the first checkpoint was signed: the first start of a gateway on this database (gateway/app.py
        signs one before it listens)."""
        query = select(checkpoints.c.created_at).order_by(checkpoints.c.size).limit(1)
        first: datetime | None = (await conn.execute(query)).scalar_one_or_none()
        return first

    @staticmethod
    async def latest_checkpoint_note(conn: AsyncConnection) -> tuple[int, str] | None:
        query = select(checkpoints.c.size).order_by(checkpoints.c.size.desc()).limit(1)
        size = (await conn.execute(query)).scalar_one_or_none()
        if size is None:
            return None
        notes = await LedgerReader.checkpoint_notes(conn, size - 1, 1)
        return notes[0] if notes else None

    @staticmethod
    async def checkpoint_text(conn: AsyncConnection, size: int) -> str | None:
        query = select(checkpoints.c.note).where(checkpoints.c.size == size)
        return (await conn.execute(query)).scalar_one_or_none()

    @staticmethod
    async def add_cosignature(conn: AsyncConnection, size: int, witness: str, line: str, now: datetime) -> bool:
        """Keep a witness's first cosignature of a size; False if one is kept already. One statement, so that two
        posts of it at once do not both find none and collide on inserting (PostgreSQL reads committed rows)."""
        upsert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
        statement = upsert(cosignatures).values(size=size, witness=witness, line=line, received_at=now)
        result = await conn.execute(statement.on_conflict_do_nothing(index_elements=["size", "witness"]))
        return bool(result.rowcount == 1)


def _with_lines(note: str, lines: list[str]) -> str:
    # a signed note ends with its signature lines, each ending in a newline: cosignatures follow the same way
    return note + "".join(line + "\n" for line in lines)


@dataclass(frozen=True)
class PeerCheckpoint:
    peer: str
    size: int
    root: bytes
    note: str


@dataclass(frozen=True)
class Alarm:
    id: int
    peer: str
    reason: str
    detail: str
    raised_at: datetime


class WitnessState:
    @staticmethod
    async def latest(conn: AsyncConnection, peer: str) -> PeerCheckpoint | None:
        query = (
            select(peer_checkpoints)
            .where(peer_checkpoints.c.peer == peer)
            .order_by(peer_checkpoints.c.size.desc())
            .limit(1)
        )
        row = (await conn.execute(query)).one_or_none()
        return None if row is None else PeerCheckpoint(row.peer, row.size, bytes(row.root), row.note)

    @staticmethod
    async def largest_held(conn: AsyncConnection, peer: str) -> tuple[int, datetime] | None:
        """The size of the largest checkpoint we hold of ``peer`` and when we verified it."""
        query = (
            select(peer_checkpoints.c.size, peer_checkpoints.c.verified_at)
            .where(peer_checkpoints.c.peer == peer)
            .order_by(peer_checkpoints.c.size.desc())
            .limit(1)
        )
        row = (await conn.execute(query)).one_or_none()
        return None if row is None else (int(row.size), row.verified_at)

    @staticmethod
    async def witnessed(conn: AsyncConnection) -> set[str]:
        """The peers we hold a checkpoint of."""
        return set((await conn.execute(select(peer_checkpoints.c.peer).distinct())).scalars())

    @staticmethod
    async def lock(conn: AsyncConnection, peer: str) -> None:
        """Hold, until the transaction ends, the right to add to ``peer``'s checkpoints: replicas witnessing one peer
        compare a checkpoint with the largest held and store it one at a time. SQLite's ``BEGIN IMMEDIATE`` already
        serialises writers."""
        await transaction_locks(conn, f"comity-witness:{peer}")

    @staticmethod
    async def remember(conn: AsyncConnection, checkpoint: PeerCheckpoint, now: datetime) -> None:
        await conn.execute(
            insert(peer_checkpoints).values(
                peer=checkpoint.peer, size=checkpoint.size, root=checkpoint.root, note=checkpoint.note, verified_at=now
            )
        )

    @staticmethod
    async def raise_alarm(conn: AsyncConnection, peer: str, reason: str, detail: str, now: datetime) -> None:
        await conn.execute(insert(peer_alarms).values(peer=peer, reason=reason, detail=detail[:500], raised_at=now))

    @staticmethod
    async def open_alarms(conn: AsyncConnection) -> list[Alarm]:
        query = select(peer_alarms).where(peer_alarms.c.cleared_at.is_(None)).order_by(peer_alarms.c.id)
        return [Alarm(r.id, r.peer, r.reason, r.detail, r.raised_at) for r in await conn.execute(query)]

    @staticmethod
    async def clear(
        conn: AsyncConnection,
        peer: str,
        by: str,
        now: datetime,
        *,
        forget_history: bool = False,
        forget_receipt_proofs: bool = False,
    ) -> int:
        """Close the open alarms about ``peer``; with ``forget_history``, also drop the checkpoints we held from it,
        so that its next checkpoint becomes the new starting point (after the operator accepted a changed history);
        with ``forget_receipt_proofs``, that it served receipt proofs (after the operator accepted that it no longer
        does, decision 77)."""
        if forget_history:  # not while a replica stores a checkpoint of the history being forgotten
            await WitnessState.lock(conn, peer)
        result = await conn.execute(
            update(peer_alarms)
            .where(peer_alarms.c.peer == peer, peer_alarms.c.cleared_at.is_(None))
            .values(cleared_at=now, cleared_by=by)
        )
        if forget_history and result.rowcount:
            await conn.execute(delete(peer_checkpoints).where(peer_checkpoints.c.peer == peer))
            await delete_fact(conn, _owed_key(peer))  # their entries were checked against the history forgotten
        if forget_receipt_proofs and result.rowcount:
            await delete_fact(conn, _served_key(peer))
        return int(result.rowcount)

    @staticmethod
    async def served_receipt_proofs(conn: AsyncConnection, peer: str) -> bool:
        """Whether ``peer`` has served us a receipt proof (9.6) before: then a ``not-found`` from it is no longer
        the answer of a gateway of an earlier version."""
        return bool(await read_fact(conn, _served_key(peer)))

    @staticmethod
    async def remember_receipt_proofs(conn: AsyncConnection, peer: str) -> None:
        await write_fact(conn, _served_key(peer), True)

    @staticmethod
    async def owed_receipts(conn: AsyncConnection, peer: str) -> list[dict[str, Any]]:
        """The receipts of ``peer`` whose witness check failed, as JSON, oldest failure first (decision 176)."""
        return _owed_list(await read_fact(conn, _owed_key(peer)))

    @staticmethod
    async def owe_receipts(
        conn: AsyncConnection, peer: str, receipts: Sequence[dict[str, Any]], limit: int
    ) -> list[str]:
        """Keep ``receipts`` (JSON) owed by ``peer``, last in the list in their order (once per message id), and at
        most ``limit`` of them: the message ids of the oldest, dropped beyond it. Replicas add and settle one at a
        time."""
        await claim_fact(conn, _owed_key(peer), [])  # a row to lock, even for the first: two firsts wait in turn
        added = {receipt["message_id"] for receipt in receipts}
        owed = _owed_list(await read_fact(conn, _owed_key(peer), lock=True))
        owed = [item for item in owed if item["message_id"] not in added] + list(receipts)
        await write_fact(conn, _owed_key(peer), owed[-limit:])
        return [str(item["message_id"]) for item in owed[:-limit]]

    @staticmethod
    async def settle_receipts(conn: AsyncConnection, peer: str, message_ids: Sequence[str]) -> int:
        """Forget the receipts of ``message_ids`` owed by ``peer`` (checked since); how many it still owes."""
        settled = set(message_ids)
        owed = [
            item
            for item in _owed_list(await read_fact(conn, _owed_key(peer), lock=True))
            if item["message_id"] not in settled
        ]
        if owed:
            await write_fact(conn, _owed_key(peer), owed)
        else:
            await delete_fact(conn, _owed_key(peer))
        return len(owed)


def _served_key(peer: str) -> str:
    return f"receipt_proofs_served:{peer}"


def _owed_list(value: Any) -> list[dict[str, Any]]:
    """The owed receipts a stored value holds: a list of objects, each with a message id; anything else in it (a
    damaged row) is left out, and out of the next write."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict) and isinstance(item.get("message_id"), str)]


def _owed_key(peer: str) -> str:
    return f"witness_owed:{peer}"
