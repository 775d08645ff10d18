"""Tables of the control plane: jobs, pipelines, metric points, the team queue limits, the
registry of datasets and models, human ratings of model completions, prompt templates and
rating campaigns."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.store.types import UTCDateTime


def utcnow() -> datetime:
    """Now, timezone-aware UTC: what every timestamp column holds (``UTCDateTime``)."""
    return datetime.now(UTC)


# Jobs and keys without a team (made before teams existed, or by tools) count as this team's.
DEFAULT_TEAM = "default"


class JobState(StrEnum):
    waiting = "WAITING"  # a pipeline stage whose parents have not all succeeded yet
    queued = "QUEUED"  # ready to run, waiting for a free slot in its team's concurrency limit
    pending = "PENDING"  # submitted to Ray, not started
    running = "RUNNING"
    succeeded = "SUCCEEDED"
    failed = "FAILED"
    stopped = "STOPPED"  # cancelled by a user while it ran
    cancelled = "CANCELLED"  # never ran: cancelled, or a parent stage failed

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = {JobState.succeeded, JobState.failed, JobState.stopped, JobState.cancelled}


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime}  # noqa: RUF012 (SQLAlchemy reads it here)


class Role(StrEnum):
    read_only = "read_only"
    member = "member"
    admin = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


class ApiKey(Base):
    """An API key, stored as a SHA-256 hash: the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    team: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A revocation in the future is a rotated key's grace period: it works until then.
    revoked_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    # Requests a minute (a token bucket); None: the LLMFORGE_RATE_LIMIT_PER_MIN setting.
    rate_limit_per_min: Mapped[int | None] = mapped_column(Integer)


class Pipeline(Base):
    __tablename__ = "pipelines"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # Page order (newest first by created_at, id) after each filter of GET /jobs.
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_state_created", "state", "created_at", "id"),
        Index("ix_jobs_team_created", "team", "created_at", "id"),
        Index("ix_jobs_pipeline", "pipeline_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    pipeline_id: Mapped[str | None] = mapped_column(ForeignKey("pipelines.id"))
    stage: Mapped[str | None] = mapped_column(String(200))
    depends_on: Mapped[list[str]] = mapped_column(JSON, default=list)
    ray_submission_id: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    token_hash: Mapped[str | None] = mapped_column(String(64))
    # A retried submission with the same Idempotency-Key returns this job instead of a new one.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(32))  # the API key that submitted it
    team: Mapped[str | None] = mapped_column(String(100))
    # The team's queue runs higher priority first, then first come, first served (queued_at).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    queued_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_name_step", "job_id", "name", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[float] = mapped_column(Float)


class TeamLimit(Base):
    """A team's own cap on jobs submitted to Ray at once; teams without a row use the setting."""

    __tablename__ = "team_limits"

    team: Mapped[str] = mapped_column(String(100), primary_key=True)
    max_running: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TeamRoot(Base):
    """A storage root an admin granted a team, beyond its own area and the shared roots:
    ``read`` (its jobs may read under it) or ``write`` (read and write)."""

    __tablename__ = "team_roots"

    team: Mapped[str] = mapped_column(String(100), primary_key=True)
    uri: Mapped[str] = mapped_column(String(2000), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ArtifactCategory(StrEnum):
    dataset = "dataset"
    model = "model"


class Artifact(Base):
    """A dataset or model the platform knows: where it is, what made it, from what, and its
    figures. Deleting the record never deletes the files unless asked to."""

    __tablename__ = "artifacts"
    __table_args__ = (
        Index("ix_artifacts_category_created", "category", "created_at"),
        Index("ix_artifacts_uri", "uri"),
        Index("ix_artifacts_job", "job_id"),
        Index("ix_artifacts_team", "team"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    category: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    uri: Mapped[str] = mapped_column(String(2000))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id"))
    inputs: Mapped[list[str]] = mapped_column(JSON, default=list)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    owner: Mapped[str | None] = mapped_column(String(32))
    team: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(Base):
    """An evaluate job's figures for one model (or for a checkpoint the registry does not know)."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_model", "model_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    checkpoint: Mapped[str] = mapped_column(String(2000))
    data: Mapped[str | None] = mapped_column(String(2000))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Rating(Base):
    """One human judgement: which of two models' completions of the same prompt is better."""

    __tablename__ = "ratings"
    __table_args__ = (
        Index("ix_ratings_team_created", "team", "created_at"),
        Index("ix_ratings_task", "task"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    model_a: Mapped[str] = mapped_column(String(200))
    model_b: Mapped[str] = mapped_column(String(200))
    completion_a: Mapped[str] = mapped_column(Text)
    completion_b: Mapped[str] = mapped_column(Text)
    winner: Mapped[str] = mapped_column(String(4))  # "a", "b" or "tie"
    rater: Mapped[str | None] = mapped_column(String(32))  # the API key that rated
    team: Mapped[str | None] = mapped_column(String(100))
    task: Mapped[str | None] = mapped_column(String(100))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PromptTemplate(Base):
    """A team's named prompt: a Jinja2 query, a system message and few-shot examples
    (``llm.serve.prompts``). A PUT replaces it and bumps its version."""

    __tablename__ = "prompt_templates"
    __table_args__ = (UniqueConstraint("team", "name", name="uq_prompt_templates_team_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    team: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str | None] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer, default=1)
    description: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str] = mapped_column(Text)
    system: Mapped[str | None] = mapped_column(Text)
    examples: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    variables: Mapped[list[str]] = mapped_column(JSON, default=list)
    declared: Mapped[bool] = mapped_column(Boolean, default=False)  # else read off the source
    defaults: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    fewshot_delimiter: Mapped[str] = mapped_column(String(100))
    target_delimiter: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CampaignState(StrEnum):
    generating = "generating"  # the models are completing the prompts
    open = "open"  # raters get pairs
    failed = "failed"  # no pair could be made (the reasons are in errors)


class Campaign(Base):
    """A rating campaign: two or more models complete the same prompts, and raters judge the
    completions in blinded pairs; each verdict is stored as a normal Rating."""

    __tablename__ = "rating_campaigns"
    __table_args__ = (Index("ix_rating_campaigns_team_created", "team", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    team: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    models: Mapped[list[str]] = mapped_column(JSON)
    prompt_template: Mapped[str | None] = mapped_column(String(32))  # its id, when one was used
    template_version: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # sampling parameters
    chat: Mapped[bool] = mapped_column(Boolean, default=False)
    seed: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(100))  # the task of its ratings
    ratings_per_pair: Mapped[int | None] = mapped_column(Integer)  # None: once per rater
    prompts: Mapped[int] = mapped_column(Integer)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    generated_at: Mapped[datetime | None] = mapped_column()


class CampaignPrompt(Base):
    __tablename__ = "campaign_prompts"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("rating_campaigns.id"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    variables: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class CampaignCompletion(Base):
    """One model's completion of one prompt of a campaign (text, or the error that stopped it)."""

    __tablename__ = "campaign_completions"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("rating_campaigns.id"), primary_key=True)
    prompt_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(32), primary_key=True)
    text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class CampaignPair(Base):
    """Two models' completions of one prompt, shown blinded: ``left`` says which of model_a
    ("a") or model_b ("b") is on the left; raters get pairs in ``position`` order."""

    __tablename__ = "campaign_pairs"
    __table_args__ = (Index("ix_campaign_pairs_next", "campaign_id", "ratings", "position"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("rating_campaigns.id"))
    prompt_index: Mapped[int] = mapped_column(Integer)
    model_a: Mapped[str] = mapped_column(String(32))
    model_b: Mapped[str] = mapped_column(String(32))
    left: Mapped[str] = mapped_column(String(1))
    position: Mapped[int] = mapped_column(Integer)
    ratings: Mapped[int] = mapped_column(Integer, default=0)


class CampaignRating(Base):
    """Who rated which pair (each rater once per pair), and the Rating it made."""

    __tablename__ = "campaign_ratings"
    __table_args__ = (Index("ix_campaign_ratings_campaign_rater", "campaign_id", "rater"),)

    pair_id: Mapped[str] = mapped_column(ForeignKey("campaign_pairs.id"), primary_key=True)
    rater: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("rating_campaigns.id"))
    rating_id: Mapped[str] = mapped_column(ForeignKey("ratings.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Who did what, when, to which resource, under which request id, and how it ended. Details
    are small and never hold a secret (a raw key, a token, a spec's credentials)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_time", "time"),
        Index("ix_audit_action", "action"),
        Index("ix_audit_team", "team"),
        Index("ix_audit_key", "key_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(default=utcnow)
    key_id: Mapped[str | None] = mapped_column(String(32))
    team: Mapped[str | None] = mapped_column(String(100))
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DeploymentState(StrEnum):
    deploying = "DEPLOYING"  # its deploy job is submitted, or Serve starts its replicas
    running = "RUNNING"
    unhealthy = "UNHEALTHY"  # Serve runs it, but a replica failed its health check
    failed = "FAILED"  # the deploy failed (message), or the cluster lost it
    undeploying = "UNDEPLOYING"
    undeployed = "UNDEPLOYED"

    @property
    def active(self) -> bool:
        """The model is served by its deployment (the completions routes go there)."""
        return self in (
            DeploymentState.deploying,
            DeploymentState.running,
            DeploymentState.unhealthy,
        )


class Deployment(Base):
    """A registered model deployed as a Ray Serve application: one row per model, kept after
    an undeploy (state UNDEPLOYED) and reused by the next deploy."""

    __tablename__ = "deployments"

    model_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # contracts.serving.DeploySpec
    replicas: Mapped[int] = mapped_column(Integer, default=0)  # running, when last seen
    message: Mapped[str | None] = mapped_column(Text)
    ray_submission_id: Mapped[str | None] = mapped_column(String(64))  # the last deploy/delete
    owner: Mapped[str | None] = mapped_column(String(32))  # the API key that deployed it
    team: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
