"""The quality-classifier step: score kept documents with a fastText model from
``llm.data.quality`` and keep those above a threshold, or the top fraction of a whole corpus.

``quality_score`` is the model's probability of the positive label (DCLM's ``hq``). A threshold
is decided per document; a top fraction needs every score first, so a job scores the corpus,
finds the cut with ``top_fraction_cut`` over the ranking (score high to low, then input order,
so ties are broken the same way in every run) and applies it with ``reject_below_cut``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
from annotated_types import Gt, Le, MinLen

from llm.data.block import DESCRIPTION, READS_FILE, DocumentBlock, Fraction, Pattern
from llm.data.quality import POSITIVE, load_model, positive_scores
from llm.data.schema import REASON, TEXT, kept_mask, set_column, with_reasons

QUALITY_SCORE = "quality_score"
QUALITY_REJECTED = "quality_classifier"
Cut = tuple[float, int] | None  # (score, order) of the last document kept; None keeps none


@dataclass(frozen=True)
class QualityClassifierParams:
    """fastText quality classifier (as DCLM uses one), trained by ``llmforge quality-train``.

    Annotates ``quality_score`` (the probability of ``label``) and rejects, with reason
    ``quality_classifier``, documents scoring below ``threshold``, or all but the ``top_fraction``
    of the documents still kept across the whole corpus (ties: earlier input first). With a
    top fraction the step needs every score, so it runs with the dedup steps, after every
    per-document step.
    """

    model_path: Annotated[str, MinLen(1)] = field(
        metadata={
            DESCRIPTION: "a fastText .bin, a local path readable on every Ray node",
            READS_FILE: True,
        }
    )
    label: Annotated[str, Pattern(r"^\S+$")] = field(
        default=POSITIVE, metadata={DESCRIPTION: "the high-quality label"}
    )
    threshold: Fraction | None = field(default=None, metadata={DESCRIPTION: "keep scores >= this"})
    top_fraction: Annotated[float, Gt(0), Le(1)] | None = field(
        default=None, metadata={DESCRIPTION: "keep this share of the corpus, by score"}
    )

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.top_fraction is None):
            raise ValueError("quality_classifier: set exactly one of threshold and top_fraction")


class QualityClassifierFilter(DocumentBlock):
    """Annotates kept rows with ``quality_score``; with a threshold, rejects scores below it."""

    name = QUALITY_REJECTED
    kind = QUALITY_REJECTED
    Params = QualityClassifierParams
    corpus_reason = QUALITY_REJECTED
    corpus_when = "top_fraction"

    @classmethod
    def from_params(cls, params: QualityClassifierParams) -> QualityClassifierFilter:
        return cls(params.model_path, params.label, params.threshold)

    @classmethod
    def on_corpus(cls, params: QualityClassifierParams) -> bool:
        return params.top_fraction is not None

    @classmethod
    def preflight(cls, params: QualityClassifierParams) -> None:
        """The model loads and has the label (it is cached for the process that runs it)."""
        load_model(params.model_path, params.label)

    @classmethod
    def content_files(cls, params: QualityClassifierParams) -> list[str]:
        return [params.model_path]

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        label: str = POSITIVE,
        threshold: float | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.label = label
        self.threshold = threshold
        self._model: Any = None

    def scores(self, texts: list[str]) -> list[float]:
        """P(label) of each text; the model is loaded on first use (once per process)."""
        if self._model is None:
            self._model = load_model(self.model_path, self.label)
        return positive_scores(self._model, texts, self.label)

    def apply(self, batch: pa.Table) -> pa.Table:
        """Score kept rows (rows already removed keep what they had) and mark those below."""
        rows = [row for row, kept in enumerate(kept_mask(batch)) if kept]
        texts = batch.column(TEXT).to_pylist()
        scores = (
            batch.column(QUALITY_SCORE).to_pylist()
            if QUALITY_SCORE in batch.column_names
            else [None] * batch.num_rows
        )
        reasons: list[str | None] = [None] * batch.num_rows
        for row, score in zip(rows, self.scores([texts[r] for r in rows]), strict=True):
            scores[row] = score
            if self.threshold is not None and score < self.threshold:
                reasons[row] = QUALITY_REJECTED
        batch = set_column(batch, QUALITY_SCORE, pa.array(scores, type=pa.float64()))
        return with_reasons(batch, reasons)


def top_fraction_count(kept: int, fraction: float) -> int:
    """How many of ``kept`` documents the top ``fraction`` is: rounded to the nearest, halves
    up (so 0.3 of 10 is 3 despite 0.3 × 10 = 3.0000000000000004)."""
    return min(kept, math.floor(fraction * kept + 0.5))


def top_fraction_cut(ranked: Iterable[pa.Table], keep: int, order: str) -> Cut:
    """The (score, order) of the ``keep``-th document of a ranking streamed in batches.

    ``ranked`` holds the kept documents' ``quality_score`` and ``order`` columns sorted by score
    descending, then order ascending; only one batch is held at a time.
    """
    if keep <= 0:
        return None
    seen = 0
    for batch in ranked:
        if seen + batch.num_rows >= keep:
            row = keep - seen - 1
            return float(batch.column(QUALITY_SCORE)[row].as_py()), int(
                batch.column(order)[row].as_py()
            )
        seen += batch.num_rows
    raise ValueError(f"the ranking has {seen} documents, fewer than the {keep} to keep")


def reject_below_cut(batch: pa.Table, cut: Cut, order: str) -> pa.Table:
    """Reject kept rows ranked after ``cut``: a lower score, or the same score later in order."""
    kept = pc.is_null(batch.column(REASON))
    if cut is None:
        below = kept
    else:
        score, last = cut
        scores = batch.column(QUALITY_SCORE)
        after = pc.or_(
            pc.less(scores, score),
            pc.and_(pc.equal(scores, score), pc.greater(batch.column(order), last)),
        )
        below = pc.and_(kept, pc.fill_null(after, False))
    reasons = pc.if_else(below, QUALITY_REJECTED, pa.scalar(None, pa.string()))
    return with_reasons(batch, reasons.to_pylist())
