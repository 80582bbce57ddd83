"""status query index: the received status queries, for the scan that answers those left unanswered

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 22:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_WHERE = sa.text("kind = 'status_query' AND direction = 'in'")


def upgrade() -> None:
    op.create_index(
        "ix_messages_status_queries", "messages", ["created_at"], postgresql_where=_WHERE, sqlite_where=_WHERE
    )


def downgrade() -> None:
    op.drop_index("ix_messages_status_queries", table_name="messages")
