"""Phase 1 of a curate job: each input part (file × part index) read and run through the
per-document steps, written as one Parquet file, then marked done.

The marker ``_done/<key>.json`` is written (atomically) only after the part's file, so a crashed
run leaves no marker and a rerun redoes exactly the unfinished parts. The key hashes everything
that decides the part's content (file, part, reader options, per-document steps), so a changed
spec never reuses a stale part.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contracts.curate import CurateSpec
from contracts.curate_steps import Step
from llm import storage
from llm.data.block import DocumentBlock
from llm.data.read_parquet import read_parquet
from llm.data.read_warc import read_warc
from llm.data.readers import FieldMap, read_jsonl
from llm.data.sources import InputFormat, format_of
from llm.data.stats import StepStats, empty_counts, empty_step_stats, merge_counts, reason_counts

ORDER = "_order"  # input order (part sequence, row), so the final sort restores reading order
PARTS_DIR = "_parts"
DONE_DIR = "_done"
ROW_BITS = 32


@dataclass(frozen=True)
class Part:
    path: str
    input_format: InputFormat
    part: int
    num_parts: int
    sequence: int  # this part's place in the whole input, for the ORDER column


def plan_parts(files: list[str], spec: CurateSpec) -> list[Part]:
    """Every (file, part index) of the input, in a fixed order."""
    parts: list[Part] = []
    for path in files:
        found = spec.input_format or format_of(path)
        if found is None:
            raise ValueError(f"cannot tell the format of {path}: set input_format")
        for k in range(spec.parts_per_file):
            parts.append(Part(path, found, k, spec.parts_per_file, len(parts)))
    return parts


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def _model_digests(steps: list[Step]) -> list[str]:
    """Digests of the files the steps' blocks read beyond their parameters (quality models): a
    retrained model at the same path must not reuse parts scored by the old one (a missing file
    is reported before phase 1)."""
    digests = []
    for step in steps:
        for path in step.block.content_files(step.params()):
            if os.path.isfile(path):
                stat = os.stat(path)
                digests.append(_file_digest(path, stat.st_size, stat.st_mtime_ns))
    return digests


def part_key(part: Part, spec: CurateSpec) -> str:
    """A stable name for the part's output: a hash of what decides its content."""
    steps = spec.document_steps()
    recipe = {
        "part": asdict(part),
        "reader": spec.model_dump(include={"text_field", "id_field", "source", "max_doc_bytes"}),
        "steps": [step.model_dump() for step in steps],
    }
    if models := _model_digests(steps):
        recipe["models"] = models
    return hashlib.blake2b(json.dumps(recipe, sort_keys=True).encode(), digest_size=12).hexdigest()


def read_part(part: Part, spec: CurateSpec) -> Iterator[pa.Table]:
    """The part's documents, as the reader for its format produces them."""
    common: dict[str, Any] = {
        "part": part.part,
        "num_parts": part.num_parts,
        "source": spec.source,
        "max_doc_bytes": spec.max_doc_bytes,
    }
    field_map = FieldMap(text=spec.text_field, id=spec.id_field)
    if part.input_format == "jsonl":
        return read_jsonl(part.path, field_map=field_map, **common)
    if part.input_format == "parquet":
        return read_parquet(part.path, field_map=field_map, **common)
    return read_warc(part.path, kind=part.input_format, **common)


def _with_order(batch: pa.Table, part: Part, first_row: int) -> pa.Table:
    start = (part.sequence << ROW_BITS) + first_row
    order = pa.array(range(start, start + batch.num_rows), type=pa.int64())
    table = batch.append_column(ORDER, order)
    # Blocks replace columns with nullable ones; one schema for every part keeps phase 2 simple.
    return table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))


def _run_blocks(
    batch: pa.Table, blocks: list[DocumentBlock], funnel: list[StepStats]
) -> tuple[pa.Table, list[StepStats]]:
    """Every block in order over ``batch``; the batch and the funnel with this batch added."""
    added = []
    for block, so_far in zip(blocks, funnel, strict=True):
        batch, stats = block.run(batch)
        added.append(merge_counts(so_far, stats))
    return batch, added


def run_part(part: Part, spec: CurateSpec, out: str) -> dict[str, Any]:
    """Read, run the per-document steps, write the part file, then its marker; the marker.

    Both go to the job's output URI: phase 2 may read them on any node, and a rerun on any node
    finds them. A crashed write leaves no marker, so a rerun rewrites the part file."""
    steps = spec.document_steps()
    blocks = [step.document_block() for step in steps]
    key = part_key(part, spec)
    target = storage.join(out, PARTS_DIR, f"{key}.parquet")
    read, funnel = empty_counts(), [empty_step_stats(step.kind) for step in steps]
    with contextlib.ExitStack() as stack:
        writer: pq.ParquetWriter | None = None
        rows = 0
        for batch in read_part(part, spec):
            read = merge_counts(read, reason_counts(batch))
            batch, funnel = _run_blocks(batch, blocks, funnel)
            table = _with_order(batch, part, rows)
            if writer is None:
                sink = stack.enter_context(storage.open_output(target))
                writer = stack.enter_context(pq.ParquetWriter(sink, table.schema))
            writer.write_table(table)
            rows += table.num_rows
    name = f"{key}.parquet" if rows else None
    marker = {"key": key, "part": asdict(part), "rows": rows, "file": name}
    marker |= {"read": read, "steps": funnel}
    storage.write_json(storage.join(out, DONE_DIR, f"{key}.json"), marker)
    return marker


def load_markers(parts: list[Part], spec: CurateSpec, out: str) -> dict[int, dict[str, Any]]:
    """The completion markers of earlier runs, by part sequence, for parts that need not run
    again; one listing of each folder, then one read per marker found."""
    names = {
        folder: {e.uri.rsplit("/", 1)[1] for e in storage.list_files(storage.join(out, folder))}
        for folder in (PARTS_DIR, DONE_DIR)
    }
    markers = {}
    for part in parts:
        key = part_key(part, spec)
        if f"{key}.json" not in names[DONE_DIR]:
            continue
        marker: dict[str, Any] = storage.read_json(storage.join(out, DONE_DIR, f"{key}.json"))
        if marker["file"] and marker["file"] not in names[PARTS_DIR]:
            continue  # the marker outlived its file (deleted by hand): redo the part
        markers[part.sequence] = marker
    return markers


def phase_one_stats(markers: list[dict[str, Any]]) -> tuple[dict[str, Any], list[StepStats]]:
    """The read funnel and per-step funnels summed over every part's marker."""
    read = empty_counts()
    steps: list[StepStats] = []
    for marker in markers:
        read = merge_counts(read, marker["read"])
        steps = (
            marker["steps"]
            if not steps
            else [merge_counts(a, b) for a, b in zip(steps, marker["steps"], strict=True)]
        )
    return read, steps
