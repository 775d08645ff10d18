"""Phase 2 output: the curated rows in input order, written with names and row groups that
depend only on the data, so the same input and spec give byte-identical files.

Ray's own writers name files by write id and split by block, both of which vary between runs;
here the driver streams batches in ``_order``, cuts row groups of ``GROUP_ROWS`` itself and
rolls files every ``ROWS_PER_FILE`` rows. Each output folder is written under a temporary name
and swapped in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from llm.data.dedup import DUPLICATE_OF, TEXT_HASH
from llm.data.schema import REASON
from llm.data.stats import Counts, empty_counts, merge_counts, reason_counts
from ray_jobs.curate.parts import ORDER

ROWS_PER_FILE = 100_000
BATCH_ROWS = 4096
GROUP_ROWS = 4096  # rows per Parquet row group: no more in memory than one batch
_INTERNAL = (ORDER, TEXT_HASH)  # bookkeeping columns no consumer reads
_REJECTION_ONLY = (REASON, DUPLICATE_OF)


class RollingWriter:
    """Writes ``part-00000.parquet``, ``part-00001.parquet``, … of at most ``rows_per_file``.

    Row groups hold ``group_rows`` rows (fewer only at the end of a file), each written from one
    contiguous array per column. The Parquet writer's choices depend on how a column is chunked,
    not only on its values: it falls back from dictionary to plain encoding, and closes data
    pages, at points it checks after each chunk. Rows arrive chunked as Ray's blocks happened to
    be cut, which varies between runs, so the writer buffers and re-cuts them itself.
    """

    def __init__(
        self,
        folder: Path,
        schema: pa.Schema,
        rows_per_file: int = ROWS_PER_FILE,
        group_rows: int = GROUP_ROWS,
    ) -> None:
        self.folder = folder
        self.rows_per_file = rows_per_file
        self.group_rows = group_rows
        self.files = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        # The dataset's unified schema, fixed up front: a batch's own schema can differ between
        # runs (an all-null column is typed null in one block and string in another).
        # Without metadata: blocks read back from part files carry schema metadata that fresh
        # blocks lack, and Parquet stores it in the file.
        self.schema = pa.schema([f.remove_metadata() for f in schema]).remove_metadata()
        folder.mkdir(parents=True)

    def write(self, table: pa.Table) -> None:
        """Buffer ``table``'s rows; write every whole row group they complete."""
        if not table.num_rows:
            return
        self._pending.append(table.select(self.schema.names).cast(self.schema))
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._next_group_rows():
            self._flush_group(self._next_group_rows())

    def _next_group_rows(self) -> int:
        return min(self.group_rows, self.rows_per_file - self._rows)

    def _flush_group(self, rows: int) -> None:
        buffered = pa.concat_tables(self._pending)
        group, rest = buffered.slice(0, rows), buffered.slice(rows)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if self._writer is None:
            name = self.folder / f"part-{self.files:05d}.parquet"
            self._writer = pq.ParquetWriter(name, self.schema)
            self.files += 1
        self._writer.write_table(group.combine_chunks(), row_group_size=rows)
        self._rows += rows
        if self._rows == self.rows_per_file:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer, self._rows = None, 0

    def finish(self) -> None:
        """Write what is buffered and close; an empty output still gets one empty file, so
        readers find the schema."""
        if self._pending_rows:
            self._flush_group(self._pending_rows)
        self._close_file()
        if self.files == 0:
            pq.write_table(self.schema.empty_table(), self.folder / "part-00000.parquet")


def _without(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    return table.drop_columns([n for n in names if n in table.column_names])


def _output_schema(schema: pa.Schema, drop: tuple[str, ...]) -> pa.Schema:
    return pa.schema([field for field in schema if field.name not in drop])


def write_outputs(ds: ray.data.Dataset, out: Path) -> Counts:
    """Write kept rows to ``data/`` and removed rows to ``rejected/``; the funnel over all rows."""
    tmp = {name: out / f".{name}.tmp" for name in ("data", "rejected")}
    for folder in tmp.values():
        shutil.rmtree(folder, ignore_errors=True)
    ordered = ds.sort(ORDER).materialize()
    schema = ordered.schema()
    base = schema.base_schema if schema is not None else pa.schema([])
    data = RollingWriter(tmp["data"], _output_schema(base, _INTERNAL + _REJECTION_ONLY))
    rejected = RollingWriter(tmp["rejected"], _output_schema(base, _INTERNAL))
    counts = empty_counts()
    for batch in ordered.iter_batches(batch_size=BATCH_ROWS, batch_format="pyarrow"):
        assert isinstance(batch, pa.Table)  # batch_format="pyarrow"
        counts = merge_counts(counts, reason_counts(batch))
        kept = pc.is_null(batch.column(REASON))
        data.write(_without(batch.filter(kept), _INTERNAL + _REJECTION_ONLY))
        rejected.write(_without(batch.filter(pc.invert(kept)), _INTERNAL))
    data.finish()
    rejected.finish()
    for name, folder in tmp.items():
        shutil.rmtree(out / name, ignore_errors=True)
        folder.rename(out / name)
    return counts
