"""A curation ablation as one experiment: datasets that differ only in curation, one tokenizer,
the same model and token budget, several seeds, the same evaluation — expanded into a pipeline.

FineWeb's and DCLM's evidence for their curation is this experiment at equal compute. From one
raw corpus and the full list of curation steps, the arms are:

- ``raw``: exact dedup only (the baseline every difference is measured against);
- ``full``: every step;
- with ``grid``, ``full`` minus one group at a time: ``no_heuristics`` (the heuristic filters),
  ``no_language`` (language ID), ``no_minhash`` (MinHash dedup), ``no_quality`` (the quality
  classifier) — each only where the steps hold that group.

Each arm is curated and tokenized with one tokenizer: the one named, else one trained on the raw
arm (the corpus every arm derives from, so no arm's curation shapes the vocabulary). Each arm
then trains the same model for the same steps (so the same tokens) once per seed, and every
model is evaluated on the same tasks: by default bits-per-byte on held-out clean text no arm
trained on (WikiText-2's test articles) and the multiple-choice sets. A last ``compare`` stage
writes the table (differences from ``raw`` with standard errors across seeds), the validation
curves of every run on one chart, and the result. Every stage is an ordinary pipeline job, so
every dataset and model is in the registry with its lineage.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from contracts.curate_steps import CurateStep
from contracts.spec_base import OutputUri, Spec, Uri, UriOrName
from llm import storage

BASELINE = "raw"
FULL = "full"
# The groups a grid leaves out one at a time, by the step kinds that make them up.
GROUPS: dict[str, tuple[str, ...]] = {
    "heuristics": (
        "length",
        "gopher_quality",
        "gopher_repetition",
        "c4_quality",
        "c4_badwords",
        "fineweb_quality",
    ),
    "language": ("language",),
    "minhash": ("minhash_dedup",),
    "quality": ("quality_classifier",),
}
RAW_STEPS = ("exact_dedup",)
DEFAULT_TASKS = ("wikitext2", "blimp", "hellaswag", "arc_easy")
# settings the experiment owns in every train and evaluate stage
_CURATE_OWNED = ("input", "output", "steps")
_TRAIN_OWNED = ("data", "output", "seed")
_EVAL_OWNED = ("checkpoint", "tokenizer", "output", "tasks")


class AblationSpec(Spec):
    """``llmforge experiment ablation SPEC`` and ``POST /api/v1/experiments/ablation``."""

    kind_name: ClassVar[str] = "ablation"

    name: str = Field(default="ablation", max_length=200)
    corpus: Uri = Field(description="the raw corpus every arm is curated from")
    output: OutputUri | None = Field(
        default=None,
        description="where every stage writes (<output>/<stage>); default: the pipeline's "
        "folder in the team's area",
    )
    curate: dict[str, Any] = Field(
        default_factory=dict,
        description="curate spec settings shared by every arm (input_format, text_field, "
        "parts_per_file…); input, output and steps are the experiment's",
    )
    steps: list[CurateStep] = Field(
        min_length=1, description="the full curation, as a curate spec's steps (the full arm)"
    )
    grid: bool = Field(
        default=False, description="also the full curation minus one group at a time"
    )
    seeds: list[int] = Field(
        default=[0, 1], min_length=1, max_length=10, description="one training run per seed"
    )
    tokenizer: Uri | None = Field(
        default=None, description="a tokenizer.json for every arm; default: trained on raw"
    )
    vocab_size: int = Field(default=4096, ge=256, le=262_144)
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="train spec settings shared by every run (model, steps, batch_size, lr, "
        "workers…); data, output and seed are the experiment's",
    )
    tasks: list[UriOrName] = Field(
        default=list(DEFAULT_TASKS),
        min_length=1,
        description="evaluation tasks every model is scored on (held-out bits-per-byte first)",
    )
    evaluate: dict[str, Any] = Field(
        default_factory=lambda: {"limit": 200},
        description="evaluate spec settings shared by every run (limit, workers, batch_size…)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> AblationSpec:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        kinds = [s.kind for s in self.steps]
        if "exact_dedup" not in kinds:
            raise ValueError(
                "steps: the full curation must include exact_dedup (the raw arm is exact "
                "dedup only, so every arm is deduplicated the same way at least)"
            )
        owned_by = (("curate", _CURATE_OWNED), ("train", _TRAIN_OWNED), ("evaluate", _EVAL_OWNED))
        for section, owned in owned_by:
            given = sorted(set(getattr(self, section)) & set(owned))
            if given:
                raise ValueError(f"{section}: {', '.join(given)} are set by the experiment")
        return self

    def arms(self) -> dict[str, list[dict[str, Any]]]:
        """Arm name -> its curate steps (as dumped step dicts), ``raw`` first."""
        full = [
            {"kind": s.kind, **s.model_dump(mode="json", exclude_unset=True)} for s in self.steps
        ]
        arms = {
            BASELINE: [s for s in full if s["kind"] in RAW_STEPS],
            FULL: full,
        }
        if self.grid:
            for group, kinds in GROUPS.items():
                if any(s["kind"] in kinds for s in full):
                    arms[f"no_{group}"] = [s for s in full if s["kind"] not in kinds]
        return arms

    def pipeline(self) -> dict[str, Any]:
        """The experiment as a pipeline body (``POST /api/v1/pipelines``)."""
        root = self.output

        def out(stage: str) -> dict[str, str]:
            return {"output": storage.join(root, stage)} if root else {}

        stages: list[dict[str, Any]] = []
        arms = self.arms()
        for arm, steps in arms.items():
            curate = {**self.curate, "input": self.corpus, "steps": steps, **out(f"curate_{arm}")}
            stages.append({"name": f"curate_{arm}", "kind": "curate", "spec": curate})
        tokenizer = self.tokenizer or f"${{tokenize_{BASELINE}.output}}/tokenizer.json"
        for arm in arms:
            spec: dict[str, Any] = {"input": f"${{curate_{arm}.output}}", **out(f"tokenize_{arm}")}
            after = [f"curate_{arm}"]
            if self.tokenizer or arm != BASELINE:
                spec["tokenizer"] = tokenizer
                after += [] if self.tokenizer else [f"tokenize_{BASELINE}"]
            else:
                spec["vocab_size"] = self.vocab_size
            stages.append({"name": f"tokenize_{arm}", "kind": "tokenize", "after": after,
                           "spec": spec})  # fmt: skip
        runs: dict[str, dict[str, Any]] = {}
        for arm in arms:
            for seed in self.seeds:
                run = f"{arm}_s{seed}"
                train = {
                    **self.train,
                    "data": f"${{tokenize_{arm}.output}}",
                    "seed": seed,
                    **out(f"train_{run}"),
                }
                evaluate = {
                    **self.evaluate,
                    "checkpoint": f"${{train_{run}.output}}",
                    "tokenizer": f"${{tokenize_{arm}.output}}",
                    "tasks": list(self.tasks),
                    **out(f"evaluate_{run}"),
                }
                stages += [
                    {"name": f"train_{run}", "kind": "train", "after": [f"tokenize_{arm}"],
                     "spec": train},
                    {"name": f"evaluate_{run}", "kind": "evaluate",
                     "after": [f"train_{run}", f"tokenize_{arm}"],
                     "spec": evaluate},
                ]  # fmt: skip
                runs[run] = {
                    "arm": arm,
                    "seed": seed,
                    "train": f"${{train_{run}.output}}",
                    "evaluate": f"${{evaluate_{run}.output}}",
                }
        # the table's columns in the spec's order: a task named by file has its file's name
        names = [
            t.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml") for t in self.tasks
        ]
        compare = {"baseline": BASELINE, "runs": runs, "tasks": names, **out("compare")}
        after = [f"{kind}_{run}" for run in runs for kind in ("train", "evaluate")]
        stages.append({"name": "compare", "kind": "compare", "after": after, "spec": compare})
        return {"name": self.name, "stages": stages}
