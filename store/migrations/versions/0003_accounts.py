"""accounts: clearance, caveats, unit and password of users; scoped tokens with public ids; login throttling

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 09:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# the role defaults as of this revision (store/users.py ROLE_SCOPES), frozen here: tokens issued before 0003 keep
# what their role allowed
_ROLE_SCOPES = {
    "officer": "content:open messages:read messages:write",
    "supervisor": "content:open ledger:read messages:read messages:write",
    "auditor": "ledger:read messages:read",
    "admin": "admin ledger:read messages:read",
}


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("clearance", sa.String(length=64), nullable=False, server_default="UNCLASSIFIED"))
        batch_op.add_column(sa.Column("caveats", sa.Text(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("unit", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("password_hash", sa.String(length=255), nullable=True))

    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_id", sa.String(length=32), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("scopes", sa.Text(), nullable=False, server_default=""))
    # existing tokens: a public id from their hash (the hash is of a 256-bit random token: nothing to learn from it)
    op.execute("UPDATE tokens SET token_id = substr(token_hash, 1, 16)")
    for role, scopes in _ROLE_SCOPES.items():
        op.execute(
            sa.text(
                "UPDATE tokens SET scopes = :scopes WHERE user_id IN (SELECT id FROM users WHERE role = :role)"
            ).bindparams(scopes=scopes, role=role)
        )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index("ix_tokens_token_id", ["token_id"], unique=True)
        batch_op.create_index("ix_tokens_user_id", ["user_id"], unique=False)

    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username_sha256", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_attempts")),
    )
    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_login_attempts_username", ["username_sha256", "attempted_at"], unique=False)
        batch_op.create_index("ix_login_attempts_source", ["source", "attempted_at"], unique=False)
        batch_op.create_index("ix_login_attempts_time", ["attempted_at"], unique=False)


def downgrade() -> None:
    op.drop_table("login_attempts")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_tokens_user_id")
        batch_op.drop_index("ix_tokens_token_id")
        batch_op.drop_column("scopes")
        batch_op.drop_column("token_id")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("password_hash")
        batch_op.drop_column("unit")
        batch_op.drop_column("caveats")
        batch_op.drop_column("clearance")
