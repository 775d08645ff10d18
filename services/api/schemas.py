"""Request and response bodies of the REST API (Create / Public, as in the FastAPI template)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ray_jobs.specs import JobKind


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobCreate(Strict):
    kind: JobKind
    spec: dict[str, Any] = Field(description="the job kind's spec; see the *Spec schemas")
    name: str | None = Field(default=None, max_length=200)
    max_retries: int = Field(default=0, ge=0, le=10, description="automatic retries on failure")


class JobPublic(BaseModel):
    id: str
    kind: str
    name: str | None
    state: str
    spec: dict[str, Any]
    pipeline_id: str | None
    stage: str | None
    depends_on: list[str]
    message: str | None
    attempts: int
    max_retries: int
    result: dict[str, Any] | None
    ray_submission_id: str | None
    dashboard_url: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int
    next_cursor: str | None = None


class MetricRecord(Strict):
    step: int = Field(ge=0)
    name: str = Field(min_length=1, max_length=100)
    value: float
    time: float


class MetricsIngest(Strict):
    records: list[MetricRecord] = Field(max_length=10_000)


class MetricsPublic(BaseModel):
    job_id: str
    records: list[MetricRecord]


class StageCreate(Strict):
    name: str = Field(pattern=r"^\w[\w-]*$", max_length=100)
    kind: JobKind
    spec: dict[str, Any]
    after: list[str] = Field(default_factory=list, description="names of parent stages")


class PipelineCreate(Strict):
    name: str = Field(max_length=200)
    stages: list[StageCreate] = Field(min_length=1, max_length=100)


class PipelinePublic(BaseModel):
    id: str
    name: str
    state: str
    created_at: datetime
    jobs: list[JobPublic]
