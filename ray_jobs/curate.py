"""Curate a corpus on Ray Data: read, run per-document steps, dedup, write Parquet.

Phase 1 runs each input part (file × part index) as one task: read (JSONL, Parquet, WARC, WET;
local or s3://), run the per-document steps in the spec's order, write ``_parts/<key>.parquet``
and then the completion marker ``_done/<key>.json``; a rerun skips parts with a marker.
Phase 2 reads every part file and runs the corpus steps over the whole corpus (exact dedup,
MinHash dedup, a top-fraction quality cut; in the spec's order), then writes kept rows to
``data/``, the rest to ``rejected/`` with their reason, and the funnel per step to
``stats.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.data
from ray.data.context import ShuffleStrategy
from ray.data.expressions import col

from llm.data.dedup import (
    DUPLICATE_OF,
    EXACT_DUPLICATE,
    TEXT_HASH,
    add_text_hash,
    mark_exact_duplicates,
)
from llm.data.minhash import FUZZY_DUPLICATE
from llm.data.quality_filter import QUALITY_REJECTED
from llm.data.readers import list_input_files
from llm.data.schema import REASON, set_column
from llm.data.sources import is_remote
from llm.data.stats import Counts
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray
from ray_jobs.curate_blocks import StepStats, empty_step_stats
from ray_jobs.curate_fuzzy import minhash_dedup
from ray_jobs.curate_output import write_outputs
from ray_jobs.curate_parts import (
    PARTS_DIR,
    Part,
    load_marker,
    phase_one_stats,
    plan_parts,
    run_part,
)
from ray_jobs.curate_quality import check_quality_models, quality_top_fraction
from ray_jobs.curate_shuffle import map_shards
from ray_jobs.curate_spec import (
    CurateSpec,
    ExactDedupStep,
    MinHashDedupStep,
    QualityClassifierStep,
    is_corpus_step,
)
from ray_jobs.entrypoint import JobError, local_path
from ray_jobs.reporting import MetricsReporter

CORPUS_REASONS = {
    "exact_dedup": EXACT_DUPLICATE,
    "minhash_dedup": FUZZY_DUPLICATE,
    "quality_classifier": QUALITY_REJECTED,
}


def _run_part_row(row: dict[str, Any], *, spec: CurateSpec, out: str) -> dict[str, Any]:
    return {"marker": json.dumps(run_part(Part(**row), spec, out))}


def phase_one(parts: list[Part], spec: CurateSpec, out: Path) -> tuple[list[dict[str, Any]], int]:
    """Every part's marker, running the parts without one; and how many were skipped."""
    markers = {part.sequence: load_marker(part, spec, str(out)) for part in parts}
    todo = [asdict(part) for part in parts if markers[part.sequence] is None]
    if todo:
        tasks = ray.data.from_items(todo, override_num_blocks=len(todo))
        done = tasks.map(partial(_run_part_row, spec=spec, out=str(out))).take_all()
        for row in done:
            marker = json.loads(row["marker"])
            markers[marker["part"]["sequence"]] = marker
    ordered = [markers[part.sequence] for part in parts]
    return [m for m in ordered if m is not None], len(parts) - len(todo)


def _no_duplicate_of(batch: pa.Table) -> pa.Table:
    # Rejected rows never took part in dedup; the column is added so both sides share a schema.
    if DUPLICATE_OF in batch.column_names:
        return batch
    return set_column(batch, DUPLICATE_OF, pa.nulls(batch.num_rows, pa.string()))


def exact_dedup(ds: ray.data.Dataset, shards: int) -> ray.data.Dataset:
    hashed = ds.map_batches(add_text_hash, batch_format="pyarrow")
    rejected = hashed.filter(expr=col(REASON).is_not_null()).map_batches(
        _no_duplicate_of, batch_format="pyarrow"
    )
    candidates = hashed.filter(expr=col(REASON).is_null())
    return rejected.union(map_shards(candidates, TEXT_HASH, mark_exact_duplicates, shards))


def phase_two(
    ds: ray.data.Dataset, spec: CurateSpec, shards: int
) -> tuple[ray.data.Dataset, dict[str, float]]:
    """The corpus steps in spec order, each materialised so its seconds can be measured."""
    seconds: dict[str, float] = {}
    for step in filter(is_corpus_step, spec.steps):
        started = time.perf_counter()
        if isinstance(step, ExactDedupStep):
            ds = exact_dedup(ds, shards)
        elif isinstance(step, MinHashDedupStep):
            ds = minhash_dedup(ds, step, shards)
        elif isinstance(step, QualityClassifierStep):
            ds = quality_top_fraction(ds, step)
        ds = ds.materialize()
        seconds[step.kind] = time.perf_counter() - started
    return ds, seconds


def _corpus_stats(
    kept_before: dict[str, int],
    funnel: Counts,
    seconds: dict[str, float],
    doc_steps: list[StepStats],
) -> list[StepStats]:
    """Corpus-step funnels: each step's removals are the final count of its reason less what
    per-document steps removed for the same reason (a quality threshold and a top-fraction cut
    share one); its input is what the steps before it kept."""
    stats = []
    current = dict(kept_before)
    for kind, spent in seconds.items():
        step = empty_step_stats(kind)
        reason = CORPUS_REASONS[kind]
        removed = dict(funnel["removed"].get(reason, {"documents": 0, "bytes": 0}))
        for earlier in doc_steps:
            for key, value in earlier["removed"].get(reason, {}).items():
                removed[key] -= value
        step["in"], step["seconds"] = dict(current), spent
        step["removed"] = {reason: removed} if removed["documents"] else {}
        current = {key: current[key] - removed[key] for key in ("documents", "bytes")}
        step["kept"] = dict(current)
        stats.append(step)
    return stats


def _input_files(spec: CurateSpec) -> list[str]:
    uri = spec.input if is_remote(spec.input) else str(local_path(spec.input))
    try:
        return list_input_files(uri, spec.input_format)
    except FileNotFoundError as e:
        raise JobError(f"input not found: {spec.input} ({e})") from e


def _shards() -> int:
    # A few shards per CPU: enough to spread a shuffle, few enough that tiny inputs stay fast.
    return max(2, int(ray.cluster_resources().get("CPU", 2)))


def run(spec: CurateSpec) -> dict[str, Any]:
    files = _input_files(spec)
    out = local_path(spec.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    reporter = MetricsReporter(out)
    started = time.time()
    check_quality_models(spec)
    init_ray()
    # Ray 2.60's hash shuffle concatenates an input's empty, column-less blocks with real ones
    # and fails ("Schema at index 1 was different"); the sort-based shuffle handles them.
    ray.data.DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    parts = plan_parts(files, spec)
    markers, skipped = phase_one(parts, spec, out)
    read, doc_steps = phase_one_stats(markers)
    paths = [str(out / PARTS_DIR / m["file"]) for m in markers if m["file"]]
    if not paths:
        raise JobError(f"no documents read from {spec.input}")
    ds, corpus_seconds = phase_two(ray.data.read_parquet(paths), spec, _shards())
    funnel = write_outputs(ds, out)
    kept_before = doc_steps[-1]["kept"] if doc_steps else read["kept"]
    stats = funnel | {
        "read": read,
        "steps": doc_steps + _corpus_stats(kept_before, funnel, corpus_seconds, doc_steps),
        "seconds": round(time.time() - started, 3),
        "input": spec.input,
        "files": len(files),
        "parts": len(parts),
        "parts_skipped": skipped,
    }
    redacted = [step["redacted"] for step in doc_steps if "redacted" in step]
    if redacted:  # what was edited rather than removed, beside the removals
        stats["redacted"] = redacted[0]
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    reporter.log(0, {"docs_in": stats["documents"], "docs_kept": stats["kept"]["documents"]})
    return {"stats": stats, "data": str(out / "data"), "rejected": str(out / "rejected")}


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(CurateSpec, run))
