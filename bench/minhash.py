"""MinHash near-duplicate detection: llmforge's pipeline against datasketch and rensa loops.

    .venv/bin/python -m bench.minhash [--originals 3000 --copies 1000]

Corpus: real documents (``bench._common``) plus planted copies of distinct originals, each with
random word substitutions at a rate aiming at one of ``LEVELS`` of Jaccard similarity to its
original (5-gram shingles survive an edit rate r with probability (1 - r)^5).

Both sides run in this one process on the same shingles (word 5-grams of ``normalized_words``),
the same shingle hashes, 128 permutations, llmforge's bands and rows (18 × 7), threshold 0.8; so
their signatures and LSH buckets are identical (the "llmforge" and "datasketch" rows agree pair
for pair):
- llmforge: ``signatures`` (the whole batch shingled, hashed and permuted with numpy: datasketch's
  values) → ``band_keys`` → ``candidate_pairs`` → ``cluster_documents``. Variants: star edges, no
  check ("llmforge", the job with ``verify: false``); every candidate pair checked by the
  signature estimate ("+verify") or by exact shingle-set Jaccard ("+exact", the false-positive
  check NeMo Curator and datatrove offer: the last line's figures); exact with ``ANCHORS`` per
  bucket ("+exact,anchors", the curate job's default).
- datasketch (the reference): per document, ``MinHash(hashfunc=...).update_batch`` over that
  document's shingle hashes, then ``MinHashLSH(params=(14, 9))`` ``query`` and ``insert``, then
  the same union-find. llmforge's shingle hash is its own (a polynomial over per-word hashes,
  vectorisable), not datasketch's default sha1 of each shingle string, so the reference gets the
  same values: llmforge's hashing run on one document at a time (its batch code, so no slower
  per byte than llmforge's), their low 32 bits handed to ``update_batch`` with ``hashfunc=int``,
  the fastest input it takes. A new ``MinHash`` per document draws its permutations again, as
  the plain loop does; "datasketch,reused-perms" passes one set of permutations to every
  ``MinHash`` instead (the strongest per-document datasketch loop found here; the last line
  has both ratios). "datasketch+sha1" is datasketch as its documentation shows it (shingle
  strings, sha1_hash32), for scale: other hash values, so other pairs.
- rensa (the fastest CPU MinHash found: Rust, SIMD, with Python bindings): its full-set R-MinHash
  over the same shingles (the strings of ``shingles``: rensa hashes tokens itself and has no
  shingler, so their making is counted, as for datasketch+sha1), the batch of sketches made in
  one ``RMinHash.from_token_sets`` call, then ``RMinHashLSH`` ``query`` and ``insert`` per
  document. rensa needs the band count to divide the permutations: 126 = 14 bands × 9 rows.
  Other hash values, so other pairs; scored against the same truth.

Times: wall clock, and CPU seconds of this process (steadier when others share the machine).
llmforge's include building its Arrow input table from the Python strings. Against rensa, both
are run a second time, alternated, after everything else, and each side's faster run counts
(``speedup_vs_rensa``): the first run in a fresh process pays the kernel for the memory it is
the first to touch (0.4 CPU-seconds of system time for llmforge here, none on a second run), and
llmforge runs first while rensa runs after datasketch's loops. The first runs' ratio is kept
beside it (``speedup_vs_rensa_first_runs``).

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
from functools import partial
from itertools import combinations
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH
from rensa import RMinHash, RMinHashLSH
from scipy import sparse

from bench._common import load_corpus
from llm.data.minhash import (
    ANCHORS,
    BANDS,
    NUM_PERM,
    ROWS,
    SEED,
    SHINGLE_SIZE,
    THRESHOLD,
    band_keys,
    candidate_pairs,
    cluster_documents,
    shingles,
    signatures,
    verify_pairs,
)
from llm.data.minhash_signatures import SCHEME, batch_shingles, permutations
from llm.data.minhash_verify import verify_pairs_exact
from llm.data.schema import DOC_SCHEMA

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
RENSA_BANDS, RENSA_ROWS = 14, 9  # rensa's band count must divide its permutations
Pair = tuple[int, int]
Seconds = tuple[float, float]  # wall clock, CPU time
T = TypeVar("T")


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


def _cluster(ids: list[str], make_pairs: Callable[[], pa.Table]) -> Result:
    pairs = make_pairs()
    edges = list(
        zip(pairs.column("id_a").to_pylist(), pairs.column("id_b").to_pylist(), strict=True)
    )
    return cluster_documents(ids, edges), edges


Result = tuple[dict[str, str], list[tuple[str, str]]]  # (clusters, the edges clustered)


def llmforge_clusters(ids: list[str], texts: list[str]) -> dict[str, tuple[Result, Seconds]]:
    """{variant: ((clusters, edges), seconds)} for llmforge without and with verification.

    The input table, signatures and band keys are made once and their time counted in every
    variant (the table too, though the curate job holds its documents as Arrow already).
    """
    batch, shared = timed(lambda: _signed_batch(ids, texts))
    keys, banding = timed(lambda: band_keys(batch))
    variants = {
        "llmforge": lambda: candidate_pairs(keys),
        "llmforge+verify": lambda: verify_pairs(candidate_pairs(keys, None), batch),
        "llmforge+exact": lambda: verify_pairs_exact(candidate_pairs(keys, None), batch),
        "llmforge+exact,anchors": lambda: verify_pairs_exact(candidate_pairs(keys, ANCHORS), batch),
    }
    results = {}
    for name, make_pairs in variants.items():
        result, seconds = timed(partial(_cluster, ids, make_pairs))
        results[name] = (result, _plus(shared, banding, seconds))
    return results


def llmforge_exact(ids: list[str], texts: list[str]) -> Result:
    """The "llmforge+exact" variant alone: signatures, bands, all pairs checked, clusters."""
    batch = _signed_batch(ids, texts)
    keys = band_keys(batch)
    return _cluster(ids, lambda: verify_pairs_exact(candidate_pairs(keys, None), batch))


def _signed_batch(ids: list[str], texts: list[str]) -> pa.Table:
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
    return signatures(batch, num_perm=NUM_PERM)


def _datasketch_loop(ids: list[str], texts: list[str], make: Callable[[str], MinHash]) -> Result:
    """The usual datasketch loop: MinHash each document, query the LSH index, insert it."""
    lsh = MinHashLSH(num_perm=NUM_PERM, params=(BANDS, ROWS))
    pairs: list[tuple[str, str]] = []
    for doc, text in zip(ids, texts, strict=True):
        minhash = make(text)
        pairs.extend((other, doc) for other in lsh.query(minhash))
        lsh.insert(doc, minhash)
    return cluster_documents(ids, pairs), pairs


def _same_hash_minhash(text: str, reuse: bool = False) -> MinHash:
    # llmforge's 64-bit shingle hashes of this one text; datasketch's hashfunc takes their low 32
    # bits (``int`` on the folded values: its fastest input), as llmforge's signatures do.
    hashes, _ = batch_shingles([text], SHINGLE_SIZE)
    shared = {"permutations": permutations(NUM_PERM, SEED), "scheme": SCHEME} if reuse else {}
    minhash = MinHash(num_perm=NUM_PERM, seed=SEED, hashfunc=int, **shared)
    minhash.update_batch((hashes & np.uint64(0xFFFFFFFF)).tolist())
    return minhash


def _sha1_minhash(text: str) -> MinHash:
    minhash = MinHash(num_perm=NUM_PERM, seed=SEED)  # datasketch's default: sha1_hash32
    minhash.update_batch([shingle.encode("utf-8") for shingle in shingles(text)])
    return minhash


def datasketch_clusters(ids: list[str], texts: list[str]) -> Result:
    """datasketch per document on llmforge's shingle hashes: the same signatures, bands, rows."""
    return _datasketch_loop(ids, texts, _same_hash_minhash)


def datasketch_reused_clusters(ids: list[str], texts: list[str]) -> Result:
    """As ``datasketch_clusters``, the permutations made once and handed to every MinHash."""
    return _datasketch_loop(ids, texts, partial(_same_hash_minhash, reuse=True))


def datasketch_sha1_clusters(ids: list[str], texts: list[str]) -> Result:
    """datasketch as its documentation shows it: shingle strings through sha1_hash32."""
    return _datasketch_loop(ids, texts, _sha1_minhash)


def rensa_clusters(ids: list[str], texts: list[str]) -> Result:
    """rensa's R-MinHash of each document's shingle strings, then its LSH: query, insert."""
    sketches = RMinHash.from_token_sets(
        [list(shingles(text)) for text in texts], RENSA_BANDS * RENSA_ROWS, SEED
    )
    lsh = RMinHashLSH(THRESHOLD, RENSA_BANDS * RENSA_ROWS, RENSA_BANDS)
    pairs: list[tuple[str, str]] = []
    for key, (doc, sketch) in enumerate(zip(ids, sketches, strict=True)):
        pairs.extend((ids[other], doc) for other in lsh.query(sketch))
        lsh.insert(key, sketch)
    return cluster_documents(ids, pairs), pairs


def timed(run: Callable[[], T]) -> tuple[T, Seconds]:
    """(what ``run`` returns, (wall-clock seconds, CPU seconds of this process) it took).

    CPU time is the steadier figure on a machine others share; Arrow's group-bys may use a second
    thread, which CPU time counts against llmforge.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, (time.perf_counter() - wall, time.process_time() - cpu)


def _plus(*parts: Seconds) -> Seconds:
    return sum(part[0] for part in parts), sum(part[1] for part in parts)


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

    # One-time set-up outside both timings: regex compilation, lazy imports (pyarrow's
    # group-by engine), llmforge's separator table.
    few = ["a b c d e f g", "a b c d e f h", "warm up, “once”"]
    llmforge_clusters(["w0", "w1", "w2"], few)
    datasketch_clusters(["w0", "w1", "w2"], few)
    rensa_clusters(["w0", "w1", "w2"], few)
    results = llmforge_clusters(ids, texts)
    results["datasketch"] = timed(lambda: datasketch_clusters(ids, texts))
    results["datasketch,reused-perms"] = timed(lambda: datasketch_reused_clusters(ids, texts))
    results["datasketch+sha1"] = timed(lambda: datasketch_sha1_clusters(ids, texts))
    results["rensa"] = timed(lambda: rensa_clusters(ids, texts))
    again = {
        "llmforge+exact": timed(lambda: llmforge_exact(ids, texts))[1],
        "rensa": timed(lambda: rensa_clusters(ids, texts))[1],
    }
    runs: dict[str, Any] = {
        name: {
            "seconds": seconds[0],
            "cpu_seconds": seconds[1],
            **score(cluster_pairs(clusters, index_of), truth),
            "edges": score(index_pairs(edges, index_of), truth),
            "planted": planted_recall(clusters, ids, args.copies, levels),
        }
        for name, ((clusters, edges), seconds) in results.items()
    }

    print(f"{len(texts)} documents ({args.copies} planted copies), {megabytes:.1f} MB; "
          f"{len(truth)} true pairs (exact Jaccard >= {THRESHOLD})")  # fmt: skip
    print(f"{'':24}{'seconds':>8}{'cpu s':>7}{'docs/s':>8}  pairs in one cluster: "
          f"{'n':>5}{'prec.':>7}{'recall':>7}  edges clustered: "
          f"{'n':>5}{'prec.':>7}{'recall':>7}")  # fmt: skip
    for name, run in runs.items():
        edges = run["edges"]
        print(f"{name:24}{run['seconds']:8.2f}{run['cpu_seconds']:7.2f}"
              f"{len(texts) / run['seconds']:8.1f}{'':22}"
              f"{run['pairs']:5}{run['precision']:7.3f}{run['recall']:7.3f}{'':18}"
              f"{edges['pairs']:5}{edges['precision']:7.3f}{edges['recall']:7.3f}")  # fmt: skip
    print("planted copies clustered with their original, by target Jaccard level:")
    print(f"{'':24}" + "".join(f"{level:>6}" for level in LEVELS))
    for name, run in runs.items():
        print(f"{name:24}" + "".join(f"{share:6.2f}" for share in run["planted"].values()))
    for name, seconds in again.items():
        print(f"{name + ', again':24}{seconds[0]:8.2f}{seconds[1]:7.2f}")
        runs[name]["again"] = {"seconds": round(seconds[0], 3), "cpu_seconds": round(seconds[1], 3)}
    print(json.dumps(summary(runs, len(texts), len(truth))))


def _figures(run: dict[str, Any]) -> dict[str, float]:
    return {
        "edge_precision": round(run["edges"]["precision"], 4),
        "edge_recall": round(run["edges"]["recall"], 4),
        "cluster_precision": round(run["precision"], 4),
        "cluster_recall": round(run["recall"], 4),
    }


def _best(run: dict[str, Any], figure: str) -> float:
    """The faster of a run and its second run."""
    return float(min(run[figure], run["again"][figure]))


def summary(runs: dict[str, Any], docs: int, true_pairs: int) -> dict[str, Any]:
    """The last line: llmforge+exact's pairs against datasketch's and rensa's speed, then the
    rest."""
    final, reference, rensa = runs["llmforge+exact"], runs["datasketch"], runs["rensa"]
    return {
        "speedup_vs_datasketch": round(reference["seconds"] / final["seconds"], 2),
        "speedup_vs_datasketch_cpu": round(reference["cpu_seconds"] / final["cpu_seconds"], 2),
        "speedup_vs_datasketch_reused_perms": round(
            runs["datasketch,reused-perms"]["seconds"] / final["seconds"], 2
        ),
        "speedup_vs_datasketch_sha1": round(
            runs["datasketch+sha1"]["seconds"] / final["seconds"], 2
        ),
        "speedup_vs_rensa": round(_best(rensa, "seconds") / _best(final, "seconds"), 2),
        "speedup_vs_rensa_cpu": round(_best(rensa, "cpu_seconds") / _best(final, "cpu_seconds"), 2),
        "speedup_vs_rensa_first_runs": round(rensa["seconds"] / final["seconds"], 2),
        "speedup_vs_rensa_first_runs_cpu": round(rensa["cpu_seconds"] / final["cpu_seconds"], 2),
        "precision": round(final["edges"]["precision"], 4),
        "recall": round(final["edges"]["recall"], 4),
        **_figures(final),
        "rensa_edge_precision": round(rensa["edges"]["precision"], 4),
        "rensa_edge_recall": round(rensa["edges"]["recall"], 4),
        "seconds": round(final["seconds"], 3),
        "cpu_seconds": round(final["cpu_seconds"], 3),
        "rensa_seconds": round(rensa["seconds"], 3),
        "rensa_cpu_seconds": round(rensa["cpu_seconds"], 3),
        "again": {name: runs[name]["again"] for name in ("llmforge+exact", "rensa")},
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
