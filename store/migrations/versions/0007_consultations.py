"""consultations: informal consultation threads and the checklists of draft requests shared in them

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 10:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consultations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("peer", sa.String(length=40), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("about_case_id", sa.String(length=36), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("converted_request_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["id"], ["cases.id"], name=op.f("fk_consultations_id_cases")),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_consultations_created_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consultations")),
    )
    op.create_index("ix_consultations_about", "consultations", ["about_case_id"])
    op.create_index("ix_consultations_converted", "consultations", ["converted_request_id"])
    op.create_table(
        "consultation_drafts",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("thread_id", sa.String(length=36), nullable=False),
        sa.Column("request_type", sa.String(length=40), nullable=False),
        sa.Column("blocking", sa.Text(), nullable=False),
        sa.Column("warnings", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"], ["consultations.id"], name=op.f("fk_consultation_drafts_thread_id_consultations")
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_consultation_drafts")),
    )
    op.create_index("ix_consultation_drafts_thread", "consultation_drafts", ["thread_id"])


def downgrade() -> None:
    op.drop_index("ix_consultation_drafts_thread", table_name="consultation_drafts")
    op.drop_table("consultation_drafts")
    op.drop_index("ix_consultations_converted", table_name="consultations")
    op.drop_index("ix_consultations_about", table_name="consultations")
    op.drop_table("consultations")
