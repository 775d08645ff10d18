"""Per-document curation steps: spec → llm.data block, and a timed, counted run over a batch.

Each step's funnel is measured on the rows still kept when the step starts: documents and bytes
in, kept and removed per reason, plus the seconds spent in the block. Counts from many batches
(and parts) add up with ``merge_step_stats``.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from llm.data.c4 import DEFAULT_WORD_LISTS, C4BadWordsFilter, C4QualityFilter
from llm.data.decontam import DecontaminationFilter, NgramIndex
from llm.data.filters import GopherQualityFilter, LengthFilter
from llm.data.fineweb import FineWebQualityFilter
from llm.data.langid import LanguageFilter
from llm.data.normalize import Normalizer
from llm.data.pii import PIIRedactor
from llm.data.quality_filter import QualityClassifierFilter
from llm.data.repetition import GopherRepetitionFilter
from llm.data.schema import REASON, TEXT
from ray_jobs.curate_spec import (
    C4BadWordsStep,
    C4QualityStep,
    CurateStep,
    DecontaminateStep,
    EvalSet,
    FineWebQualityStep,
    GopherQualityStep,
    GopherRepetitionStep,
    LanguageStep,
    LengthStep,
    NormalizeStep,
    PIIStep,
    QualityClassifierStep,
    is_corpus_step,
)

StepStats = dict[str, Any]


class Block(Protocol):
    def apply(self, batch: pa.Table) -> pa.Table: ...


@runtime_checkable
class EditingBlock(Block, Protocol):
    """A block that edits text as well as (or instead of) removing documents, and counts its
    edits for the funnel (PII redaction: documents touched, matches per type)."""

    def funnel(self, batch: pa.Table) -> dict[str, Any]: ...


def _params(step: Any) -> dict[str, Any]:
    return dict(step.model_dump(exclude={"kind"}))


def _eval_texts(eval_set: EvalSet) -> Iterator[str]:
    """One text per line: the named JSONL fields joined, or the line itself for plain text."""
    opener = gzip.open if eval_set.path.endswith(".gz") else open
    is_jsonl = eval_set.path.removesuffix(".gz").endswith((".jsonl", ".json"))
    with opener(eval_set.path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            if not is_jsonl:
                yield line
                continue
            record = json.loads(line)
            values = [record.get(name) for name in eval_set.fields]
            yield " ".join(_flatten(value) for value in values if value is not None)


def _flatten(value: Any) -> str:
    # ARC-style records nest their choices; every string inside counts as eval text.
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_flatten(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_flatten(v) for v in value)
    return str(value)


def _decontaminator(step: DecontaminateStep) -> DecontaminationFilter:
    indexes = [NgramIndex(s.name, _eval_texts(s), n=step.n) for s in step.eval_sets]
    return DecontaminationFilter(indexes, reject=step.reject)


def build_block(step: CurateStep) -> Block:
    """The llm.data block a per-document step runs."""
    if isinstance(step, NormalizeStep):
        return Normalizer(**_params(step))
    if isinstance(step, LengthStep):
        return LengthFilter(**_params(step))
    if isinstance(step, GopherQualityStep):
        return GopherQualityFilter(**_params(step))
    if isinstance(step, GopherRepetitionStep):
        return GopherRepetitionFilter(**_params(step))
    if isinstance(step, C4QualityStep):
        return C4QualityFilter(**_params(step))
    if isinstance(step, C4BadWordsStep):
        lists = {k: Path(v) for k, v in (step.word_lists or DEFAULT_WORD_LISTS).items()}
        return C4BadWordsFilter(**(_params(step) | {"word_lists": lists}))
    if isinstance(step, FineWebQualityStep):
        return FineWebQualityFilter(**_params(step))
    if isinstance(step, LanguageStep):
        path = Path(step.model_path) if step.model_path else None
        return LanguageFilter(languages=step.languages, threshold=step.threshold, model_path=path)
    if isinstance(step, PIIStep):
        return PIIRedactor(types=step.types)
    if isinstance(step, DecontaminateStep):
        return _decontaminator(step)
    if isinstance(step, QualityClassifierStep):
        return QualityClassifierFilter(step.model_path, step.label, step.threshold)
    raise ValueError(f"step {step.kind!r} is not a per-document step")


def document_steps(steps: list[CurateStep]) -> list[CurateStep]:
    """The steps that run on each document alone (everything before the corpus steps)."""
    return [step for step in steps if not is_corpus_step(step)]


def _kept_funnel(batch: pa.Table) -> tuple[list[bool], list[int]]:
    kept = pc.is_null(batch.column(REASON)).to_pylist()
    sizes = pc.fill_null(pc.binary_length(batch.column(TEXT)), 0).to_pylist()
    return kept, sizes


def empty_step_stats(kind: str) -> StepStats:
    zero = {"documents": 0, "bytes": 0}
    return {"step": kind, "in": dict(zero), "kept": dict(zero), "removed": {}, "seconds": 0.0}


def _step_stats(kind: str, before: pa.Table, after: pa.Table, seconds: float) -> StepStats:
    stats = empty_step_stats(kind)
    kept_before, sizes_before = _kept_funnel(before)
    kept_after, sizes_after = _kept_funnel(after)
    reasons = after.column(REASON).to_pylist()
    for row, was_kept in enumerate(kept_before):
        if not was_kept:
            continue
        stats["in"]["documents"] += 1
        stats["in"]["bytes"] += sizes_before[row]
        bucket = (
            stats["kept"]
            if kept_after[row]
            else stats["removed"].setdefault(reasons[row], {"documents": 0, "bytes": 0})
        )
        bucket["documents"] += 1
        bucket["bytes"] += sizes_after[row]
    stats["seconds"] = seconds
    return stats


def apply_blocks(
    batch: pa.Table, steps: list[CurateStep], blocks: list[Block]
) -> tuple[pa.Table, list[StepStats]]:
    """Run every block in order; the batch and each step's funnel for this batch."""
    stats: list[StepStats] = []
    for step, block in zip(steps, blocks, strict=True):
        started = time.perf_counter()
        after = block.apply(batch)
        step_stats = _step_stats(step.kind, batch, after, time.perf_counter() - started)
        if isinstance(block, EditingBlock):
            step_stats |= block.funnel(after)
        stats.append(step_stats)
        batch = after
    return batch, stats


def _sum_nested(a: Any, b: Any) -> Any:
    """Numbers added; dicts added key by key, a key on one side only kept as it is."""
    if not isinstance(a, dict):
        return a + b
    keys = sorted(a.keys() | b.keys())
    return {k: _sum_nested(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k)) for k in keys}


def merge_step_stats(a: StepStats, b: StepStats) -> StepStats:
    """The sum of two funnels of the same step (in, kept, removed per reason, seconds, and
    what an editing step counted)."""
    counts = _sum_nested(
        {k: v for k, v in a.items() if k != "step"}, {k: v for k, v in b.items() if k != "step"}
    )
    return {"step": a["step"], **counts}
