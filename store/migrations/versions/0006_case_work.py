"""case work: next action, flags, critical dates and tasks, oral urgent requests

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 10:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "case_work",
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("next_action", sa.Text(), nullable=True),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_case_work_case_id_cases")),
        sa.PrimaryKeyConstraint("case_id", name=op.f("pk_case_work")),
    )
    op.create_table(
        "case_flags",
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("flag", sa.String(length=40), nullable=False),
        sa.Column("set_by", sa.String(length=64), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_case_flags_case_id_cases")),
        sa.PrimaryKeyConstraint("case_id", "flag", name=op.f("pk_case_flags")),
    )
    op.create_table(
        "case_dates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("due", sa.Date(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("done_by", sa.String(length=64), nullable=True),
        sa.Column("notified_soon_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notified_overdue_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_case_dates_case_id_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_dates")),
    )
    op.create_index("ix_case_dates_open_due", "case_dates", ["done_at", "due"], unique=False)
    op.create_index("ix_case_dates_case_id", "case_dates", ["case_id"], unique=False)
    op.create_table(
        "oral_requests",
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("peer", sa.String(length=40), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("oral_on", sa.Date(), nullable=False),
        sa.Column("marking_level", sa.String(length=64), nullable=False),
        sa.Column("marking_caveats", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("confirmed_by", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_oral_requests_case_id_cases")),
        sa.ForeignKeyConstraint(["task_id"], ["case_dates.id"], name=op.f("fk_oral_requests_task_id_case_dates")),
        sa.PrimaryKeyConstraint("case_id", name=op.f("pk_oral_requests")),
    )


def downgrade() -> None:
    op.drop_table("oral_requests")
    op.drop_index("ix_case_dates_case_id", table_name="case_dates")
    op.drop_index("ix_case_dates_open_due", table_name="case_dates")
    op.drop_table("case_dates")
    op.drop_table("case_flags")
    op.drop_table("case_work")
