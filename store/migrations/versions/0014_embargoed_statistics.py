"""embargoed statistics: a received request's embargo date beside its coded facets

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 06:40:00.000000

The statistics count a received request's coded facets (type, offences, legal basis, deadline) from its arrival,
while an embargo keeps its content closed to our users until a date (decision 162). The date is now kept with the
facets, and every statistic leaves the case out until then. Here: the rows of received requests whose marking
carries an embargo take its date (the latest of several, as the gateway reads them).
"""

from __future__ import annotations

import json
import re
from datetime import date

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_EMBARGO = re.compile(r"embargo:([0-9]{4}-[0-9]{2}-[0-9]{2})")


def upgrade() -> None:
    with op.batch_alter_table("case_stats") as batch_op:
        batch_op.add_column(sa.Column("hidden_until", sa.Date(), nullable=True))
    bind = op.get_bind()
    candidates = bind.execute(
        sa.text(
            "SELECT messages.id, messages.marking_caveats FROM messages JOIN case_stats "
            "ON case_stats.case_id = messages.id WHERE messages.direction = 'in' AND messages.kind = 'request' "
            "AND messages.marking_caveats LIKE '%embargo:%'"
        )
    ).all()
    rows = []
    for case_id, caveats in candidates:
        until = _latest_embargo(caveats)
        if until is not None:
            rows.append({"id": case_id, "until": until})
    if rows:
        bind.execute(sa.text("UPDATE case_stats SET hidden_until = :until WHERE case_id = :id"), rows)


def _latest_embargo(caveats: str) -> date | None:
    try:
        names = json.loads(caveats)
    except ValueError:
        return None
    days = []
    for name in names if isinstance(names, list) else []:
        found = _EMBARGO.fullmatch(name) if isinstance(name, str) else None
        if found is not None:
            try:
                days.append(date.fromisoformat(found.group(1)))
            except ValueError:
                continue
    return max(days, default=None)


def downgrade() -> None:
    with op.batch_alter_table("case_stats") as batch_op:
        batch_op.drop_column("hidden_until")
