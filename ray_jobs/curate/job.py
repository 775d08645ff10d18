"""The curate job: plan the input parts, run phase 1 (``parts``) as Ray tasks, phase 2
(``corpus``) over the whole corpus, then write the outputs (``output``) and ``stats.json``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from functools import partial
from typing import Any

import ray
import ray.data
from ray.data.context import ShuffleStrategy

from contracts.curate import CurateSpec
from llm import storage
from llm.data.readers import list_input_files
from llm.data.stats import Counts, StepStats, corpus_step_stats, extra_counts
from ray_jobs.cluster import init_ray, node_id
from ray_jobs.curate.corpus import run_corpus_steps
from ray_jobs.curate.output import write_outputs
from ray_jobs.curate.parts import (
    PARTS_DIR,
    Part,
    load_markers,
    phase_one_stats,
    plan_parts,
    run_part,
)
from ray_jobs.entrypoint import JobError
from ray_jobs.reporting import report


def _run_part_row(row: dict[str, Any], *, spec: CurateSpec, out: str) -> dict[str, Any]:
    return {"marker": json.dumps(run_part(Part(**row), spec, out)), "node": node_id()}


def phase_one(
    parts: list[Part], spec: CurateSpec, out: str
) -> tuple[list[dict[str, Any]], int, set[str]]:
    """Every part's marker, running the parts without one; how many were skipped; the nodes
    that ran parts."""
    markers = load_markers(parts, spec, out)
    todo = [asdict(part) for part in parts if part.sequence not in markers]
    nodes = set()
    if todo:
        tasks = ray.data.from_items(todo, override_num_blocks=len(todo))
        for row in tasks.map(partial(_run_part_row, spec=spec, out=out)).take_all():
            marker = json.loads(row["marker"])
            markers[marker["part"]["sequence"]] = marker
            nodes.add(row["node"])
    return [markers[part.sequence] for part in parts], len(parts) - len(todo), nodes


def _check_storage(spec: CurateSpec, out: str) -> list[str]:
    """The input files; fails before Ray starts when the output cannot be written or the input
    is missing, naming what to fix."""
    storage.check_access(out, write=True)
    storage.check_access(spec.input)
    try:
        return list_input_files(storage.resolve(spec.input), spec.input_format)
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
    out = storage.resolve(spec.output)
    files = _check_storage(spec, out)
    started = time.time()
    _preflight(spec)
    init_ray()
    # Ray 2.60's hash shuffle concatenates an input's empty, column-less blocks with real ones
    # and fails ("Schema at index 1 was different"); the sort-based shuffle handles them.
    ray.data.DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    parts = plan_parts(files, spec)
    markers, skipped, nodes = phase_one(parts, spec, out)
    read, doc_steps = phase_one_stats(markers)
    written = [m for m in markers if m["file"]]
    if not written:
        raise JobError(f"no documents read from {spec.input}")
    filesystem, folder = storage.filesystem(storage.join(out, PARTS_DIR))
    paths = [f"{folder}/{m['file']}" for m in written]
    parts_ds = ray.data.read_parquet(paths, filesystem=filesystem)
    ds, corpus = run_corpus_steps(parts_ds, spec.corpus_steps(), _shards())
    part_rows = {m["part"]["sequence"]: m["rows"] for m in written}
    funnel, writers = write_outputs(ds, out, part_rows, _shards())
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
    storage.write_json(storage.join(out, "stats.json"), stats)
    report(out, 0, {"docs_in": stats["documents"], "docs_kept": stats["kept"]["documents"]})
    return {
        "stats": stats,
        "data": storage.join(out, "data"),
        "rejected": storage.join(out, "rejected"),
        "nodes": sorted(nodes | writers),
    }
