"""What the sender stores when a peer's signed receipt arrives: the outbox row goes, the message is delivered, and a
request's wait starts (statistics), all in the caller's transaction.

Every envelope sent ends here, so on PostgreSQL the three changes are one statement (with the rows the group
commit has queued so far, ``store.fast.fetch_direct``): the outbox row, the message and its statistics row were all
committed before the envelope could be sent, so the statement touches no queued row. Elsewhere (SQLite) the same
changes are three statements.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from store import fast
from store.case_stats import TIMES, CaseStats
from store.messages import Messages
from store.outbox import Outbox

__all__ = ["record_delivery"]


def _statement(first: int) -> tuple[list[str], str]:
    message, received_at, receipt, sent_at = (f"${first + i}" for i in range(4))
    times = ", ".join(TIMES)
    # placeholders and fixed names only: no value is formatted into the text; the message and statistics rows
    # change only if this transaction removed the outbox row (the gate)
    own = [
        f"d AS (DELETE FROM outbox WHERE message_id = {message} RETURNING message_id)",  # noqa: S608
        f"m AS (UPDATE messages SET state = 'delivered', received_at = {received_at}, receipt = {receipt} "  # noqa: S608
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
    nothing: the outbox no longer held it (another replica recorded the receipt first)."""
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
