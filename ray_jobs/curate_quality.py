"""The quality classifier with ``top_fraction``: a cut over the whole corpus, on Ray Data.

Every kept document is scored in parallel; the kept (score, order) pairs are sorted by Ray Data
(score high to low, then input order) and streamed through the driver, which only counts to the
cut and holds one batch at a time; then every block applies the cut. The ranking breaks ties by
input order, so the same input and spec reject the same documents in every run.
"""

from __future__ import annotations

from functools import partial

import pyarrow as pa
import ray.data
from ray.data.expressions import col

from llm.data.quality import load_model
from llm.data.quality_filter import (
    QUALITY_SCORE,
    QualityClassifierFilter,
    reject_below_cut,
    top_fraction_count,
    top_fraction_cut,
)
from llm.data.schema import REASON
from ray_jobs.curate_parts import ORDER
from ray_jobs.curate_spec import CurateSpec, QualityClassifierStep
from ray_jobs.entrypoint import JobError

_RANK_BATCH_ROWS = 65_536


def check_quality_models(spec: CurateSpec) -> None:
    """Fail before anything runs when a quality model is missing, unreadable or lacks its
    label, with a message that names the path."""
    for step in spec.steps:
        if isinstance(step, QualityClassifierStep):
            try:
                load_model(step.model_path, step.label)
            except (OSError, ValueError) as e:
                raise JobError(f"quality_classifier step: {e}") from e


def _score(batch: pa.Table, step: QualityClassifierStep) -> pa.Table:
    # The model itself is cached per worker process by llm.data.quality.load_model.
    return QualityClassifierFilter(step.model_path, step.label).apply(batch)


def quality_top_fraction(ds: ray.data.Dataset, step: QualityClassifierStep) -> ray.data.Dataset:
    """``ds`` scored, with all but the top ``step.top_fraction`` of kept rows rejected."""
    assert step.top_fraction is not None  # the spec routes only top-fraction steps here
    scored = ds.map_batches(partial(_score, step=step), batch_format="pyarrow").materialize()
    kept = scored.filter(expr=col(REASON).is_null()).select_columns([QUALITY_SCORE, ORDER])
    total = kept.count()
    keep = top_fraction_count(total, step.top_fraction)
    if keep == total:
        return scored
    ranked = kept.sort([QUALITY_SCORE, ORDER], descending=[True, False])
    batches = ranked.iter_batches(batch_size=_RANK_BATCH_ROWS, batch_format="pyarrow")
    cut = top_fraction_cut(batches, keep, ORDER)
    return scored.map_batches(
        partial(reject_below_cut, cut=cut, order=ORDER), batch_format="pyarrow"
    )
