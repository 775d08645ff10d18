"""The one table of job kinds: everything the control plane and the jobs agree on per kind.

Adding a job kind is a spec class, an entry module under ``ray_jobs/`` and one line here (plus a
registrar in ``services.job_outputs`` if it makes a new kind of artifact).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel

from contracts.compare import CompareSpec
from contracts.curate import CurateSpec
from contracts.results import (
    CompareResult,
    CurateResult,
    EvaluateResult,
    FinetuneResult,
    TokenizeResult,
    TrainResult,
    TuneResult,
)
from contracts.spec_base import Spec, UriPaths, uri_fields, uri_paths
from contracts.specs import (
    EvaluateSpec,
    FinetuneSpec,
    TokenizeSpec,
    TrainSpec,
    TuneSpec,
)


class JobKind(StrEnum):
    curate = "curate"
    tokenize = "tokenize"
    train = "train"
    evaluate = "evaluate"
    tune = "tune"
    finetune = "finetune"
    compare = "compare"


@dataclass(frozen=True)
class JobType:
    spec: type[Spec]
    # Run on Ray as ``python -m <entry_module> --spec URI``.
    entry_module: str
    # What a success adds to the registry (a registrar in services.job_outputs), or None.
    registers: str | None
    # What its result.json holds (contracts.results), for ``${stage.result.…}`` placeholders.
    result: type[BaseModel]

    @property
    def uri_fields(self) -> tuple[str, ...]:
        return uri_fields(self.spec)

    @property
    def uri_paths(self) -> UriPaths:
        """What the job reads and writes, nested fields included: checked against the team's
        storage roots on submit and again inside the job."""
        return uri_paths(self.spec)


JOB_TYPES: dict[JobKind, JobType] = {
    JobKind.curate: JobType(CurateSpec, "ray_jobs.curate", "documents", CurateResult),
    JobKind.tokenize: JobType(
        TokenizeSpec, "ray_jobs.tokenize_corpus", "token_shards", TokenizeResult
    ),
    JobKind.train: JobType(TrainSpec, "ray_jobs.train", "checkpoint", TrainResult),
    JobKind.evaluate: JobType(EvaluateSpec, "ray_jobs.evaluate", "evaluation", EvaluateResult),
    JobKind.tune: JobType(TuneSpec, "ray_jobs.tune", "checkpoint", TuneResult),
    JobKind.finetune: JobType(FinetuneSpec, "ray_jobs.finetune", "finetuned", FinetuneResult),
    JobKind.compare: JobType(CompareSpec, "ray_jobs.compare", None, CompareResult),
}
