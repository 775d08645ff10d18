"""Phase 2 of a curate job: the corpus steps over the whole dataset, in the spec's order.

``CORPUS_RUNS`` says how each kind of corpus step runs on Ray Data; the blocks themselves (kind,
parameters, the reason they remove with) are declared in ``llm.data``:

- exact dedup: rows hashed per block, then grouped by hash so each group meets in one call;
- MinHash dedup: ``ray_jobs.curate.minhash``;
- the quality classifier with ``top_fraction``: every kept document is scored in parallel; the
  kept (score, order) pairs are sorted by Ray Data (score high to low, then input order) and
  streamed through the driver, which only counts to the cut and holds one batch at a time; then
  every block applies the cut. Ties break by input order, so the same input and spec reject the
  same documents in every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pyarrow as pa
import ray.data
from ray.data.expressions import col

from contracts.curate_steps import Step
from llm.data.dedup import DUPLICATE_OF, TEXT_HASH, ExactDedup, add_text_hash, mark_exact_duplicates
from llm.data.minhash import MinHashDedup
from llm.data.quality_filter import (
    QUALITY_SCORE,
    QualityClassifierFilter,
    QualityClassifierParams,
    reject_below_cut,
    top_fraction_count,
    top_fraction_cut,
)
from llm.data.schema import REASON, set_column
from ray_jobs.curate.minhash import minhash_dedup
from ray_jobs.curate.parts import ORDER
from ray_jobs.curate.shuffle import map_shards

_RANK_BATCH_ROWS = 65_536
# (the dataset so far, the step's parameters, shards for its shuffles) -> the dataset marked
CorpusRun = Callable[[ray.data.Dataset, Any, int], ray.data.Dataset]


def _no_duplicate_of(batch: pa.Table) -> pa.Table:
    # Rejected rows never took part in dedup; the column is added so both sides share a schema.
    if DUPLICATE_OF in batch.column_names:
        return batch
    return set_column(batch, DUPLICATE_OF, pa.nulls(batch.num_rows, pa.string()))


def exact_dedup(ds: ray.data.Dataset, params: object, shards: int) -> ray.data.Dataset:
    """``ds`` with every kept row but the first of each normalised text rejected."""
    hashed = ds.map_batches(add_text_hash, batch_format="pyarrow")
    rejected = hashed.filter(expr=col(REASON).is_not_null()).map_batches(
        _no_duplicate_of, batch_format="pyarrow"
    )
    candidates = hashed.filter(expr=col(REASON).is_null())
    return rejected.union(map_shards(candidates, TEXT_HASH, mark_exact_duplicates, shards))


def _score(batch: pa.Table, params: QualityClassifierParams) -> pa.Table:
    # The model itself is cached per worker process by llm.data.quality.load_model.
    return QualityClassifierFilter.from_params(params).apply(batch)


def quality_top_fraction(
    ds: ray.data.Dataset, params: QualityClassifierParams, shards: int
) -> ray.data.Dataset:
    """``ds`` scored, with all but the top ``params.top_fraction`` of kept rows rejected."""
    assert params.top_fraction is not None  # only a top fraction makes the step a corpus step
    scored = ds.map_batches(partial(_score, params=params), batch_format="pyarrow").materialize()
    kept = scored.filter(expr=col(REASON).is_null()).select_columns([QUALITY_SCORE, ORDER])
    total = kept.count()
    keep = top_fraction_count(total, params.top_fraction)
    if keep == total:
        return scored
    ranked = kept.sort([QUALITY_SCORE, ORDER], descending=[True, False])
    batches = ranked.iter_batches(batch_size=_RANK_BATCH_ROWS, batch_format="pyarrow")
    cut = top_fraction_cut(batches, keep, ORDER)
    return scored.map_batches(
        partial(reject_below_cut, cut=cut, order=ORDER), batch_format="pyarrow"
    )


CORPUS_RUNS: dict[str, CorpusRun] = {
    ExactDedup.kind: exact_dedup,
    MinHashDedup.kind: minhash_dedup,
    QualityClassifierFilter.kind: quality_top_fraction,
}


def run_corpus_steps(
    ds: ray.data.Dataset, steps: list[Step], shards: int
) -> tuple[ray.data.Dataset, list[tuple[str, str, float]]]:
    """The corpus steps in order, each materialised so its seconds can be measured; the dataset
    and (kind, the reason it removes with, seconds) of each step, for its funnel."""
    timings = []
    for step in steps:
        started = time.perf_counter()
        ds = CORPUS_RUNS[step.kind](ds, step.params(), shards).materialize()
        reason = step.block.corpus_reason
        assert reason is not None  # only blocks that remove on the corpus run here
        timings.append((step.kind, reason, time.perf_counter() - started))
    return ds, timings
