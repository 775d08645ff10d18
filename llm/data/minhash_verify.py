"""Exact check of MinHash candidate pairs: NeMo Curator's and datatrove's "false positive check".

LSH banding proposes pairs well below the threshold (with the default 18 × 7 bands, 79% of pairs
at Jaccard 0.7); merging them chains unrelated documents into one cluster. Here a pair is merged
only if the exact Jaccard similarity of the two documents' shingle sets (64-bit shingle hashes,
as the signatures use) reaches the threshold.

Spread over many processes, as the curate job runs it, in two shuffles:
1. ``verify_requests``: each pair is checked at its smaller id, its anchor; the anchor needs its
   own shingle set and its partner's, so each pair asks for both ids' sets there.
2. Requests meet the documents by id: ``answer_requests`` shingles each requested document once
   and sends one copy of its set per distinct anchor that asked.
3. Sets meet by anchor: ``verify_at_anchors`` keeps the pairs that reach the threshold.
A document's set travels once per anchor it is paired with, so the work is linear in the
candidate pairs, and no process holds more than its share of them.

``verify_pairs_exact`` runs the same pieces in one process.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm.data.minhash import SHINGLE_SIZE, THRESHOLD
from llm.data.minhash_signatures import shingle_sets
from llm.data.schema import ID, TEXT

ANCHOR = "anchor"
SHINGLES = "shingles"
PAIR_SCHEMA = pa.schema([("id_a", pa.string()), ("id_b", pa.string())])
SHINGLE_ROWS = pa.schema(
    [(ID, pa.string()), (ANCHOR, pa.string()), (SHINGLES, pa.large_list(pa.uint64()))]
)


def set_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted arrays of distinct values (1.0 for two empty)."""
    if not len(a) or not len(b):
        return 1.0 if len(a) == len(b) else 0.0
    found = np.searchsorted(b, a)
    shared = int(np.count_nonzero(b[np.minimum(found, len(b) - 1)] == a))
    return shared / (len(a) + len(b) - shared)


def shingle_set_column(texts: list[str], n: int) -> pa.LargeListArray:
    """Each text's distinct shingle hashes, sorted, as a list column."""
    sets = shingle_sets(texts, n)
    offsets = np.concatenate(([0], np.cumsum([len(values) for values in sets])))
    flat = np.concatenate(sets) if sets else np.empty(0, dtype=np.uint64)
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat))


def verify_requests(pairs: pa.Table) -> pa.Table:
    """(id, anchor): the shingle sets checking ``pairs`` (id_a < id_b) needs, at each id_a.

    Distinct rows; an anchor asks for its own set too.
    """
    requests = pa.table(
        {
            ID: pa.concat_arrays([_array(pairs, "id_a"), _array(pairs, "id_b")]),
            ANCHOR: pa.concat_arrays([_array(pairs, "id_a"), _array(pairs, "id_a")]),
        }
    )
    return requests.group_by([ID, ANCHOR]).aggregate([])


def answer_requests(requests: pa.Table, docs: pa.Table, n: int) -> pa.Table:
    """(id, anchor, shingles) for each request whose id is among ``docs`` (id, text).

    Each document is shingled once, however many anchors ask for it (requests may repeat: a
    pair shares several bands). Should an id name several documents, the one with the smallest
    text answers, so the result does not depend on row order.
    """
    requests = requests.group_by([ID, ANCHOR]).aggregate([])
    wanted = docs.filter(pc.is_in(docs.column(ID), value_set=_array(requests, ID)))
    wanted = wanted.sort_by([(ID, "ascending"), (TEXT, "ascending")])
    ids = _array(wanted, ID)
    if len(ids) > 1:  # the first row of each id
        later = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
        wanted = wanted.filter(pa.concat_arrays([pa.array([True]), later]))
    sets = shingle_set_column(wanted.column(TEXT).to_pylist(), n)
    # A join by hand: Arrow's hash join carries no list columns.
    rows = pc.index_in(_array(requests, ID), value_set=_array(wanted, ID))
    found = pc.is_valid(rows)
    requests = requests.filter(found)
    columns = [_array(requests, ID), _array(requests, ANCHOR), sets.take(rows.filter(found))]
    return pa.table(columns, schema=SHINGLE_ROWS)


def verify_at_anchors(rows: pa.Table, threshold: float) -> pa.Table:
    """(id_a, id_b) = (anchor, id), sorted, for the rows whose set reaches ``threshold`` Jaccard
    similarity with their anchor's own set (the row whose id is the anchor)."""
    ids, anchors = rows.column(ID).to_pylist(), rows.column(ANCHOR).to_pylist()
    column = rows.column(SHINGLES).combine_chunks()
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths)
    sets = [values[end - length : end] for end, length in zip(ends, lengths, strict=True)]
    own = {doc: sets[row] for row, doc in enumerate(ids) if doc == anchors[row]}
    left, right = [], []
    for row, (doc, anchor) in enumerate(zip(ids, anchors, strict=True)):
        if doc != anchor and anchor in own and set_jaccard(sets[row], own[anchor]) >= threshold:
            left.append(anchor)
            right.append(doc)
    pairs = pa.table([pa.array(left, pa.string()), pa.array(right, pa.string())], PAIR_SCHEMA)
    return pairs.sort_by([("id_a", "ascending"), ("id_b", "ascending")])


def verify_pairs_exact(
    pairs: pa.Table, batch: pa.Table, threshold: float = THRESHOLD, n: int = SHINGLE_SIZE
) -> pa.Table:
    """The ``pairs`` whose shingle sets have an exact Jaccard similarity of at least ``threshold``.

    ``batch`` holds the ``id`` and ``text`` of every id in ``pairs``. Give it pairs from
    ``candidate_pairs`` with several anchors, not star edges: a star edge may fail where the pair
    between two other members of the bucket would pass.
    """
    requests = verify_requests(pairs)
    return verify_at_anchors(answer_requests(requests, batch.select([ID, TEXT]), n), threshold)


def _array(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()
