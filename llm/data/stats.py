"""Curation funnel counts: how many documents and bytes were kept, and removed for each reason.

Counts are plain dicts so they can travel between Ray tasks and be written as JSON; counts from
many batches combine with ``merge_counts``.
"""

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from llm.data.schema import REASON, TEXT

Counts = dict[str, Any]


def empty_counts() -> Counts:
    """Counts of no documents: the identity for ``merge_counts``."""
    return {"documents": 0, "bytes": 0, "kept": {"documents": 0, "bytes": 0}, "removed": {}}


def reason_counts(batch: pa.Table) -> Counts:
    """Documents and UTF-8 text bytes in ``batch``: in total, kept, and per full removal reason."""
    sizes = pc.fill_null(pc.binary_length(batch.column(TEXT)), 0).to_pylist()
    reasons = batch.column(REASON).to_pylist()
    counts = empty_counts()
    counts["documents"] = len(sizes)
    counts["bytes"] = sum(sizes)
    for size, reason in zip(sizes, reasons, strict=True):
        bucket = (
            counts["kept"]
            if reason is None
            else counts["removed"].setdefault(reason, {"documents": 0, "bytes": 0})
        )
        bucket["documents"] += 1
        bucket["bytes"] += size
    return counts


def _add_bucket(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {"documents": a["documents"] + b["documents"], "bytes": a["bytes"] + b["bytes"]}


def merge_counts(a: Counts, b: Counts) -> Counts:
    """The sum of two counts; neither argument is modified."""
    zero = {"documents": 0, "bytes": 0}
    removed = {
        reason: _add_bucket(a["removed"].get(reason, zero), b["removed"].get(reason, zero))
        for reason in sorted(a["removed"].keys() | b["removed"].keys())
    }
    return {
        "documents": a["documents"] + b["documents"],
        "bytes": a["bytes"] + b["bytes"],
        "kept": _add_bucket(a["kept"], b["kept"]),
        "removed": removed,
    }
