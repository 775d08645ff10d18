"""The contract every curation step fulfils, so a pipeline (and its job spec) is built from a
list of blocks rather than code that knows each one (datatrove's pipeline blocks work this way).

A block has a ``kind`` (the name a spec's step uses) and declares its parameters as a frozen
dataclass ``Params``: each field's type carries its constraints as ``annotated_types`` metadata
(``Ge``, ``Le``, ``MinLen``, ``Pattern`` below), its default is the published threshold, and
``metadata={DESCRIPTION: ...}`` explains it. ``ray_jobs`` generates the spec's pydantic models
from these declarations; checks across fields go in the dataclass's ``__post_init__``.

``DocumentBlock``: runs on each batch of documents alone; ``apply`` marks rows with a reason or
edits their text, and ``run`` times it and measures its funnel (plus ``funnel``'s extra counts).
``CorpusBlock``: needs the whole corpus at once (dedup); a job runs it as it distributes best.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, Self

import pyarrow as pa
from annotated_types import Ge, Le

from llm.data.stats import StepStats, step_stats

DESCRIPTION = "description"  # the key of a parameter's explanation in its field metadata
# Set in a parameter's field metadata when its value names a file the step reads: the curate
# spec declares it a ``Uri`` (contracts.curate_steps), so the control plane checks it.
READS_FILE = "reads_file"


@dataclass(frozen=True)
class Pattern:
    """A string parameter's constraint: the whole value matches ``regex``."""

    regex: str


Fraction = Annotated[float, Ge(0), Le(1)]


class Block:
    """What every step declares: its kind, its parameters, and when it needs the corpus."""

    kind: ClassVar[str]
    Params: ClassVar[type[Any]]
    # The reason a run over the corpus removes documents with; None: never runs on the corpus.
    corpus_reason: ClassVar[str | None] = None
    # The parameter that moves a step to the corpus when it is set ("" for always), for messages.
    corpus_when: ClassVar[str] = ""

    @classmethod
    def on_corpus(cls, params: Any) -> bool:
        """Whether the step, with these parameters, needs the whole corpus at once."""
        return False

    @classmethod
    def preflight(cls, params: Any) -> None:
        """Raise OSError or ValueError, naming the file, when an input the step reads is missing
        or unusable, so a job fails before any work rather than in every task."""

    @classmethod
    def content_files(cls, params: Any) -> list[str]:
        """Files whose content decides the step's output, beyond its parameters (a model), so
        a changed file at the same path is not taken for the same step."""
        return []


class DocumentBlock(Block, ABC):
    """A step that decides each document alone, so it runs batch by batch anywhere."""

    @classmethod
    def from_params(cls, params: Any) -> Self:
        """The block for a ``Params`` instance; blocks whose parameters need resolving (files to
        read, paths) override this, the rest take the fields as keyword arguments."""
        return cls(**{field.name: getattr(params, field.name) for field in fields(params)})

    @abstractmethod
    def apply(self, batch: pa.Table) -> pa.Table:
        """``batch`` with failing kept rows marked (and, for editing steps, text changed); rows
        removed earlier are left as they are, and no row is dropped."""

    def funnel(self, batch: pa.Table) -> dict[str, Any]:
        """Counts beyond documents kept and removed (``batch`` is this block's output): what an
        editing step changed. Numbers and nested dicts of numbers, so batches add up."""
        return {}

    def run(self, batch: pa.Table) -> tuple[pa.Table, StepStats]:
        """``apply``, and this batch's funnel for the step: its counts and seconds."""
        started = time.perf_counter()
        after = self.apply(batch)
        stats = step_stats(self.kind, batch, after, time.perf_counter() - started)
        return after, stats | self.funnel(after)


class CorpusBlock(Block):
    """A step over the whole corpus at once (dedup): only its parameters live here; the job
    that distributes the corpus runs it."""

    @classmethod
    def on_corpus(cls, params: Any) -> bool:
        return True
