"""prompt templates; rating campaigns with their prompts, completions, pairs and raters

Revision ID: 0006
Revises: 0005
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
        "prompt_templates",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("team", sa.String(100), nullable=False),
        sa.Column("owner", sa.String(32)),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("system", sa.Text()),
        sa.Column("examples", sa.JSON(), nullable=False),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("declared", sa.Boolean(), nullable=False),
        sa.Column("defaults", sa.JSON(), nullable=False),
        sa.Column("fewshot_delimiter", sa.String(100), nullable=False),
        sa.Column("target_delimiter", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("team", "name", name="uq_prompt_templates_team_name"),
    )
    op.create_table(
        "rating_campaigns",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("team", sa.String(100), nullable=False),
        sa.Column("owner", sa.String(32)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("prompt_template", sa.String(32)),
        sa.Column("template_version", sa.Integer()),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("chat", sa.Boolean(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("ratings_per_pair", sa.Integer()),
        sa.Column("prompts", sa.Integer(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("generated_at", sa.DateTime()),
    )
    op.create_index("ix_rating_campaigns_team_created", "rating_campaigns", ["team", "created_at"])
    campaign = sa.ForeignKey("rating_campaigns.id")
    op.create_table(
        "campaign_prompts",
        sa.Column("campaign_id", sa.String(32), campaign, primary_key=True),
        sa.Column("index", sa.Integer(), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("messages", sa.JSON()),
        sa.Column("variables", sa.JSON()),
    )
    op.create_table(
        "campaign_completions",
        sa.Column(
            "campaign_id", sa.String(32), sa.ForeignKey("rating_campaigns.id"), primary_key=True
        ),
        sa.Column("prompt_index", sa.Integer(), primary_key=True),
        sa.Column("model", sa.String(32), primary_key=True),
        sa.Column("text", sa.Text()),
        sa.Column("finish_reason", sa.String(16)),
        sa.Column("tokens", sa.Integer()),
        sa.Column("error", sa.Text()),
    )
    op.create_table(
        "campaign_pairs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "campaign_id", sa.String(32), sa.ForeignKey("rating_campaigns.id"), nullable=False
        ),
        sa.Column("prompt_index", sa.Integer(), nullable=False),
        sa.Column("model_a", sa.String(32), nullable=False),
        sa.Column("model_b", sa.String(32), nullable=False),
        sa.Column("left", sa.String(1), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("ratings", sa.Integer(), nullable=False),
    )
    op.create_index(
        "ix_campaign_pairs_next", "campaign_pairs", ["campaign_id", "ratings", "position"]
    )
    op.create_table(
        "campaign_ratings",
        sa.Column("pair_id", sa.String(32), sa.ForeignKey("campaign_pairs.id"), primary_key=True),
        sa.Column("rater", sa.String(32), primary_key=True),
        sa.Column(
            "campaign_id", sa.String(32), sa.ForeignKey("rating_campaigns.id"), nullable=False
        ),
        sa.Column("rating_id", sa.String(32), sa.ForeignKey("ratings.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index(
        "ix_campaign_ratings_campaign_rater", "campaign_ratings", ["campaign_id", "rater"]
    )


def downgrade() -> None:
    op.drop_index("ix_campaign_ratings_campaign_rater", "campaign_ratings")
    op.drop_table("campaign_ratings")
    op.drop_index("ix_campaign_pairs_next", "campaign_pairs")
    op.drop_table("campaign_pairs")
    op.drop_table("campaign_completions")
    op.drop_table("campaign_prompts")
    op.drop_index("ix_rating_campaigns_team_created", "rating_campaigns")
    op.drop_table("rating_campaigns")
    op.drop_table("prompt_templates")
