"""MinHash near-duplicate removal on Ray Data, with nothing gathered into one task.

1. Band keys per block (``map_batches``): signatures, then one (band, band_hash, id) row per band.
2. Shuffle by band key → candidate edges: each bucket member to the bucket's smallest id, or, to
   verify them, to its ``anchors`` smallest ids.
3. With ``verify`` (the default), the exact check of ``llm.data.minhash_verify`` in two shuffles:
   the edges' requests meet the documents' texts by id and come back as shingle sets; the sets
   meet by anchor (each edge's smaller id), where the edges whose exact Jaccard similarity
   reaches ``threshold`` are kept.
4. Shuffle the edges by node → adjacency lists, each node labelled with itself.
5. Rounds of min-label propagation: every node offers its label to its neighbours and a shuffle by
   node keeps the smallest; the driver reads only how many labels changed and stops at 0.
6. Label rows meet the documents in a shuffle by id; a document whose label (the smallest id of
   its connected component) is not its own id becomes a ``minhash_duplicate`` of that id.

Labels are minima and checks depend only on the two texts, so the result does not depend on
block order or partitioning.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.data.dataset import MaterializedDataset

from llm.data.dedup import DUPLICATE_OF
from llm.data.minhash import (
    FUZZY_DUPLICATE,
    MINHASH_CLUSTER,
    MinHashDedupParams,
    band_keys,
    candidate_pairs,
    mark_fuzzy_duplicates,
    signatures,
)
from llm.data.minhash_verify import ANCHOR, answer_requests, verify_at_anchors, verify_requests
from llm.data.schema import ID, REASON, TEXT, set_column
from ray_jobs.curate.shuffle import map_shards

NODE, LABEL, NEIGHBORS, CHANGED = "node", "label", "neighbors", "changed"
BAND_KEY = "band_key"
LABEL_OF = "_label_of"  # set on label rows mixed into the documents; null on the documents
_TEXT_ROWS = pa.schema([(ID, pa.string()), (TEXT, pa.string()), (ANCHOR, pa.string())])
_STATE = pa.schema(
    [
        (NODE, pa.string()),
        (LABEL, pa.string()),
        (NEIGHBORS, pa.list_(pa.string())),
        (CHANGED, pa.int64()),
    ]
)


def _band_rows(batch: pa.Table, params: MinHashDedupParams) -> pa.Table:
    signed = signatures(batch, num_perm=params.num_perm, n=params.shingle_size)
    keys = band_keys(signed, bands=params.bands, rows=params.rows)
    key = pc.binary_join_element_wise(
        pc.cast(keys.column("band"), pa.string()),
        pc.cast(keys.column("band_hash"), pa.string()),
        ":",
    )
    return keys.append_column(BAND_KEY, key)


def _edges(group: pa.Table, anchors: int) -> pa.Table:
    return candidate_pairs(group.drop_columns([BAND_KEY]), anchors)


def _requests(edges: pa.Table) -> pa.Table:
    """The requests of ``verify_requests``, shaped like the (id, text, anchor) document rows."""
    requests = verify_requests(edges)
    return pa.table(
        [requests.column(ID), pa.nulls(requests.num_rows, pa.string()), requests.column(ANCHOR)],
        schema=_TEXT_ROWS,
    )


def _texts(batch: pa.Table) -> pa.Table:
    """Kept documents' (id, text), with a null anchor: only those can be in a candidate pair."""
    kept = batch.filter(pc.is_null(batch.column(REASON))).select([ID, TEXT])
    return pa.table(
        [kept.column(ID), kept.column(TEXT), pa.nulls(kept.num_rows, pa.string())],
        schema=_TEXT_ROWS,
    )


def _answer(group: pa.Table, shingle_size: int) -> pa.Table:
    is_request = pc.is_valid(group.column(ANCHOR))
    requests = group.filter(is_request).select([ID, ANCHOR])
    docs = group.filter(pc.invert(is_request)).select([ID, TEXT])
    return answer_requests(requests, docs, shingle_size)


def verified_edges(
    docs: ray.data.Dataset, edges: ray.data.Dataset, params: MinHashDedupParams, shards: int
) -> ray.data.Dataset:
    """The ``edges`` whose shingle sets reach ``params.threshold`` exact Jaccard similarity."""
    requests = edges.map_batches(_requests, batch_format="pyarrow")
    texts = docs.map_batches(_texts, batch_format="pyarrow")
    answer = partial(_answer, shingle_size=params.shingle_size)
    sets = map_shards(texts.union(requests), ID, answer, shards)
    check = partial(verify_at_anchors, threshold=params.threshold)
    return map_shards(sets, ANCHOR, check, shards)


def _both_ways(edges: pa.Table) -> pa.Table:
    names = [NODE, "other"]
    if not edges.num_rows:  # a group-by over no rows emits column-less blocks
        return pa.table({name: pa.array([], pa.string()) for name in names})
    forward = edges.select(["id_a", "id_b"]).rename_columns(names)
    return pa.concat_tables([forward, edges.select(["id_b", "id_a"]).rename_columns(names)])


def _adjacency(group: pa.Table) -> pa.Table:
    grouped = group.group_by(NODE).aggregate([("other", "distinct")])
    nodes = grouped.column(NODE)
    ones = pa.array(np.ones(len(nodes), dtype=np.int64))
    return pa.table([nodes, nodes, grouped.column("other_distinct"), ones], schema=_STATE)


def _offers(state: pa.Table) -> pa.Table:
    """Each node's own row, plus its label offered to each neighbour (rows without neighbours)."""
    lengths = pc.list_value_length(state.column(NEIGHBORS)).to_numpy(zero_copy_only=False)
    owners = pa.array(np.repeat(np.arange(state.num_rows), lengths))
    targets = pc.list_flatten(state.column(NEIGHBORS))
    columns = [
        targets,
        state.column(LABEL).take(owners),
        pa.nulls(len(targets), pa.list_(pa.string())),
        pa.nulls(len(targets), pa.int64()),
    ]
    return pa.concat_tables([state.cast(_STATE), pa.table(columns, schema=_STATE)])


def _take_min(group: pa.Table) -> pa.Table:
    """Per node: the smallest label offered (its own included), and whether it changed."""
    own = group.filter(pc.is_valid(group.column(NEIGHBORS))).sort_by(NODE)
    best = group.group_by(NODE).aggregate([(LABEL, "min")]).sort_by(NODE)
    # Every offer goes to a node that has its own row (edges run both ways), so both line up.
    new = best.column(f"{LABEL}_min")
    changed = pc.cast(pc.not_equal(new, own.column(LABEL)), pa.int64())
    return pa.table([own.column(NODE), new, own.column(NEIGHBORS), changed], schema=_STATE)


@ray.remote
def _block_changed(block: pa.Table) -> int:
    if CHANGED not in block.column_names:
        return 0  # group-bys emit empty, column-less blocks for partitions that got no rows
    return int(pc.sum(block.column(CHANGED)).as_py() or 0)


def _changed(state: MaterializedDataset) -> int:
    """Labels changed in the last round: one integer per block comes back to the driver.

    A task per block instead of ``Dataset.sum``, whose all-to-all aggregation costs seconds of
    scheduling per round on a small cluster.
    """
    return sum(ray.get([_block_changed.remote(ref) for ref in state.to_arrow_refs()]))


def _anchors(params: MinHashDedupParams) -> int:
    # Unverified, one anchor (star edges) already gives the components of all pairs.
    return params.anchors if params.verify else 1


def component_labels(
    ds: ray.data.Dataset, params: MinHashDedupParams, shards: int
) -> ray.data.Dataset:
    """(node, label, neighbors, changed) for every document with a near-duplicate candidate."""
    keys = ds.map_batches(partial(_band_rows, params=params), batch_format="pyarrow")
    edges = map_shards(keys, BAND_KEY, partial(_edges, anchors=_anchors(params)), shards)
    if params.verify:
        edges = verified_edges(ds, edges, params, shards)
    both = edges.map_batches(_both_ways, batch_format="pyarrow")
    state = map_shards(both, NODE, _adjacency, shards).materialize()
    for _ in range(params.max_rounds):
        offers = state.map_batches(_offers, batch_format="pyarrow")
        state = map_shards(offers, NODE, _take_min, shards).materialize()
        if not _changed(state):
            return state
    raise RuntimeError(f"minhash labels still changing after {params.max_rounds} rounds")


def _label_rows(state: pa.Table, schema: pa.Schema) -> pa.Table:
    """Nodes labelled with another id, shaped like documents so both can meet in one shuffle."""
    moved = state.filter(pc.not_equal(state.column(LABEL), state.column(NODE)))
    columns = [pa.nulls(moved.num_rows, field.type) for field in schema]
    columns[schema.get_field_index(ID)] = moved.column(NODE)
    table = pa.table(columns, schema=schema)
    return table.append_column(LABEL_OF, moved.column(LABEL))


def _doc_rows(batch: pa.Table) -> pa.Table:
    return batch.append_column(LABEL_OF, pa.nulls(batch.num_rows, pa.string()))


def _mark(group: pa.Table) -> pa.Table:
    is_label = pc.is_valid(group.column(LABEL_OF))
    labels = group.filter(is_label).select([ID, LABEL_OF]).rename_columns([ID, "label"])
    docs = mark_fuzzy_duplicates(group.filter(pc.invert(is_label)).drop_columns([LABEL_OF]), labels)
    reasons = docs.column(REASON).to_pylist()
    clusters = docs.column(MINHASH_CLUSTER).to_pylist()
    previous = (
        docs.column(DUPLICATE_OF).to_pylist()
        if DUPLICATE_OF in docs.column_names
        else [None] * docs.num_rows
    )
    duplicate_of = [
        cluster if reason == FUZZY_DUPLICATE else prev
        for reason, cluster, prev in zip(reasons, clusters, previous, strict=True)
    ]
    return set_column(docs, DUPLICATE_OF, pa.array(duplicate_of, type=pa.string()))


def minhash_dedup(
    ds: ray.data.Dataset, params: MinHashDedupParams, shards: int
) -> ray.data.Dataset:
    """``ds`` with ``minhash_cluster`` on rows kept so far and near-duplicates rejected."""
    docs = ds.materialize()
    schema = docs.schema()
    if schema is None:
        return docs
    state = component_labels(docs, params, shards)
    labels = state.map_batches(
        partial(_label_rows, schema=schema.base_schema), batch_format="pyarrow"
    )
    both = docs.map_batches(_doc_rows, batch_format="pyarrow").union(labels)
    return map_shards(both, ID, _mark, shards)
