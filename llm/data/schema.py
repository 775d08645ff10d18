"""The document batch contract shared by every curation step.

A batch is a ``pyarrow.Table`` with at least these columns. ``reason`` is null while a document is
kept and holds the removal reason once a step rejects it; steps never drop rows, so every input
document can be accounted for at the end of a pipeline.
"""

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

ID = "id"
TEXT = "text"
SOURCE = "source"
POSITION = "position"
REASON = "reason"

COLUMNS: tuple[str, ...] = (ID, TEXT, SOURCE, POSITION, REASON)

DOC_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(TEXT, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(POSITION, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=True),
    ]
)


def empty_batch() -> pa.Table:
    """A batch with the contract columns and no rows."""
    return DOC_SCHEMA.empty_table()


def kept_mask(batch: pa.Table) -> list[bool]:
    """Per row: True while the document is still kept (no removal reason yet)."""
    return pc.is_null(batch.column(REASON)).to_pylist()


def set_column(batch: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """Replace column ``name`` if present, else append it."""
    index = batch.schema.get_field_index(name)
    if index < 0:
        return batch.append_column(name, values)
    return batch.set_column(index, name, values)


def with_reasons(batch: pa.Table, reasons: list[str | None]) -> pa.Table:
    """Set new removal reasons, never overwriting a reason that is already there."""
    old = batch.column(REASON).to_pylist()
    merged = [prev if prev is not None else new for prev, new in zip(old, reasons, strict=True)]
    return set_column(batch, REASON, pa.array(merged, type=pa.string()))


def mark_failures(batch: pa.Table, check: Callable[[str], str | None]) -> pa.Table:
    """Run ``check`` on the text of every kept row and record the reasons it returns."""
    texts = batch.column(TEXT).to_pylist()
    reasons = [
        check(text) if keep else None for text, keep in zip(texts, kept_mask(batch), strict=True)
    ]
    return with_reasons(batch, reasons)
