"""case states: each side's life-cycle state of a case, the counterpart's last reported state, the last action

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("peer_state", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("request_type", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("last_action_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_column("last_action_at")
        batch_op.drop_column("request_type")
        batch_op.drop_column("peer_state")
        batch_op.drop_column("state")
