"""Request and response bodies of the REST API (Create / Public, as in the FastAPI template)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from contracts.jobs import JobKind
from contracts.roots import RootError, normalise

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: object) -> object:
    """Only an RFC 3339 date-time with its offset: no bare dates, numbers or local times."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError(
            "give an RFC 3339 date-time with a time zone offset, e.g. 2026-01-31T12:00:00Z"
        )
    return value


# A time a client sends: timezone-aware (``Z`` or an offset), turned into UTC.
UtcTimestamp = Annotated[
    AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(lambda t: t.astimezone(UTC))
]


# Ids the store makes: 12 hexadecimal digits (older records: up to 32).
ID_PATTERN = r"^[0-9a-f]{1,32}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobCreate(Strict):
    kind: JobKind
    spec: dict[str, Any] = Field(description="the job kind's spec; see the *Spec schemas")
    name: str | None = Field(default=None, max_length=200)
    max_retries: int = Field(default=0, ge=0, le=10, description="automatic retries on failure")
    priority: int = Field(
        default=0, ge=-100, le=100, description="higher runs first within the team's queue"
    )


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
    owner: str | None
    team: str | None
    priority: int
    queue_position: int | None = Field(
        description="QUEUED jobs: place in the team's queue, 1 = next to run"
    )
    queued_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int
    next_cursor: str | None = None


class JobLogs(BaseModel):
    job_id: str
    logs: str = Field(description="the driver's output (the last ``tail`` lines if given)")


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


# --- datasets and models registry ---------------------------------------------------------------


class DatasetKind(StrEnum):
    documents = "documents"  # a curate job's output: data/ and rejected/ Parquet, stats.json
    token_shards = "token_shards"  # a tokenize job's output: manifest.json and shards
    raw = "raw"  # a corpus registered by hand, before curation


class ModelKind(StrEnum):
    checkpoint = "checkpoint"  # a train job's output folder with its checkpoints
    finetuned = "finetuned"  # a finetune job's output folder; its parent is the base model
    adapter = "adapter"  # a LoRA adapter (a finetune job's with method lora); parent: its base
    exported = "exported"  # a model exported elsewhere (e.g. Hugging Face format)


# A path segment: never '.' or '..', only characters that mean the same everywhere.
_SEGMENT = r"\.?[A-Za-z0-9_~+=,-][A-Za-z0-9_.~+=, -]*"
REGISTRY_URI = (
    rf"^((file://)?(/{_SEGMENT})+|s3://[a-z0-9][a-z0-9-]{{1,61}}[a-z0-9](/{_SEGMENT})*)/?$"
)


def _registry_uri(value: str) -> str:
    """Where a registered dataset or model is: the rules of a job spec's URIs, and the pattern
    published in the schema (so a schema-valid URI is an accepted one)."""
    if value.startswith("s3://") and "@" in value.removeprefix("s3://").split("/", 1)[0]:
        raise ValueError("credentials are not allowed in URIs: give s3://bucket/prefix")
    try:
        normalise(value)
    except RootError as e:
        raise ValueError(str(e)) from e
    if not re.match(REGISTRY_URI, value):
        raise ValueError(
            "an absolute path, file:///path or s3://bucket/key, with names of letters, digits, "
            "spaces and _ . ~ + = , - only (S3 buckets without dots)"
        )
    return value


RegistryUri = Annotated[
    str,
    AfterValidator(_registry_uri),
    Field(
        min_length=1,
        max_length=2000,
        json_schema_extra={"pattern": REGISTRY_URI},
        description="an absolute path, file:///path or s3://bucket/key; no '.' or '..' segments",
    ),
]


class ArtifactCreate(Strict):
    """Registering an artifact by hand (jobs register theirs when they succeed)."""

    name: str = Field(min_length=1, max_length=200)
    uri: RegistryUri = Field(
        description="where the files are: an absolute path, file:///path or s3://bucket/key (no "
        "'.' or '..' segments). It must lie under the caller's team's read roots (GET "
        "/api/v1/teams/{team}/roots: its area, the shared roots and its grants; symlinks "
        "resolved) and exist (a local file or folder, an S3 object or a prefix holding one); "
        "else a 422 at body.uri saying which rule failed and the team's roots."
    )
    parent_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="the id of a dataset or model this team sees (else a 422)",
    )
    inputs: list[RegistryUri] = Field(
        default_factory=list,
        max_length=100,
        description="what it was made from, for lineage only: checked like uri's form, but "
        "neither for roots nor existence (inputs may since have been deleted)",
    )
    stats: dict[str, Any] = Field(default_factory=dict)


class DatasetCreate(ArtifactCreate):
    kind: DatasetKind


class ModelCreate(ArtifactCreate):
    kind: ModelKind


class EvaluationPublic(BaseModel):
    id: str
    job_id: str | None
    checkpoint: str
    data: str | None
    metrics: dict[str, Any]
    created_at: datetime


class ArtifactPublic(BaseModel):
    id: str
    category: str
    kind: str
    name: str
    uri: str
    job_id: str | None = Field(description="the job that made it; null if registered by hand")
    parent_id: str | None = Field(description="the artifact it was made from")
    inputs: list[str]
    stats: dict[str, Any]
    owner: str | None
    team: str | None
    created_at: datetime
    evaluations: list[EvaluationPublic] | None = Field(
        default=None, description="models only: evaluate jobs' results, oldest first"
    )


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int
    next_cursor: str | None = None


class LineagePublic(BaseModel):
    artifact_id: str
    chain: list[ArtifactPublic] = Field(description="the artifact, its parent, … to the root")
    complete: bool = Field(description="false if an ancestor is hidden or no longer recorded")


# --- human ratings ------------------------------------------------------------------------------

Tag = Annotated[str, Field(min_length=1, max_length=50)]


class RatingCreate(Strict):
    prompt: str = Field(min_length=1, max_length=100_000)
    model_a: str = Field(min_length=1, max_length=200)
    model_b: str = Field(min_length=1, max_length=200)
    completion_a: str = Field(max_length=100_000)
    completion_b: str = Field(max_length=100_000)
    winner: Literal["a", "b", "tie"]
    task: str | None = Field(default=None, min_length=1, max_length=100)
    tags: list[Tag] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _two_models(self) -> RatingCreate:
        if self.model_a == self.model_b:
            raise ValueError("model_a and model_b must differ: a rating compares two models")
        return self


class RatingPublic(BaseModel):
    id: str
    prompt: str
    model_a: str
    model_b: str
    completion_a: str
    completion_b: str
    winner: str
    rater: str | None = Field(description="the API key that rated")
    team: str | None
    task: str | None
    tags: list[str]
    created_at: datetime


class RatingsPublic(BaseModel):
    data: list[RatingPublic]
    count: int
    next_cursor: str | None = None


class ModelRank(BaseModel):
    model: str
    games: int
    wins: int
    losses: int
    ties: int
    win_rate: float = Field(description="(wins + ties / 2) / games")
    elo: float = Field(description="median online Elo over bootstrap resamples")
    elo_in_order: float = Field(description="online Elo over the ratings in recorded order")
    elo_ci: tuple[float, float]
    bt: float = Field(description="Bradley–Terry MLE on the Elo scale (mean 1000)")
    bt_ci: tuple[float, float]


class Leaderboard(BaseModel):
    ratings: int
    k: float
    rounds: int
    seed: int
    confidence: float
    models: list[ModelRank]


class PreferenceRecord(BaseModel):
    """A rating as a DPO preference record (``FinetuneSpec`` method "dpo" reads these)."""

    prompt: str
    chosen: str
    rejected: str
    chosen_model: str
    rejected_model: str
    rating: str = Field(description="the rating's id")
    task: str | None


class Preferences(BaseModel):
    ratings: int = Field(description="matching ratings read")
    count: int = Field(description="preference records made from them")
    dropped: dict[str, int] = Field(
        description="ratings that make no record, by reason: tie, identical_completions, "
        "empty_completion"
    )
    truncated: bool = Field(description="more ratings match than limit")
    data: list[PreferenceRecord]


class PreferenceExport(Strict):
    output: str = Field(
        min_length=1,
        max_length=2000,
        description="the JSONL file to write: a path, file:// or s3:// URI under one of the "
        "team's write roots (a relative path: in the team's area)",
    )
    task: str | None = Field(default=None, min_length=1, max_length=100)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    team: str | None = Field(default=None, description="admins: one team's ratings only")


class PreferenceExportPublic(BaseModel):
    output: str = Field(description="where the records are: give it as a finetune spec's data")
    ratings: int
    count: int
    dropped: dict[str, int]


# --- teams --------------------------------------------------------------------------------------


def _not_a_boolean(value: object) -> object:
    """JSON's true and false are not numbers (pydantic would take them as 1 and 0); 444.0 is
    an integer to JSON Schema, and is taken."""
    if isinstance(value, bool):
        raise ValueError("give a whole number, not true or false")
    return value


class TeamLimitSet(Strict):
    max_running: Annotated[int, BeforeValidator(_not_a_boolean)] = Field(
        ge=0, le=10_000, description="0 pauses the team's queue"
    )


class TeamPublic(BaseModel):
    team: str
    max_running: int
    limit_source: Literal["team", "default"]
    running: int = Field(description="jobs PENDING or RUNNING on Ray")
    queued: int


class TeamRootSet(Strict):
    uri: str = Field(min_length=1, max_length=2000, description="a local folder or s3:// prefix")
    mode: Literal["read", "write"] = Field(description="write: the team's jobs may also write")


class TeamRootPublic(BaseModel):
    uri: str
    mode: Literal["read", "write"]
    created_at: datetime
    created_by: str | None


class TeamRootsPublic(BaseModel):
    team: str
    area: str = Field(description="the team's own area: read, written, the default output")
    shared: list[str] = Field(description="read-only roots of every team")
    shared_write: list[str] = Field(description="roots every team may read and write")
    granted: list[TeamRootPublic] = Field(description="roots an admin granted this team")
    read: list[str] = Field(description="where the team's jobs may read (normalised)")
    write: list[str] = Field(description="where the team's jobs may write (normalised)")
