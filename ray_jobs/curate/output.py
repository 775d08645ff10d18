"""Phase 2 output: the curated rows in input order, written by Ray workers in parallel, with
names and row groups that depend only on the data, so the same input and spec give
byte-identical files.

Ray's own writers name files by write id and split by block, both of which vary between runs.
Here consecutive input parts are packed into output files of about ``ROWS_PER_FILE`` rows (the
driver knows each part's row count from its marker); every row is keyed by its file through its
part (``_order >> 32``), a group-by brings each file's rows to one task, which sorts them by
``_order`` and writes ``data/part-NNNNN.parquet`` and ``rejected/part-NNNNN.parquet`` straight
to the output URI. Only the funnel counts come back to the driver.
"""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from llm import storage
from llm.data.dedup import DUPLICATE_OF, TEXT_HASH
from llm.data.schema import REASON
from llm.data.stats import Counts, empty_counts, merge_counts, reason_counts
from ray_jobs.cluster import node_id
from ray_jobs.curate.parts import ORDER, ROW_BITS

OUTPUTS = ("data", "rejected")
ROWS_PER_FILE = 100_000
GROUP_ROWS = 4096  # rows per Parquet row group
FILE = "_file"  # the output file a row goes to
_INTERNAL = (ORDER, TEXT_HASH)  # bookkeeping columns no consumer reads
_REJECTION_ONLY = (REASON, DUPLICATE_OF)


def plan_files(part_rows: dict[int, int], rows_per_file: int = ROWS_PER_FILE) -> dict[int, int]:
    """Output file number of every input part (by sequence): consecutive parts packed until a
    file holds ``rows_per_file`` rows (one part is never split); parts without rows get none."""
    files: dict[int, int] = {}
    number, rows = 0, 0
    for sequence in sorted(part_rows):
        if not part_rows[sequence]:
            continue
        if rows and rows + part_rows[sequence] > rows_per_file:
            number, rows = number + 1, 0
        files[sequence] = number
        rows += part_rows[sequence]
    return files


def _without_metadata(schema: pa.Schema, drop: tuple[str, ...]) -> pa.Schema:
    # Blocks read back from part files carry schema metadata that fresh blocks lack, and Parquet
    # stores it in the file.
    return pa.schema([f.remove_metadata() for f in schema if f.name not in drop])


def write_file(table: pa.Table, uri: str, schema: pa.Schema) -> None:
    """``table`` as one Parquet file of ``GROUP_ROWS``-row groups, in the fixed ``schema``.

    The Parquet writer's choices depend on how a column is chunked, not only on its values: it
    falls back from dictionary to plain encoding, and closes data pages, at points it checks
    after each chunk. Rows arrive chunked as Ray's blocks happened to be cut, which varies
    between runs, so each row group is written from one contiguous array per column. The schema
    is the dataset's, fixed up front: a block's own can differ between runs (an all-null column
    is typed null in one block and string in another). An empty table still gives a file, so
    readers find the schema.
    """
    table = table.select(schema.names).cast(schema).combine_chunks()
    with storage.open_output(uri) as sink, pq.ParquetWriter(sink, schema) as writer:
        if not table.num_rows:
            writer.write_table(schema.empty_table())
        for start in range(0, table.num_rows, GROUP_ROWS):
            group = table.slice(start, GROUP_ROWS).combine_chunks()
            writer.write_table(group, row_group_size=GROUP_ROWS)


def _add_file(batch: pa.Table, files: np.ndarray) -> pa.Table:
    parts = pc.shift_right(batch.column(ORDER), ROW_BITS).to_numpy(zero_copy_only=False)
    return batch.append_column(FILE, pa.array(files[parts], type=pa.int64()))


def _write_group(group: pa.Table, out: str, schemas: dict[str, pa.Schema]) -> pa.Table:
    if not group.num_rows:  # a partition that got no rows
        return pa.table({"counts": pa.array([], pa.string()), "node": pa.array([], pa.string())})
    number = group.column(FILE)[0].as_py()
    rows = group.drop_columns([FILE]).sort_by(ORDER)
    kept = pc.is_null(rows.column(REASON))
    name = f"part-{number:05d}.parquet"
    write_file(rows.filter(kept), storage.join(out, "data", name), schemas["data"])
    write_file(
        rows.filter(pc.invert(kept)), storage.join(out, "rejected", name), schemas["rejected"]
    )
    counts = json.dumps(reason_counts(rows))
    return pa.table({"counts": [counts], "node": [node_id()]})


def write_outputs(
    ds: ray.data.Dataset, out: str, part_rows: dict[int, int], shards: int
) -> tuple[Counts, set[str]]:
    """Write kept rows to ``data/`` and removed rows to ``rejected/`` under ``out``; the funnel
    over all rows and the nodes that wrote them."""
    for name in OUTPUTS:  # what an earlier attempt of this job left there
        storage.delete(storage.join(out, name))
    files = plan_files(part_rows)
    lookup = np.zeros(max(part_rows) + 1, dtype=np.int64)
    lookup[list(files)] = list(files.values())
    schema = ds.schema()
    base = schema.base_schema if schema is not None else pa.schema([])
    schemas = {
        "data": _without_metadata(base, _INTERNAL + _REJECTION_ONLY),
        "rejected": _without_metadata(base, _INTERNAL),
    }
    keyed = ds.map_batches(partial(_add_file, files=lookup), batch_format="pyarrow")
    written = keyed.groupby(FILE, num_partitions=min(shards, len(set(files.values())))).map_groups(
        partial(_write_group, out=out, schemas=schemas), batch_format="pyarrow"
    )
    counts, nodes = empty_counts(), set()
    for row in written.take_all():
        counts = merge_counts(counts, json.loads(row["counts"]))
        nodes.add(row["node"])
    return counts, nodes
