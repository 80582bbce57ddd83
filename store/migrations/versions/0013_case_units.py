"""case units: a case someone of ours assigned or opened belongs to a unit, the users without one included

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 00:40:00.000000

Until now a case opened or assigned by a user without a unit kept no unit (NULL), which the access rules read as
an incoming case awaiting triage, open to every supervisor for good. From this revision on it takes the empty unit,
the group of users without one (decision 115). Here: every case without a unit that was not an incoming case
awaiting triage takes the empty unit: one with an assigned officer, or that a user of ours assigned once (a
case.assigned ledger entry with a user: actor: its officers may all have been taken off since), one opened by a
message of ours (its id is the case's), or by an oral request one of our officers recorded. An incoming thread that
adopted a case (the system's case.assigned entry, related_id = that case) takes that case's unit as it is now: none
if the case is still in triage.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE cases SET unit = '' WHERE unit IS NULL AND ("
            "EXISTS (SELECT 1 FROM case_assignments WHERE case_assignments.case_id = cases.id) "
            "OR EXISTS (SELECT 1 FROM messages WHERE messages.id = cases.id AND messages.direction = 'out') "
            "OR EXISTS (SELECT 1 FROM oral_requests WHERE oral_requests.case_id = cases.id))"
        )
    )
    # the actor is inside the entry's bytes: read the few candidates' entries and keep those a user wrote
    bind = op.get_bind()
    candidates = bind.execute(
        sa.text(
            "SELECT ledger_entries.message_id, ledger_entries.entry FROM ledger_entries "
            "JOIN cases ON cases.id = ledger_entries.message_id "
            "WHERE cases.unit IS NULL AND ledger_entries.type = 'case.assigned'"
        )
    ).all()
    entries = [(case_id, _entry(bytes(entry))) for case_id, entry in candidates]
    assigned = sorted({case_id for case_id, entry in entries if str(entry.get("actor", "")).startswith("user:")})
    if assigned:
        bind.execute(
            sa.text("UPDATE cases SET unit = '' WHERE id = :id AND unit IS NULL"),
            [{"id": case_id} for case_id in assigned],
        )
    adopted = {
        case_id: str(entry["related_id"])
        for case_id, entry in entries
        if entry.get("actor") == "system" and isinstance(entry.get("related_id"), str)
    }
    if adopted:  # read after the updates above: the adopted case's unit as this revision gives it
        query = sa.text("SELECT id, unit FROM cases WHERE id IN :ids").bindparams(sa.bindparam("ids", expanding=True))
        units: dict[str, str | None] = dict(bind.execute(query, {"ids": sorted(set(adopted.values()))}).all())
        rows = [
            {"id": thread, "unit": units[about]}
            for thread, about in sorted(adopted.items())
            if units.get(about) is not None
        ]
        if rows:
            bind.execute(sa.text("UPDATE cases SET unit = :unit WHERE id = :id AND unit IS NULL"), rows)


def _entry(raw: bytes) -> dict[str, object]:
    try:
        entry = json.loads(raw)
    except ValueError:  # not an entry of ours: no evidence
        return {}
    return entry if isinstance(entry, dict) else {}


def downgrade() -> None:
    op.execute(sa.text("UPDATE cases SET unit = NULL WHERE unit = ''"))
