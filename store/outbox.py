"""The outbox: messages persisted before sending, retried with backoff until a receipt arrives.

A row is claimed with a lease (``claimed_until``) so that several gateway replicas sharing one PostgreSQL never
send the same message concurrently; a replica that crashes mid-send loses its lease and another one takes over.
A delivery that happens twice is harmless: the receiver answers a duplicate with the same receipt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store import fast
from store.tables import messages, outbox

__all__ = ["DIRECT_LEASE", "Outbox", "OutboxItem"]

# a message handed straight to the sender that committed it is enqueued claimed for this long: longer than one
# delivery attempt without attachments can take (gateway/outbox.py ATTEMPT_SECONDS, 120 s in all), so no other
# replica sends it meanwhile, and short
# enough that if this process dies first, another replica (or this one restarted) sends it within minutes
DIRECT_LEASE = timedelta(seconds=150)

# built once: the hot path pays neither statement construction nor cache-key generation per call
_ENQUEUE = insert(outbox)
# a row that follows another is held while that one is still in the outbox (decision 112); the other one's own
# claim or retries decide when it goes, so a chain goes out in order
_EARLIER = outbox.alias("earlier")
_NOT_HELD = or_(
    outbox.c.after_id.is_(None),
    ~exists().where(_EARLIER.c.message_id == outbox.c.after_id).correlate(outbox),
)
_REMOVE = delete(outbox).where(outbox.c.message_id == bindparam("b_message_id"))


@dataclass(frozen=True)
class OutboxItem:
    message_id: str
    peer: str
    attempts: int
    submitted_at: datetime | None = None  # when it was submitted (``messages.created_at``): a receipt's lower bound


@dataclass(frozen=True)
class Backlog:
    """What waits for one peer's receipt: how many messages, and when the oldest of them was submitted."""

    peer: str
    messages: int
    oldest: datetime


class Outbox:
    def __init__(self, *, skip_locked: bool) -> None:
        self._skip_locked = skip_locked

    async def enqueue(
        self,
        conn: AsyncConnection,
        message_id: str,
        peer: str,
        now: datetime,
        *,
        leased_until: datetime | None = None,
        after: str | None = None,
    ) -> None:
        """Queue a message; ``leased_until`` enqueues it already claimed, by a sender that will deliver it at once;
        ``after``, a message of ours to the same peer that must have its receipt (or its final refusal) first."""
        row = {
            "message_id": message_id,
            "peer": peer,
            "attempts": 0,
            "next_attempt_at": now,
            "claimed_until": leased_until,
            "after_id": after,
        }
        await fast.insert(conn, outbox, row, _ENQUEUE)

    async def waiting_among(self, conn: AsyncConnection, message_ids: Iterable[str], peer: str) -> str | None:
        """Of ``message_ids``, the one submitted last that still waits in the outbox for ``peer``'s receipt."""
        query = (
            select(outbox.c.message_id)
            .select_from(outbox.join(messages, messages.c.id == outbox.c.message_id))
            .where(outbox.c.message_id.in_(sorted(set(message_ids))), outbox.c.peer == peer)
            .order_by(messages.c.created_at.desc(), outbox.c.message_id.desc())
            .limit(1)
        )
        found: str | None = (await conn.execute(query)).scalar_one_or_none()
        return found

    async def claim_due(
        self, conn: AsyncConnection, now: datetime, *, limit: int, lease: timedelta
    ) -> list[OutboxItem]:
        """Claim up to ``limit`` due items for ``lease``; the caller commits to make the claim visible."""
        query = (
            select(outbox.c.message_id, outbox.c.peer, outbox.c.attempts)
            .where(
                and_(
                    outbox.c.next_attempt_at <= now,
                    or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
                    _NOT_HELD,
                )
            )
            .order_by(outbox.c.next_attempt_at)
            .limit(limit)
        )
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        rows = (await conn.execute(query)).all()
        if not rows:
            return []
        ids = [row.message_id for row in rows]
        await conn.execute(update(outbox).where(outbox.c.message_id.in_(ids)).values(claimed_until=now + lease))
        query_times = select(messages.c.id, messages.c.created_at).where(messages.c.id.in_(ids))
        submitted = {row.id: row.created_at for row in await conn.execute(query_times)}
        return [OutboxItem(row.message_id, row.peer, row.attempts, submitted.get(row.message_id)) for row in rows]

    async def extend_lease(self, conn: AsyncConnection, message_id: str, until: datetime) -> None:
        """Keep a claimed row claimed until ``until`` while its delivery runs (a long upload outlives a lease)."""
        await conn.execute(
            update(outbox)
            .where(outbox.c.message_id == message_id, outbox.c.claimed_until.is_not(None))
            .values(claimed_until=until)
        )

    async def reschedule(
        self, conn: AsyncConnection, message_id: str, *, attempts: int, next_attempt_at: datetime, error: str
    ) -> None:
        await conn.execute(
            update(outbox)
            .where(outbox.c.message_id == message_id)
            .values(attempts=attempts, next_attempt_at=next_attempt_at, claimed_until=None, last_error=error[:200])
        )

    async def remove(self, conn: AsyncConnection, message_id: str) -> bool:
        sql = "DELETE FROM outbox WHERE message_id = $1"
        return bool(await fast.execute(conn, sql, (message_id,), _REMOVE, {"b_message_id": message_id}))

    async def backlog(self, conn: AsyncConnection) -> list[Backlog]:
        """Per peer, the messages still waiting for a receipt (retrying, or in flight) and the oldest one's age."""
        query = (
            select(outbox.c.peer, func.count(), func.min(messages.c.created_at))
            .select_from(outbox.join(messages, messages.c.id == outbox.c.message_id))
            .group_by(outbox.c.peer)
            .order_by(outbox.c.peer)
        )
        return [Backlog(peer, int(count), oldest) for peer, count, oldest in (await conn.execute(query)).all()]

    async def pending(self, conn: AsyncConnection) -> int:
        return len((await conn.execute(select(outbox.c.message_id))).all())

    async def next_due(self, conn: AsyncConnection, now: datetime) -> datetime | None:
        """When the next claim can succeed: the earliest retry still to come among unclaimed rows, or the earliest
        lease expiry of a claimed one (a row in flight is not due again until its lease runs out). A row already due
        that the claim just now did not get is held by another transaction (a replica's claim, a receipt being
        recorded): the caller polls for it within a second, and it must not hide a retry due sooner."""
        unclaimed = (
            select(outbox.c.next_attempt_at)
            .where(
                or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
                outbox.c.next_attempt_at > now,
                _NOT_HELD,
            )
            .order_by(outbox.c.next_attempt_at)
            .limit(1)
        )
        due = (await conn.execute(unclaimed)).scalar_one_or_none()
        leased = select(outbox.c.claimed_until).where(outbox.c.claimed_until >= now).order_by(outbox.c.claimed_until)
        expiry = (await conn.execute(leased.limit(1))).scalar_one_or_none()
        candidates = [when for when in (due, expiry) if when is not None]
        return min(candidates) if candidates else None
