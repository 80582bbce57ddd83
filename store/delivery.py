"""What the sender stores when a peer's signed receipt arrives: the outbox row goes, the message is delivered, and a
request's wait starts (statistics), all in the caller's transaction.

Every envelope sent ends here. On PostgreSQL:

* in a group commit that started from a remembered ledger head (``store.fast.optimistic``), the changes are
  queued as guarded writes and go out in the group's one statement: they lock the batch's outbox rows and apply,
  with everything else in the statement, only if every one of them was still there. Another replica that recorded
  one of these receipts first, or a refusal recorded meanwhile, makes the whole batch write nothing; the group
  commit then runs it again from the locked head, where each receipt is checked on its own (next item);
* otherwise the three changes are one statement (with the rows the group commit has queued so far,
  ``store.fast.fetch_direct``), gated on the outbox row: the outbox row, the message and its statistics row were
  all committed before the envelope could be sent, so the statement touches no queued row.

Elsewhere (SQLite) the same changes are three statements.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from store import fast
from store.case_stats import TIMES, WAITS, CaseStats
from store.messages import DELIVERED_STATE, Messages
from store.outbox import Outbox

__all__ = ["record_delivery"]


def _waits_from(sent_at: str) -> str:
    """SET clauses for the waits from ``sent_at`` to each milestone already reached (whole milliseconds, rounded
    down and never below zero, as CaseStats.write_waits computes them)."""
    return ", ".join(
        f"{wait} = CASE WHEN {milestone} IS NULL THEN {wait} "
        f"ELSE GREATEST(0, floor(extract(epoch FROM {milestone} - {sent_at}) * 1000)::bigint) END"
        for wait, milestone in WAITS
    )


def _guarded(prefix: str, first: int, rows: list[tuple[Any, ...]]) -> fast.GuardedSql:
    ids, received, receipts, sent = (f"${first + i}" for i in range(4))
    count = f"${first + 4}"
    columns = list(zip(*rows, strict=True))
    lock, delivered = f"{prefix}lock", f"unnest({ids}::varchar[], {received}::timestamptz[], {receipts}::varchar[])"
    # placeholders and fixed names only: no value is formatted into the text
    writes = [
        f"{prefix}d AS (DELETE FROM outbox WHERE message_id = ANY({ids}::varchar[]) AND {{guard}})",  # noqa: S608
        f"{prefix}m AS (UPDATE messages SET state = {DELIVERED_STATE}, received_at = v.received_at, "  # noqa: S608
        f"receipt = v.receipt FROM {delivered} AS v(id, received_at, receipt) WHERE messages.id = v.id AND {{guard}})",
        f"{prefix}s AS (UPDATE case_stats SET start_at = v.sent_at, {_waits_from('v.sent_at')} "  # noqa: S608
        f"FROM unnest({ids}::varchar[], {sent}::timestamptz[]) AS v(id, sent_at) "
        f"WHERE case_stats.case_id = v.id AND case_stats.start_at IS NULL AND {{guard}})",
    ]
    return fast.GuardedSql(
        # the same gate as the statement of one receipt: the outbox row is still there (no other replica recorded
        # the receipt, no refusal was recorded); locked, so it stays until this statement commits
        locks=[f"{lock} AS (SELECT message_id FROM outbox WHERE message_id = ANY({ids}::varchar[]) FOR UPDATE)"],  # noqa: S608
        condition=f"(SELECT count(*) FROM {lock}) = {count}::bigint",  # noqa: S608
        writes=writes,
        args=[*(list(column) for column in columns), len(rows)],
    )


_DELIVERIES = fast.Guarded("deliveries", _guarded)


def _statement(first: int) -> tuple[list[str], str]:
    message, received_at, receipt, sent_at = (f"${first + i}" for i in range(4))
    times = ", ".join(TIMES)
    # placeholders and fixed names only: no value is formatted into the text; the message and statistics rows
    # change only if this transaction removed the outbox row (the gate)
    own = [
        f"d AS (DELETE FROM outbox WHERE message_id = {message} RETURNING message_id)",  # noqa: S608
        f"m AS (UPDATE messages SET state = {DELIVERED_STATE}, received_at = {received_at}, receipt = {receipt} "  # noqa: S608
        "WHERE id IN (SELECT message_id FROM d))",
        f"s AS (UPDATE case_stats SET start_at = {sent_at} "  # noqa: S608
        f"WHERE case_id IN (SELECT message_id FROM d) AND start_at IS NULL RETURNING {times})",
    ]
    return own, "SELECT (SELECT count(*) FROM d) AS removed, s.* FROM (SELECT 1) AS one LEFT JOIN s ON true"


async def record_delivery(
    conn: AsyncConnection,
    outbox: Outbox,
    message_id: str,
    *,
    sent_at: datetime,
    received_at: datetime,
    receipt: str,
) -> bool:
    """Remove ``message_id`` from the outbox and, if this call removed it, mark the message delivered with the
    peer's ``receipt`` and start a request's wait at ``sent_at`` (the first time only). False, having changed
    nothing: the outbox no longer held it (another replica recorded the receipt first). In an optimistic group
    commit, True at once: the batch writes nothing if that was wrong, and is run again (module docstring)."""
    if fast.optimistic(conn):
        fast.queue_guarded(conn, _DELIVERIES, (message_id, received_at, receipt, sent_at))
        return True
    ran, row = await fast.fetch_direct(conn, _statement, (message_id, received_at, receipt, sent_at))
    if not ran:
        if not await outbox.remove(conn, message_id):
            return False
        await CaseStats.milestone(conn, message_id, "start_at", sent_at)
        await Messages.delivered(conn, message_id, received_at, receipt)
        return True
    if row is None:
        raise RuntimeError("the delivery statement returned no row")  # it always returns one
    if not row["removed"]:
        return False
    if row["start_at"] is not None:  # the statistics row of a request, marked now
        await CaseStats.write_waits(conn, message_id, row)
    return True
