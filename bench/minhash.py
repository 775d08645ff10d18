"""MinHash near-duplicate detection: llmforge's pipeline against a plain datasketch loop.

    .venv/bin/python -m bench.minhash [--originals 3000 --copies 1000]

Corpus: real documents (``bench._common``) plus planted copies of distinct originals, each with
random word substitutions at a rate aiming at one of ``LEVELS`` of Jaccard similarity to its
original (5-gram shingles survive an edit rate r with probability (1 - r)^5).

Both sides run in this one process on the same word 5-gram shingles (``llm.data.minhash``),
128 permutations, threshold 0.8:
- llmforge: ``signatures`` (all shingles of the batch hashed and permuted with numpy, the same
  values datasketch gives) → ``band_keys`` (14 × 9) → ``candidate_pairs`` → ``cluster_documents``:
  as the curate job runs it (star edges), with ``verify_pairs`` (signature estimate) on all
  candidate pairs, and with ``verify_pairs_exact`` (exact shingle-set Jaccard, the false-positive
  check NeMo Curator and datatrove offer) on all candidate pairs;
- datasketch: per document, ``MinHash.update_batch`` over the shingle strings, then
  ``MinHashLSH.query`` and ``insert`` (datasketch picks 9 × 13 for 0.8), then the same union-find.

Truth: every pair of documents whose exact shingle-set Jaccard is ≥ 0.8 (all pairs, through a
sparse document × shingle product). Scored: the pairs each method calls near-duplicates (the
edges it clusters: verified pairs, or datasketch's query hits; star edges say little), which the
last line reports for llmforge+exact; and, apart, every pair in the same final cluster. Clusters
are connected components, so chains of near-duplicates (the Gutenberg licence sections, index
pages) put pairs well below 0.8 in one cluster: that precision measures the chains, not the pair
test, and no pair test can raise it without giving up transitive dedup.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH
from scipy import sparse

from bench._common import load_corpus
from llm.data.minhash import (
    NUM_PERM,
    SHINGLE_SIZE,
    THRESHOLD,
    band_keys,
    candidate_pairs,
    cluster_documents,
    shingles,
    signatures,
    verify_pairs,
    verify_pairs_exact,
)
from llm.data.schema import DOC_SCHEMA

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
Pair = tuple[int, int]


def edit_rate(similarity: float) -> float:
    """Word substitution rate giving about this Jaccard similarity between copy and original."""
    surviving = 2 * similarity / (1 + similarity)  # J = s / (2 - s) for a shared share s
    return 1 - surviving ** (1 / SHINGLE_SIZE)


def plant_copies(texts: list[str], copies: int, seed: int = 0) -> tuple[list[str], list[float]]:
    """(copies, target level of each): copy i is ``texts[i]`` with words replaced at random.

    Each copy comes from a distinct original (copies <= len(texts)); the replacement words are
    drawn from a sample of the corpus, so copies read like the originals.
    """
    rng = random.Random(seed)
    vocabulary = [word for text in rng.sample(texts, 200) for word in text.split()]
    planted: list[str] = []
    levels: list[float] = []
    for index in range(copies):
        level = LEVELS[index % len(LEVELS)]
        rate = edit_rate(level)
        words = texts[index].split()
        planted.append(
            " ".join(rng.choice(vocabulary) if rng.random() < rate else w for w in words)
        )
        levels.append(level)
    return planted, levels


def exact_duplicate_pairs(texts: list[str]) -> set[Pair]:
    """All (i, j), i < j, with exact shingle-set Jaccard ≥ THRESHOLD."""
    ids: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for row, text in enumerate(texts):
        for shingle in shingles(text):
            rows.append(row)
            cols.append(ids.setdefault(shingle, len(ids)))
    docs = sparse.csr_matrix(
        (np.ones(len(rows), np.int32), (rows, cols)), shape=(len(texts), len(ids))
    )
    sizes = np.asarray(docs.sum(axis=1)).ravel()
    shared = sparse.triu(docs @ docs.T, k=1).tocoo()
    similarity = shared.data / (sizes[shared.row] + sizes[shared.col] - shared.data)
    hits = similarity >= THRESHOLD
    return set(zip(shared.row[hits].tolist(), shared.col[hits].tolist(), strict=True))


def cluster_pairs(clusters: dict[str, str], index_of: dict[str, int]) -> set[Pair]:
    """Every pair of documents sharing a final cluster, as sorted index pairs."""
    members: dict[str, list[int]] = defaultdict(list)
    for doc, label in clusters.items():
        members[label].append(index_of[doc])
    return {pair for group in members.values() for pair in combinations(sorted(group), 2)}


def index_pairs(edges: Iterable[tuple[str, str]], index_of: dict[str, int]) -> set[Pair]:
    """Edges as sorted index pairs."""
    pairs = ((index_of[a], index_of[b]) for a, b in edges)
    return {(i, j) if i < j else (j, i) for i, j in pairs}


def _cluster(ids: list[str], pairs: pa.Table) -> Result:
    edges = list(
        zip(pairs.column("id_a").to_pylist(), pairs.column("id_b").to_pylist(), strict=True)
    )
    return cluster_documents(ids, edges), edges


Result = tuple[dict[str, str], list[tuple[str, str]]]  # (clusters, the edges clustered)


def llmforge_clusters(ids: list[str], texts: list[str]) -> dict[str, tuple[Result, float]]:
    """{variant: ((clusters, edges), seconds)} for llmforge without and with verification.

    The signatures and band keys are computed once and their time counted in every variant.
    """
    started = time.perf_counter()
    batch = pa.table(
        {
            "id": ids,
            "text": texts,
            "source": ["bench"] * len(ids),
            "position": [""] * len(ids),
            "reason": pa.nulls(len(ids), pa.string()),
        },
        schema=DOC_SCHEMA,
    )
    batch = signatures(batch, num_perm=NUM_PERM)
    keys = band_keys(batch)
    shared = time.perf_counter() - started
    plain, plain_s = timed(lambda: _cluster(ids, candidate_pairs(keys)))
    verified, verified_s = timed(
        lambda: _cluster(ids, verify_pairs(candidate_pairs(keys, all_pairs=True), batch))
    )
    exact, exact_s = timed(
        lambda: _cluster(ids, verify_pairs_exact(candidate_pairs(keys, all_pairs=True), batch))
    )
    return {
        "llmforge": (plain, shared + plain_s),
        "llmforge+verify": (verified, shared + verified_s),
        "llmforge+exact": (exact, shared + exact_s),
    }


def datasketch_clusters(ids: list[str], texts: list[str]) -> Result:
    """The usual datasketch loop: MinHash each document, query the LSH index, insert it."""
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    pairs: list[tuple[str, str]] = []
    for doc, text in zip(ids, texts, strict=True):
        minhash = MinHash(num_perm=NUM_PERM)
        minhash.update_batch([shingle.encode("utf-8") for shingle in shingles(text)])
        pairs.extend((other, doc) for other in lsh.query(minhash))
        lsh.insert(doc, minhash)
    return cluster_documents(ids, pairs), pairs


def timed(run: Callable[[], Result]) -> tuple[Result, float]:
    """(what ``run`` returns, seconds it took)."""
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def score(predicted: set[Pair], truth: set[Pair]) -> dict[str, float]:
    hits = len(predicted & truth)
    return {
        "precision": hits / len(predicted) if predicted else 1.0,
        "recall": hits / len(truth) if truth else 1.0,
        "pairs": len(predicted),
    }


def planted_recall(
    clusters: dict[str, str], ids: list[str], copies: int, levels: list[float]
) -> dict[float, float]:
    """Per target level: share of planted copies clustered with their original."""
    found: dict[float, list[bool]] = defaultdict(list)
    for index, level in enumerate(levels):
        found[level].append(clusters[ids[index]] == clusters[ids[len(ids) - copies + index]])
    return {level: sum(hits) / len(hits) for level, hits in sorted(found.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--originals", type=int, default=3000)
    parser.add_argument("--copies", type=int, default=1000)
    args = parser.parse_args()
    originals = [text for _, text in load_corpus(args.originals)]
    planted, levels = plant_copies(originals, args.copies)
    texts = originals + planted
    ids = [f"d{index:06d}" for index in range(len(texts))]
    index_of = {doc: index for index, doc in enumerate(ids)}
    megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
    truth = exact_duplicate_pairs(texts)

    shingles("warm up")  # builds the punctuation table once, outside both timings
    results = llmforge_clusters(ids, texts)
    results["datasketch"] = timed(lambda: datasketch_clusters(ids, texts))
    runs: dict[str, Any] = {
        name: {
            "seconds": seconds,
            **score(cluster_pairs(clusters, index_of), truth),
            "edges": score(index_pairs(edges, index_of), truth),
            "planted": planted_recall(clusters, ids, args.copies, levels),
        }
        for name, ((clusters, edges), seconds) in results.items()
    }

    print(f"{len(texts)} documents ({args.copies} planted copies), {megabytes:.1f} MB; "
          f"{len(truth)} true pairs (exact Jaccard >= {THRESHOLD})")  # fmt: skip
    print(f"{'':16}{'seconds':>8}{'docs/s':>8}  pairs in one cluster: {'n':>5}{'prec.':>7}"
          f"{'recall':>7}  edges clustered: {'n':>5}{'prec.':>7}{'recall':>7}")  # fmt: skip
    for name, run in runs.items():
        edges = run["edges"]
        print(f"{name:16}{run['seconds']:8.2f}{len(texts) / run['seconds']:8.1f}{'':22}"
              f"{run['pairs']:5}{run['precision']:7.3f}{run['recall']:7.3f}{'':18}"
              f"{edges['pairs']:5}{edges['precision']:7.3f}{edges['recall']:7.3f}")  # fmt: skip
    print("planted copies clustered with their original, by target Jaccard level:")
    print(f"{'':16}" + "".join(f"{level:>6}" for level in LEVELS))
    for name, run in runs.items():
        print(f"{name:16}" + "".join(f"{share:6.2f}" for share in run["planted"].values()))
    print(json.dumps(summary(runs, len(texts), len(truth))))


def _figures(run: dict[str, Any]) -> dict[str, float]:
    return {
        "edge_precision": round(run["edges"]["precision"], 4),
        "edge_recall": round(run["edges"]["recall"], 4),
        "cluster_precision": round(run["precision"], 4),
        "cluster_recall": round(run["recall"], 4),
    }


def summary(runs: dict[str, Any], docs: int, true_pairs: int) -> dict[str, Any]:
    """The last line: llmforge+exact's pairs against datasketch's speed, then the rest."""
    final, reference = runs["llmforge+exact"], runs["datasketch"]
    return {
        "speedup_vs_datasketch": round(reference["seconds"] / final["seconds"], 2),
        "precision": round(final["edges"]["precision"], 4),
        "recall": round(final["edges"]["recall"], 4),
        **_figures(final),
        "variants": {
            name: {"speedup_vs_datasketch": round(reference["seconds"] / run["seconds"], 2)}
            | _figures(run)
            for name, run in runs.items()
            if name != "llmforge+exact"
        },
        "docs": docs,
        "true_pairs": true_pairs,
        "llmforge_docs_per_s": round(docs / final["seconds"], 1),
        "datasketch_docs_per_s": round(docs / reference["seconds"], 1),
    }


if __name__ == "__main__":
    main()
