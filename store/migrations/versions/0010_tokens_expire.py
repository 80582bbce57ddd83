"""every token expires: a token made before 0003 with no expiry gets the longest one a token may have, from now

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 20:35:00.000000
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from store.tables import TZ

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

MAX_TOKEN_TTL = timedelta(days=366)  # store/tokens.py, as of this revision


def upgrade() -> None:
    tokens = sa.table("tokens", sa.column("expires_at", TZ))
    until = datetime.now(UTC) + MAX_TOKEN_TTL
    op.execute(tokens.update().where(tokens.c.expires_at.is_(None)).values(expires_at=until))


def downgrade() -> None:
    pass  # the expiries stay: nothing in 0009 needs a token without one
