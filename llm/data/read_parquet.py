"""Parquet reader: document batches from any Parquet file, with a field map for text and id.

Parts are row groups: row group ``g`` belongs to reader ``part`` when ``g % num_parts == part``
(a file with fewer row groups than parts leaves some readers idle). Row numbers start at 1 and
positions and derived ids are ``"<file name>:<row number>"``, as for JSONL lines.
"""

from collections.abc import Iterator
from itertools import accumulate

import pyarrow as pa
import pyarrow.parquet as pq

from llm.data.readers import BatchBuilder, FieldMap
from llm.data.sources import base_name, open_seekable

DEFAULT_FIELDS = FieldMap()


def _check_columns(schema: pa.Schema, field_map: FieldMap, path: str) -> None:
    # A missing or non-text column is a wrong field map, not bad data: fail with its name.
    if field_map.text not in schema.names:
        raise ValueError(f"{path}: no column '{field_map.text}' (columns: {schema.names})")
    text_type = schema.field(field_map.text).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise ValueError(f"{path}: column '{field_map.text}' is {text_type}, not a string")
    if field_map.id is not None and field_map.id not in schema.names:
        raise ValueError(f"{path}: no column '{field_map.id}' (columns: {schema.names})")


def _add_rows(
    rows: BatchBuilder, table: pa.Table, first_row: int, name: str, field_map: FieldMap, limit: int
) -> None:
    texts = table.column(field_map.text).to_pylist()
    ids = table.column(field_map.id).to_pylist() if field_map.id else [None] * len(texts)
    for offset, (text, raw_id) in enumerate(zip(texts, ids, strict=True)):
        position = f"{name}:{first_row + offset}"
        doc_id = str(raw_id) if raw_id is not None else position
        if text is None:
            rows.add(doc_id, "", position, f"malformed: field '{field_map.text}' is null")
        elif len(text.encode("utf-8")) > limit:
            rows.add(doc_id, "", position, f"malformed: text over {limit} bytes")
        else:
            rows.add(doc_id, text, position, None)


def read_parquet(
    path: str,
    *,
    part: int = 0,
    num_parts: int = 1,
    source: str | None = None,
    field_map: FieldMap = DEFAULT_FIELDS,
    batch_size: int = 1024,
    max_doc_bytes: int = 10_000_000,
) -> Iterator[pa.Table]:
    """Yield document batches from the row groups of a Parquet file that belong to ``part``."""
    if num_parts < 1 or not 0 <= part < num_parts:
        raise ValueError(f"need 0 <= part < num_parts, got part={part} num_parts={num_parts}")
    name = base_name(path)
    rows = BatchBuilder(source if source is not None else name)
    parquet = pq.ParquetFile(open_seekable(path))
    _check_columns(parquet.schema_arrow, field_map, path)
    columns = [c for c in (field_map.text, field_map.id) if c is not None]
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    starts = list(accumulate(sizes, initial=1))[:-1]
    for group in range(part, parquet.num_row_groups, num_parts):
        for batch in parquet.iter_batches(batch_size, row_groups=[group], columns=columns):
            _add_rows(
                rows, pa.Table.from_batches([batch]), starts[group], name, field_map, max_doc_bytes
            )
            starts[group] += batch.num_rows
            if len(rows) >= batch_size:
                yield rows.flush()
    if len(rows):
        yield rows.flush()
