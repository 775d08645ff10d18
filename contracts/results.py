"""What each job kind's ``result.json`` holds, for pipeline placeholders that read it.

A pipeline stage may take a value from a parent's result, ``${tune.result.best_config.lr}``, as
well as from its spec, ``${tokenize.output}``. The path is checked against these models when the
pipeline is created (a 422 naming a field the parent's kind does not report), and the value is
read from the parent's stored result when the stage is about to run.

A model whose ``extra`` is ``"allow"`` is open: its declared fields are what is always there,
and any other name may be there too (an evaluate job reports one metric per task), so a path
through it is only checked when it runs. Fields typed ``dict``, ``list`` or ``Any`` end the check
the same way.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict


class Closed(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CurateResult(Closed):
    stats: dict[str, Any]
    data: str
    rejected: str
    nodes: list[str]


class TokenizeResult(Closed):
    stats: dict[str, Any]
    manifest: str
    nodes: list[str]


class Budget(Closed):
    tokens: int | None
    flops: float | None
    tokens_per_step: int
    steps: int


class BestCheckpoint(Open):
    """best.json of the checkpoints folder: the kept checkpoint with the lowest val_loss."""

    path: str


class SourceUsage(Closed):
    """What one source gave a mixed run: tokens read (whole windows), epochs over its train
    windows, the windows drawn and the windows it holds."""

    tokens: int
    epochs: float
    windows: int
    windows_held: int


class MixtureResult(Closed):
    """A mixed run's shares: as asked, as drawn after the repetition cap (``capped`` names the
    sources held back), as realised (token shares over every rank), and per source."""

    requested: dict[str, float]
    target: dict[str, float]
    capped: list[str]
    realised: dict[str, float]
    sources: dict[str, SourceUsage]


class TrainResult(Closed):
    steps: int
    tokens_seen: int
    first_loss: float | None
    final_loss: float | None
    last: dict[str, Any]
    checkpoint: str | None
    best_checkpoint: BestCheckpoint | None
    parameters: int
    nodes: list[str]
    budget: Budget
    mixture: MixtureResult | None = None


class FinetuneResult(Open):
    steps: int
    final_loss: float | None
    checkpoint: str | None


class CompareResult(Closed):
    """Per arm and metric: mean, stderr, seeds, and the difference from the baseline."""

    baseline: str
    arms: dict[str, Any]
    metrics: list[str]
    table: str
    chart: str | None


class EvaluateResult(Open):
    """Validation loss and perplexity when data was scored, one entry per task, a sample:
    what is there depends on the spec."""


class TuneConfig(Closed):
    """One trial's sampled hyperparameters (``ray_jobs.tune.search_space``)."""

    lr: float
    batch_size: int
    weight_decay: float
    dropout: float
    warmup_steps: int
    beta2: float
    optimizer: str


class TuneResult(Closed):
    metric: str
    mode: str
    best_config: TuneConfig
    best_val_loss: float
    best_trial: str
    # the last checkpoint of the best trial that ran every step (ASHA's stopped trials have
    # none), registered as a model; None when no trial ran to the end
    best_checkpoint: str | None
    best_checkpoint_trial: str | None
    trials: list[dict[str, Any]]
    stopped_early: int
    failed: int
    nodes: list[str]


def path_error(model: type[BaseModel], path: list[str]) -> str | None:
    """Why ``path`` cannot be in a result shaped like ``model``, or None when it may be."""
    current: Any = model
    for depth, name in enumerate(path):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None  # a dict, list or scalar: checked when the stage runs
        fields = current.model_fields
        if name not in fields:
            if current.model_config.get("extra") == "allow":
                return None
            where = ".".join(["result", *path[:depth]])
            return f"{where} has no field {name!r}; it has: {', '.join(sorted(fields))}"
        current = _bare(fields[name].annotation)
    return None


def _bare(annotation: Any) -> Any:
    """``X | None`` -> ``X``; other annotations as they are."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation
