"""The curate job: plan the input parts, run phase 1 (``parts``) as Ray tasks, phase 2
(``corpus``) over the whole corpus, then write the outputs (``output``) and ``stats.json``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import ray
import ray.data
from ray.data.context import ShuffleStrategy

from contracts.curate import CurateSpec
from llm.data.readers import list_input_files
from llm.data.sources import is_remote
from llm.data.stats import Counts, StepStats, corpus_step_stats, extra_counts
from ray_jobs.cluster import init_ray
from ray_jobs.curate.corpus import run_corpus_steps
from ray_jobs.curate.output import write_outputs
from ray_jobs.curate.parts import (
    PARTS_DIR,
    Part,
    load_marker,
    phase_one_stats,
    plan_parts,
    run_part,
)
from ray_jobs.entrypoint import JobError, local_path
from ray_jobs.reporting import MetricsReporter


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


def _input_files(spec: CurateSpec) -> list[str]:
    uri = spec.input if is_remote(spec.input) else str(local_path(spec.input))
    try:
        return list_input_files(uri, spec.input_format)
    except FileNotFoundError as e:
        raise JobError(f"input not found: {spec.input} ({e})") from e


def _preflight(spec: CurateSpec) -> None:
    """Fail before anything runs when a file a step reads (a quality model) is missing or
    unusable, with a message that names the step and the path."""
    for step in spec.steps:
        try:
            step.block.preflight(step.params())
        except (OSError, ValueError) as e:
            raise JobError(f"{step.kind} step: {e}") from e


def _shards() -> int:
    # A few shards per CPU: enough to spread a shuffle, few enough that tiny inputs stay fast.
    return max(2, int(ray.cluster_resources().get("CPU", 2)))


def _funnel_steps(
    read: Counts, doc_steps: list[StepStats], funnel: Counts, corpus: list[tuple[str, str, float]]
) -> list[StepStats]:
    kept_before = doc_steps[-1]["kept"] if doc_steps else read["kept"]
    return doc_steps + corpus_step_stats(kept_before, funnel, corpus, doc_steps)


def run(spec: CurateSpec) -> dict[str, Any]:
    files = _input_files(spec)
    out = local_path(spec.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    reporter = MetricsReporter(out)
    started = time.time()
    _preflight(spec)
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
    ds, corpus = run_corpus_steps(ray.data.read_parquet(paths), spec.corpus_steps(), _shards())
    funnel = write_outputs(ds, out)
    stats = funnel | {
        "read": read,
        "steps": _funnel_steps(read, doc_steps, funnel, corpus),
        "seconds": round(time.time() - started, 3),
        "input": spec.input,
        "files": len(files),
        "parts": len(parts),
        "parts_skipped": skipped,
    }
    # What was edited rather than removed (the PII step's redactions), beside the removals.
    stats |= extra_counts(doc_steps)
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    reporter.log(0, {"docs_in": stats["documents"], "docs_kept": stats["kept"]["documents"]})
    return {"stats": stats, "data": str(out / "data"), "rejected": str(out / "rejected")}
