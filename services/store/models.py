"""Tables of the control plane: jobs, pipelines and the metric points that jobs send."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Naive UTC: SQLite drops offsets, so both stores hold the same kind of value."""
    return datetime.now(UTC).replace(tzinfo=None)


class JobState(StrEnum):
    waiting = "WAITING"  # a pipeline stage whose parents have not all succeeded yet
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
    pass


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
    revoked_at: Mapped[datetime | None] = mapped_column()


class Pipeline(Base):
    __tablename__ = "pipelines"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_pipeline", "pipeline_id"),
        Index("ix_jobs_team", "team"),
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
