"""audit log; API keys with an expiry and their own request rate limit

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime()))
        batch.add_column(sa.Column("rate_limit_per_min", sa.Integer()))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("team", sa.String(100)),
        sa.Column("role", sa.String(16)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(200)),
        sa.Column("request_id", sa.String(64)),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_audit_time", "audit_events", ["time"])
    op.create_index("ix_audit_action", "audit_events", ["action"])
    op.create_index("ix_audit_team", "audit_events", ["team"])
    op.create_index("ix_audit_key", "audit_events", ["key_id"])


def downgrade() -> None:
    for name in ("key", "team", "action", "time"):
        op.drop_index(f"ix_audit_{name}", "audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rate_limit_per_min")
        batch.drop_column("expires_at")
