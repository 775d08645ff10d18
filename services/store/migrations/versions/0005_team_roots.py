"""storage roots granted to teams

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "team_roots",
        sa.Column("team", sa.String(100), primary_key=True),
        sa.Column("uri", sa.String(2000), primary_key=True),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(32)),
    )


def downgrade() -> None:
    op.drop_table("team_roots")
