"""timestamps are timezone-aware UTC: timestamptz on PostgreSQL, RFC 3339 strings on SQLite

Rows written before held naive UTC: PostgreSQL reads them as UTC (``AT TIME ZONE 'UTC'``);
SQLite's ``2026-12-06 05:16:19.567439`` (or without its fraction) becomes
``2026-12-06T05:16:19.567439+00:00``, one fixed width, so string order stays time order.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = {
    "api_keys": ("created_at", "revoked_at", "expires_at"),
    "pipelines": ("created_at",),
    "jobs": ("queued_at", "created_at", "started_at", "ended_at"),
    "team_limits": ("updated_at",),
    "team_roots": ("created_at",),
    "artifacts": ("created_at",),
    "evaluations": ("created_at",),
    "ratings": ("created_at",),
    "prompt_templates": ("created_at", "updated_at"),
    "rating_campaigns": ("created_at", "generated_at"),
    "campaign_ratings": ("created_at",),
    "audit_events": ("time",),  # already timestamptz on PostgreSQL
    "deployments": ("created_at", "updated_at"),
}
# SQLite: 'YYYY-MM-DD HH:MM:SS' (19 characters), a fraction after the 20th, then the offset.
TO_RFC3339 = (
    "replace(substr({c}, 1, 19), ' ', 'T') || '.' || substr(substr({c}, 21) || '000000', 1, 6) "
    "|| '+00:00'"
)
TO_NAIVE = "replace(substr({c}, 1, 26), 'T', ' ')"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, columns in COLUMNS.items():
        for column in columns:
            if postgres:
                if (table, column) != ("audit_events", "time"):
                    op.execute(
                        f"ALTER TABLE {table} ALTER COLUMN {column} "
                        f"TYPE TIMESTAMP WITH TIME ZONE USING {column} AT TIME ZONE 'UTC'"
                    )
            else:
                op.execute(
                    f"UPDATE {table} SET {column} = {TO_RFC3339.format(c=column)} "
                    f"WHERE {column} NOT LIKE '%+00:00'"
                )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, columns in COLUMNS.items():
        for column in columns:
            if postgres:
                if (table, column) != ("audit_events", "time"):
                    op.execute(
                        f"ALTER TABLE {table} ALTER COLUMN {column} "
                        f"TYPE TIMESTAMP WITHOUT TIME ZONE USING {column} AT TIME ZONE 'UTC'"
                    )
            else:
                op.execute(
                    f"UPDATE {table} SET {column} = {TO_NAIVE.format(c=column)} "
                    f"WHERE {column} LIKE '%+00:00'"
                )
