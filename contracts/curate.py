"""The curate job's spec: where to read, how, and a declarative pipeline of steps, one per block
in ``llm.data.registry`` (the step models are generated in ``contracts.curate_steps``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from contracts.curate_steps import STEP_MODELS, CurateStep, Step, corpus_label
from contracts.spec_base import OutputUri, Spec, Uri
from llm.data.registry import BLOCKS

DEFAULT_STEPS = ("length", "gopher_quality", "exact_dedup")


def _corpus_step_names() -> str:
    """Every step that can run on the corpus, in words, for messages."""
    labels = sorted(corpus_label(b) for b in BLOCKS.values() if b.corpus_reason is not None)
    return f"{', '.join(labels[:-1])} and {labels[-1]}" if len(labels) > 1 else "".join(labels)


class CurateSpec(Spec):
    input: Uri = Field(description="a file or folder: a path, file:// or s3:// URI")
    output: OutputUri = Field(description="folder for data/, rejected/ and stats.json")
    input_format: Literal["jsonl", "parquet", "warc", "wet"] | None = Field(
        default=None, description="None: by each file's extension"
    )
    text_field: str = Field(default="text", description="JSONL/Parquet field holding the text")
    id_field: str | None = Field(default="id", description="None: the id is the position")
    source: str | None = Field(default=None, description="source label; defaults to file name")
    parts_per_file: int = Field(default=4, ge=1, le=1024, description="read tasks per input file")
    max_doc_bytes: int = Field(default=10_000_000, gt=0, description="larger records: malformed")
    steps: list[CurateStep] = Field(
        default_factory=lambda: [
            STEP_MODELS[kind].model_validate({"kind": kind}) for kind in DEFAULT_STEPS
        ]
    )

    def document_steps(self) -> list[Step]:
        """The steps that run on each document alone (everything before the corpus steps)."""
        return [step for step in self.steps if not step.on_corpus()]

    def corpus_steps(self) -> list[Step]:
        """The steps that need the whole corpus, in the spec's order."""
        return [step for step in self.steps if step.on_corpus()]

    @model_validator(mode="after")
    def _corpus_steps_come_last(self) -> CurateSpec:
        corpus_at = [i for i, step in enumerate(self.steps) if step.on_corpus()]
        if corpus_at and corpus_at[0] < len(self.steps) - len(corpus_at):
            raise ValueError(
                f"steps: {_corpus_step_names()} must come after every per-document step (they "
                "need the filtered corpus)"
            )
        corpus = [self.steps[i] for i in corpus_at]
        kinds = [step.kind for step in corpus]
        repeated = {corpus_label(step.block) for step in corpus if kinds.count(step.kind) > 1}
        if repeated:
            raise ValueError(f"steps: {sorted(repeated)} may appear once")
        return self
