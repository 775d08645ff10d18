"""MinHash near-duplicate detection, as pieces a distributed job composes.

1. ``signatures``: a ``minhash`` column (num_perm uint64 values, datasketch's MinHash over word
   5-gram shingles of normalised text).
2. ``band_keys``: one (band, band_hash, id) row per kept document and band, for a group-by.
3. ``candidate_pairs``: edges between ids sharing a (band, band_hash); optionally
   ``verify_pairs`` drops those whose signatures estimate a Jaccard similarity below the
   threshold, or ``llm.data.minhash_verify`` those whose shingle sets are below it (NeMo
   Curator's "false positive check").
4. ``propagate_labels``: one round of min-label propagation over the edges; repeat until nothing
   changes to get connected components (the cluster label is the smallest id in it).
5. ``mark_fuzzy_duplicates``: annotate ``minhash_cluster`` and reject every document but the one
   whose id is its cluster label.

``cluster_documents`` (union-find) is the single-process reference the distributed pieces must
agree with.

Bands and rows: a pair with Jaccard j becomes a candidate with probability 1 - (1 - j^rows)^bands
(``candidate_probability``). datasketch's "optimal" setting for threshold 0.8 with 128
permutations, 9 × 13, balances the areas of false positives and negatives but finds a pair at
j = 0.8 only 40% of the time; 14 × 9 finds 87%, so about one pair in ten just above the
threshold is never proposed, which no check afterwards can recover. The default here, 18 bands ×
7 rows (126 of the 128 values), puts the knee of the curve lower: 98.6% at j = 0.8, 99.9% at
0.85, and pays with more pairs below the threshold (79% at j = 0.7, 13% at 0.5, 1% at 0.35),
which the exact check (``verify``, the default) drops: it costs about a quarter more candidate
pairs to check on the bench's corpus, for no missed pair there. Without the check every proposed
pair is merged: pass ``bands=14, rows=9``, or ``bands=9, rows=13`` for datasketch's trade-off.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from annotated_types import Ge, Gt, Le

from llm.data.block import DESCRIPTION, CorpusBlock
from llm.data.minhash_signatures import text_signatures
from llm.data.ngrams import hash_rows, normalized_words
from llm.data.schema import ID, TEXT, kept_mask, set_column, with_reasons

MINHASH = "minhash"
MINHASH_CLUSTER = "minhash_cluster"
FUZZY_DUPLICATE = "minhash_duplicate"
NUM_PERM = 128
BANDS = 18
ROWS = 7
SHINGLE_SIZE = 5
THRESHOLD = 0.8
SEED = 1
ANCHORS = 4  # per LSH bucket, the ids every member is verified against (NeMo Curator uses 2)


@dataclass(frozen=True)
class MinHashDedupParams:
    """MinHash LSH near-duplicate removal; the kept document of a cluster has the smallest id."""

    num_perm: Annotated[int, Ge(2), Le(1024)] = NUM_PERM
    bands: Annotated[int, Ge(1)] = BANDS
    rows: Annotated[int, Ge(1)] = ROWS
    shingle_size: Annotated[int, Ge(1), Le(64)] = SHINGLE_SIZE
    max_rounds: Annotated[int, Ge(1)] = field(
        default=100, metadata={DESCRIPTION: "label-propagation rounds allowed"}
    )
    verify: bool = field(
        default=True,
        metadata={
            DESCRIPTION: "merge an LSH candidate pair only if the exact Jaccard similarity of "
            "its shingle sets reaches threshold (NeMo Curator's false-positive check)"
        },
    )
    threshold: Annotated[float, Gt(0), Le(1)] = field(
        default=THRESHOLD, metadata={DESCRIPTION: "Jaccard similarity to verify"}
    )
    anchors: Annotated[int, Ge(1)] = field(
        default=ANCHORS,
        metadata={
            DESCRIPTION: "with verify: the smallest ids of an LSH bucket that each member is "
            "checked against (every pair in buckets of up to anchors + 1)"
        },
    )

    def __post_init__(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands × rows ({self.bands} × {self.rows}) exceeds num_perm ({self.num_perm})"
            )


class MinHashDedup(CorpusBlock):
    """Rejects near-duplicates: every document of a cluster but the one with the smallest id."""

    kind = "minhash_dedup"
    Params = MinHashDedupParams
    corpus_reason = FUZZY_DUPLICATE


def shingles(text: str, n: int = SHINGLE_SIZE) -> set[str]:
    """Word n-grams of the normalised text; a text shorter than n words is one shingle."""
    words = normalized_words(text)
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def candidate_probability(similarity: float, bands: int = BANDS, rows: int = ROWS) -> float:
    """Chance that two documents with this Jaccard similarity share at least one band key."""
    return float(1 - (1 - similarity**rows) ** bands)


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two shingle sets (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def signatures(batch: pa.Table, num_perm: int = NUM_PERM, n: int = SHINGLE_SIZE) -> pa.Table:
    """Add ``minhash`` (fixed-size list of ``num_perm`` uint64; null on removed rows)."""
    keep = kept_mask(batch)
    texts = batch.column(TEXT).to_pylist()
    rows = [row for row, kept in enumerate(keep) if kept]
    matrix = np.zeros((batch.num_rows, num_perm), dtype=np.uint64)
    matrix[rows] = text_signatures([texts[row] for row in rows], num_perm, SEED, n)
    values = pa.FixedSizeListArray.from_arrays(
        pa.array(matrix.reshape(-1)), num_perm, mask=pa.array([not kept for kept in keep])
    )
    return set_column(batch, MINHASH, values)


def signature_matrix(batch: pa.Table) -> np.ndarray:
    """The ``minhash`` column as a (rows, num_perm) uint64 array (zeros on null rows)."""
    column = batch.column(MINHASH).combine_chunks()
    width = column.type.list_size
    flat = column.fill_null([0] * width).flatten() if column.null_count else column.flatten()
    return flat.to_numpy().reshape(-1, width)


def band_keys(batch: pa.Table, bands: int = BANDS, rows: int = ROWS) -> pa.Table:
    """One (band, band_hash, id) row per kept document and band, for grouping by band key."""
    matrix = signature_matrix(batch)
    if bands * rows > matrix.shape[1]:
        raise ValueError(f"{bands} bands × {rows} rows exceed {matrix.shape[1]} permutations")
    kept = np.array(kept_mask(batch), dtype=bool)
    ids = np.array(batch.column(ID).to_pylist(), dtype=object)[kept]
    band_hash = hash_rows(matrix[kept, : bands * rows].reshape(-1, bands, rows))
    return pa.table(
        {
            "band": pa.array(np.tile(np.arange(bands, dtype=np.int32), len(ids))),
            "band_hash": pa.array(band_hash.reshape(-1)),
            ID: pa.array(np.repeat(ids, bands).tolist(), type=pa.string()),
        }
    )


def candidate_pairs(keys: pa.Table, anchors: int | None = 1) -> pa.Table:
    """Distinct (id_a, id_b) edges, id_a < id_b, between ids sharing a (band, band_hash).

    Each member of a bucket is linked to each of the bucket's ``anchors`` smallest ids. One
    (star edges) gives the same connected components as all pairs, in linear size. Pair
    verification needs more: a star edge may fail where a pair between two other members would
    pass. ``None`` links every pair (quadratic in bucket size); a few anchors, as NeMo Curator's
    false-positive check uses, check every pair of a bucket of up to ``anchors + 1`` members and
    keep a large bucket's pairs linear in its size.
    """
    if anchors is not None and anchors < 1:
        raise ValueError(f"anchors must be at least 1 (or None for all pairs), got {anchors}")
    buckets = keys.group_by(["band", "band_hash"]).aggregate([(ID, "distinct")])
    members = buckets.column(f"{ID}_distinct")
    shared = buckets.filter(pc.greater(pc.list_value_length(members), 1))  # most buckets: one id
    left: list[str] = []
    right: list[str] = []
    for bucket in shared.column(f"{ID}_distinct").to_pylist():
        bucket.sort()
        for index, first in enumerate(bucket[:anchors]):
            left.extend([first] * (len(bucket) - index - 1))
            right.extend(bucket[index + 1 :])
    pairs = pa.table({"id_a": pa.array(left, pa.string()), "id_b": pa.array(right, pa.string())})
    return pairs.group_by(["id_a", "id_b"]).aggregate([])


def verify_pairs(
    pairs: pa.Table, batch: pa.Table, threshold: float = THRESHOLD, block: int = 65_536
) -> pa.Table:
    """The pairs whose signatures agree on at least ``threshold`` of their values.

    Banding lets through pairs far below the threshold (44% of pairs at Jaccard 0.7 with 14 × 9);
    the share of equal MinHash values estimates Jaccard without bias (standard deviation about
    0.035 at 0.8 with 128 values). Give it pairs from ``candidate_pairs`` with several anchors:
    a star edge may fail where the pair between two other members would pass. ``batch`` holds
    the ``minhash`` column of every id in ``pairs``.
    """
    matrix = signature_matrix(batch)
    row_of = {doc: row for row, doc in enumerate(batch.column(ID).to_pylist())}
    left = np.array([row_of[doc] for doc in pairs.column("id_a").to_pylist()], dtype=np.int64)
    right = np.array([row_of[doc] for doc in pairs.column("id_b").to_pylist()], dtype=np.int64)
    keep = np.zeros(len(left), dtype=bool)
    for start in range(0, len(left), block):  # bounds the (pairs × num_perm) comparison in memory
        a, b = left[start : start + block], right[start : start + block]
        keep[start : start + block] = (matrix[a] == matrix[b]).mean(axis=1) >= threshold
    return pairs.filter(pa.array(keep))


def initial_labels(ids: Iterable[str]) -> pa.Table:
    """Each id labelled with itself: the start of min-label propagation."""
    values = pa.array(list(ids), type=pa.string())
    return pa.table({ID: values, "label": values})


def propagate_labels(edges: pa.Table, labels: pa.Table) -> tuple[pa.Table, int]:
    """One round: each id takes the smallest label among itself and its neighbours.

    Returns the new labels and how many changed; repeat until 0. ``edges`` has id_a, id_b;
    ``labels`` has id, label. Each step is a join and a group-by, so a distributed job can run it.
    """
    both_ways = pa.concat_tables(
        [
            edges.select(["id_a", "id_b"]).rename_columns(["src", "dst"]),
            edges.select(["id_b", "id_a"]).rename_columns(["src", "dst"]),
        ]
    )
    offers = both_ways.join(labels, keys="src", right_keys=ID).select(["dst", "label"])
    offers = pa.concat_tables([offers.rename_columns([ID, "label"]), labels])
    new = offers.group_by(ID).aggregate([("label", "min")]).rename_columns([ID, "label"])
    joined = new.join(labels, keys=ID, right_suffix="_old")
    changed = pc.sum(pc.not_equal(joined.column("label"), joined.column("label_old"))).as_py()
    return new.sort_by(ID), int(changed or 0)


def connected_components(edges: pa.Table, ids: Iterable[str], max_rounds: int = 100) -> pa.Table:
    """(id, label) for every id: repeated ``propagate_labels`` until stable, in one process."""
    labels = initial_labels(ids)
    for _ in range(max_rounds):
        labels, changed = propagate_labels(edges, labels)
        if changed == 0:
            return labels
    raise RuntimeError(f"labels still changing after {max_rounds} rounds")


def cluster_documents(ids: Iterable[str], pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Reference clustering by union-find: id -> smallest id of its connected component."""
    parent = {doc: doc for doc in ids}

    def root(doc: str) -> str:
        while parent[doc] != doc:
            parent[doc] = parent[parent[doc]]  # path halving keeps the trees shallow
            doc = parent[doc]
        return doc

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {doc: root(doc) for doc in parent}


def mark_fuzzy_duplicates(batch: pa.Table, labels: pa.Table) -> pa.Table:
    """Add ``minhash_cluster`` and reject kept rows that are not their cluster's label.

    The document kept per cluster is the one with the smallest id, whatever the row order.
    Rows without a label (singletons left out of ``labels``) are their own cluster.
    """
    label_of = dict(
        zip(labels.column(ID).to_pylist(), labels.column("label").to_pylist(), strict=True)
    )
    ids = batch.column(ID).to_pylist()
    keep = kept_mask(batch)
    clusters = [
        label_of.get(doc, doc) if kept else None for doc, kept in zip(ids, keep, strict=True)
    ]
    reasons = [
        FUZZY_DUPLICATE if cluster is not None and cluster != doc else None
        for doc, cluster in zip(ids, clusters, strict=True)
    ]
    batch = set_column(batch, MINHASH_CLUSTER, pa.array(clusters, type=pa.string()))
    return with_reasons(batch, reasons)
