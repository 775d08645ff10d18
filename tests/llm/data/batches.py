"""Builds small document batches for the curation tests."""

import pyarrow as pa

from llm.data.schema import DOC_SCHEMA


def make_batch(
    texts: list[str],
    reasons: list[str | None] | None = None,
    ids: list[str] | None = None,
    positions: list[str] | None = None,
) -> pa.Table:
    n = len(texts)
    default_positions = [f"t.jsonl:{i + 1}" for i in range(n)]
    return pa.table(
        {
            "id": ids if ids is not None else [f"doc{i}" for i in range(n)],
            "text": texts,
            "source": ["test"] * n,
            "position": positions if positions is not None else default_positions,
            "reason": reasons if reasons is not None else [None] * n,
        },
        schema=DOC_SCHEMA,
    )
