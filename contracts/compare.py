"""The compare job's spec: runs of several arms (each a train output and its evaluation),
tabulated against a baseline arm, with every run's validation curve on one chart."""

from __future__ import annotations

from pydantic import Field, model_validator

from contracts.spec_base import OutputUri, Spec, Uri


class CompareRun(Spec):
    arm: str = Field(pattern=r"^\w[\w-]*$", max_length=100)
    seed: int = 0
    train: Uri = Field(description="the run's train output (result.json, metrics.jsonl)")
    evaluate: Uri = Field(description="its evaluate output (eval.json)")


class CompareSpec(Spec):
    """``compare``: a table of every arm's evaluation (mean over its seeds, the standard error
    across seeds) and its difference from ``baseline``; the validation curves as a PNG."""

    output: OutputUri
    baseline: str = Field(description="the arm every difference is measured against")
    runs: dict[str, CompareRun] = Field(min_length=1, description="run name -> its outputs")
    tasks: list[str] = Field(
        default_factory=list,
        description="the table's task columns in this order (then any other task evaluated)",
    )

    @model_validator(mode="after")
    def _baseline_ran(self) -> CompareSpec:
        arms = sorted({r.arm for r in self.runs.values()})
        if self.baseline not in arms:
            raise ValueError(f"baseline {self.baseline!r} is none of the runs' arms: {arms}")
        seen: set[tuple[str, int]] = set()
        for name, run in self.runs.items():
            if (run.arm, run.seed) in seen:
                raise ValueError(f"runs: {name} repeats arm {run.arm!r} with seed {run.seed}")
            seen.add((run.arm, run.seed))
        return self
