"""team queue limits, job priority; datasets and models registry with evaluations; ratings

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("queued_at", sa.DateTime()))
    op.create_table(
        "team_limits",
        sa.Column("team", sa.String(100), primary_key=True),
        sa.Column("max_running", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("uri", sa.String(2000), nullable=False),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id")),
        sa.Column("parent_id", sa.String(32), sa.ForeignKey("artifacts.id")),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(32)),
        sa.Column("team", sa.String(100)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_artifacts_category_created", "artifacts", ["category", "created_at"])
    op.create_index("ix_artifacts_uri", "artifacts", ["uri"])
    op.create_index("ix_artifacts_job", "artifacts", ["job_id"])
    op.create_index("ix_artifacts_team", "artifacts", ["team"])
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("artifacts.id")),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id")),
        sa.Column("checkpoint", sa.String(2000), nullable=False),
        sa.Column("data", sa.String(2000)),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_evaluations_model", "evaluations", ["model_id"])
    op.create_table(
        "ratings",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("model_a", sa.String(200), nullable=False),
        sa.Column("model_b", sa.String(200), nullable=False),
        sa.Column("completion_a", sa.Text(), nullable=False),
        sa.Column("completion_b", sa.Text(), nullable=False),
        sa.Column("winner", sa.String(4), nullable=False),
        sa.Column("rater", sa.String(32)),
        sa.Column("team", sa.String(100)),
        sa.Column("task", sa.String(100)),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_ratings_team_created", "ratings", ["team", "created_at"])
    op.create_index("ix_ratings_task", "ratings", ["task"])


def downgrade() -> None:
    op.drop_index("ix_ratings_task", "ratings")
    op.drop_index("ix_ratings_team_created", "ratings")
    op.drop_table("ratings")
    op.drop_index("ix_evaluations_model", "evaluations")
    op.drop_table("evaluations")
    for name in ("team", "job", "uri", "category_created"):
        op.drop_index(f"ix_artifacts_{name}", "artifacts")
    op.drop_table("artifacts")
    op.drop_table("team_limits")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queued_at")
        batch.drop_column("priority")
