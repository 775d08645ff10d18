"""Curate a JSONL corpus on Ray Data: read in parallel, filter, dedup exactly, write Parquet.

Every input file is read by ``parts_per_file`` tasks (each takes every n-th line), so one large
file still spreads over the CPUs. Steps annotate a ``reason`` column instead of dropping rows;
at the end kept rows go to ``data/`` and the rest to ``rejected/`` with their reason, and the
funnel goes to ``stats.json``.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import pyarrow as pa
import ray
from ray.data.expressions import col

from llm.data.dedup import DUPLICATE_OF, add_text_hash, mark_exact_duplicates
from llm.data.filters import GopherQualityFilter, LengthFilter
from llm.data.readers import FieldMap, list_input_files, read_jsonl
from llm.data.schema import REASON, set_column
from llm.data.stats import empty_counts, merge_counts, reason_counts
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray
from ray_jobs.entrypoint import JobError, local_path
from ray_jobs.reporting import MetricsReporter
from ray_jobs.specs import CurateSpec, ExactDedupStep, GopherQualityStep, LengthStep


def _read_part(row: dict[str, Any], *, spec: CurateSpec) -> list[dict[str, Any]]:
    field_map = FieldMap(text=spec.text_field, id=spec.id_field)
    tables = read_jsonl(
        row["path"],
        part=row["part"],
        num_parts=row["num_parts"],
        source=spec.source,
        field_map=field_map,
    )
    return [r for t in tables for r in t.to_pylist()]


def _build_filters(spec: CurateSpec) -> list[Any]:
    filters: list[Any] = []
    for step in spec.steps:
        if isinstance(step, LengthStep):
            filters.append(LengthFilter(min_chars=step.min_chars, max_chars=step.max_chars))
        elif isinstance(step, GopherQualityStep):
            filters.append(GopherQualityFilter(**step.model_dump(exclude={"kind"})))
    return filters


def _apply_filters(batch: pa.Table, *, filters: list[Any]) -> pa.Table:
    for f in filters:
        batch = f.apply(batch)
    return batch


def _counts_of(batch: pa.Table) -> dict[str, list[str]]:
    return {"counts": [json.dumps(reason_counts(batch))]}


def _funnel(ds: ray.data.Dataset) -> dict[str, Any]:
    total: dict[str, Any] | None = None
    for row in ds.map_batches(_counts_of, batch_format="pyarrow").iter_rows():
        c = json.loads(row["counts"])
        total = c if total is None else merge_counts(total, c)
    return total or empty_counts()


def _no_duplicate_of(batch: pa.Table) -> pa.Table:
    # Rejected rows never took part in dedup; the column is added so both sides share a schema.
    return set_column(batch, DUPLICATE_OF, pa.nulls(batch.num_rows, pa.string()))


def _exact_dedup(ds: ray.data.Dataset, num_partitions: int) -> ray.data.Dataset:
    hashed = ds.map_batches(add_text_hash, batch_format="pyarrow")
    rejected = hashed.filter(expr=col(REASON).is_not_null()).map_batches(
        _no_duplicate_of, batch_format="pyarrow"
    )
    candidates = hashed.filter(expr=col(REASON).is_null())
    deduped = candidates.groupby("text_hash", num_partitions=num_partitions).map_groups(
        mark_exact_duplicates, batch_format="pyarrow"
    )
    return rejected.union(deduped)


def _write(ds: ray.data.Dataset, out: str) -> None:
    kept = ds.filter(expr=col(REASON).is_null()).drop_columns(["reason"])
    kept.write_parquet(f"{out}/data", min_rows_per_file=1)
    ds.filter(expr=col(REASON).is_not_null()).write_parquet(f"{out}/rejected", min_rows_per_file=1)


def run(spec: CurateSpec) -> dict[str, Any]:
    try:
        files = list_input_files(str(local_path(spec.input)))
    except FileNotFoundError as e:
        raise JobError(f"input not found: {spec.input}") from e
    out = local_path(spec.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    reporter = MetricsReporter(out)
    started = time.time()
    init_ray()
    parts = [
        {"path": f, "part": k, "num_parts": spec.parts_per_file}
        for f in files
        for k in range(spec.parts_per_file)
    ]
    ds: ray.data.Dataset = ray.data.from_items(parts, override_num_blocks=len(parts))
    ds = ds.flat_map(partial(_read_part, spec=spec))
    ds = ds.map_batches(
        partial(_apply_filters, filters=_build_filters(spec)), batch_format="pyarrow"
    )
    if any(isinstance(s, ExactDedupStep) for s in spec.steps):
        ds = _exact_dedup(ds, num_partitions=max(2, len(parts) // 2))
    done = ds.sort(["position", "id"]).materialize()
    _write(done, str(out))
    stats = _funnel(done)
    stats["seconds"] = round(time.time() - started, 3)
    stats["input"] = spec.input
    stats["files"] = len(files)
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    reporter.log(0, {"docs_in": stats["documents"], "docs_kept": stats["kept"]["documents"]})
    return {"stats": stats, "data": str(out / "data"), "rejected": str(out / "rejected")}


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(CurateSpec, run))
