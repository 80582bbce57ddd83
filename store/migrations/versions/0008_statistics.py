"""statistics: coded facets and milestone times of each request's case (case_stats)

Cases opened before this revision get a row with what the database knows without decrypting anything: direction,
counterpart, country, opening time, type and state (no facets, no milestones: their requests are encrypted).
Supervisors' and auditors' tokens that carry ``ledger:read`` gain the new ``stats:read`` scope.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 10:30:00.000000
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "case_stats",
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("counterpart", sa.String(length=40), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("request_type", sa.String(length=40), nullable=True),
        sa.Column("legal_basis", sa.String(length=12), nullable=True),
        sa.Column("uncac_article", sa.Integer(), nullable=True),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("offences", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("assistance", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("refusal_grounds", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("deadline", sa.Date(), nullable=True),
        sa.Column("state", sa.String(length=40), nullable=False),
        sa.Column("officer_id", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_answer_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("executed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("wait_acknowledge_ms", sa.BigInteger(), nullable=True),
        sa.Column("wait_first_answer_ms", sa.BigInteger(), nullable=True),
        sa.Column("wait_execution_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("case_id", name=op.f("pk_case_stats")),
    )
    with op.batch_alter_table("case_stats", schema=None) as batch_op:
        batch_op.create_index("ix_case_stats_direction_year", ["direction", "year"], unique=False)
        batch_op.create_index("ix_case_stats_direction_opened", ["direction", "opened_at"], unique=False)
        batch_op.create_index("ix_case_stats_counterpart", ["counterpart"], unique=False)
        batch_op.create_index("ix_case_stats_country", ["country"], unique=False)
        batch_op.create_index("ix_case_stats_type", ["request_type"], unique=False)
        batch_op.create_index("ix_case_stats_state", ["state"], unique=False)
        batch_op.create_index("ix_case_stats_deadline", ["deadline"], unique=False)
    _backfill()
    _grant_stats_scope()


def _grant_stats_scope() -> None:
    """Supervisors' and auditors' tokens that read the ledger gain the new ``stats:read`` scope (aggregates of
    the same metadata); a token issued without ``ledger:read`` keeps exactly what it had."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT t.token_hash, t.scopes, u.role FROM tokens t JOIN users u ON u.id = t.user_id"
            " WHERE u.role IN ('supervisor', 'auditor')"
        )
    ).fetchall()
    for row in rows:
        if "ledger:read" in row.scopes.split():
            bind.execute(
                sa.text("UPDATE tokens SET scopes = :scopes WHERE token_hash = :hash"),
                {"scopes": " ".join(sorted({*row.scopes.split(), "stats:read"})), "hash": row.token_hash},
            )


def _backfill() -> None:
    """A row for every existing request case, from the cases and messages tables (nothing is decrypted)."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT c.id, c.created_at, c.state, c.request_type, m.direction, m.peer"
            " FROM cases c JOIN messages m ON m.id = c.id WHERE c.state IS NOT NULL"
        )
    ).fetchall()
    table = sa.table(
        "case_stats",
        sa.column("case_id"),
        sa.column("direction"),
        sa.column("counterpart"),
        sa.column("country"),
        sa.column("opened_at", sa.DateTime(timezone=True)),
        sa.column("year"),
        sa.column("request_type"),
        sa.column("urgent"),
        sa.column("state"),
        sa.column("start_at", sa.DateTime(timezone=True)),
    )
    values = []
    naive = bind.dialect.name == "sqlite"  # the store keeps naive UTC there (store/tables.py UTCDateTime)
    for row in rows:
        opened = _utc(row.created_at)
        stored = opened.replace(tzinfo=None) if naive else opened
        values.append(
            {
                "case_id": row.id,
                "direction": row.direction,
                "counterpart": row.peer,
                "country": row.peer[:2].upper(),
                "opened_at": stored,
                "year": opened.year,
                "request_type": row.request_type,
                "urgent": False,
                "state": row.state,
                "start_at": stored if row.direction == "in" else None,
            }
        )
    if values:
        op.bulk_insert(table, values)
    # the officer most recently assigned to each case
    latest: dict[str, int] = {}
    for row in bind.execute(
        sa.text("SELECT case_id, user_id FROM case_assignments ORDER BY assigned_at, user_id")
    ).fetchall():
        latest[row.case_id] = row.user_id
    for case_id, user_id in latest.items():
        bind.execute(
            sa.text("UPDATE case_stats SET officer_id = :user_id WHERE case_id = :case_id"),
            {"user_id": user_id, "case_id": case_id},
        )


def _utc(value: object) -> datetime:
    if isinstance(value, str):  # SQLite hands back text through a bare text() query
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def downgrade() -> None:
    with op.batch_alter_table("case_stats", schema=None) as batch_op:
        for name in (
            "ix_case_stats_deadline",
            "ix_case_stats_state",
            "ix_case_stats_type",
            "ix_case_stats_country",
            "ix_case_stats_counterpart",
            "ix_case_stats_direction_opened",
            "ix_case_stats_direction_year",
        ):
            batch_op.drop_index(name)
    op.drop_table("case_stats")
