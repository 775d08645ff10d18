"""The curate job's MinHash dedup on local Ray, against the library run in one process.

Real dolma documents, each planted once more with words replaced: some copies stay above the
0.8 Jaccard threshold, others fall just below it (about 0.74), where the default 18 × 7 LSH
bands still propose nine in ten of them. With the exact check (the default) the job's clusters
are those of the pairs ``verify_pairs_exact`` keeps in one process, and no planted pair below
the threshold is merged; without the check, every proposed pair is.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.specs import CurateSpec
from llm.data.minhash import (
    ANCHORS,
    band_keys,
    candidate_pairs,
    cluster_documents,
    jaccard,
    shingles,
    signatures,
)
from llm.data.minhash_verify import verify_pairs_exact
from ray_jobs.curate.job import run
from tests.llm.data.batches import make_batch

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("shared_ray")]
BASES = 40
# Word substitution rates: 5-gram Jaccard about 0.93 and 0.74 (a shingle survives (1 - r)^5).
ABOVE, BELOW = 0.007, 0.03


def _copy(text: str, rate: float, rng: random.Random) -> str:
    # Unique replacement words: every shingle they touch is new, as the rate intends.
    words = text.split()
    return " ".join(f"edit{rng.random():.9f}" if rng.random() < rate else w for w in words)


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    dolma = next((shared_data / "web" / "cc_dolma_sample").iterdir())
    with gzip.open(dolma, "rt", encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines]
    bases = [text for text in texts if len(text.split()) > 300][:BASES]
    rng = random.Random(7)
    docs = {f"a-{i:03d}": text for i, text in enumerate(bases)}
    for i, text in enumerate(bases):
        docs[f"b-{i:03d}"] = _copy(text, ABOVE if i % 2 else BELOW, rng)
    root = tmp_path_factory.mktemp("fuzzy-in")
    items = list(docs.items())
    for name, part in (("originals", items[:BASES]), ("copies", items[BASES:])):
        # Originals and copies in different files: pairs meet across read tasks.
        records = [json.dumps({"id": doc, "text": text}) for doc, text in part]
        (root / f"{name}.jsonl").write_text("\n".join(records) + "\n")
    return {"root": root, "docs": docs}


def _run(corpus: dict[str, Any], out: Path, **step: Any) -> dict[str, dict[str, Any]]:
    spec = CurateSpec.model_validate(
        {
            "input": str(corpus["root"]),
            "output": str(out),
            "steps": [{"kind": "minhash_dedup", **step}],
            "parts_per_file": 2,
        }
    )
    stats = run(spec)["stats"]
    rows = pq.read_table(out / "data").to_pylist() + pq.read_table(out / "rejected").to_pylist()
    assert stats["documents"] == len(rows) == len(corpus["docs"])
    return {row["id"]: row for row in rows}


def _library_pairs(docs: dict[str, str]) -> tuple[set[tuple[str, str]], pa.Table]:
    """(every LSH candidate pair, the pairs the exact check keeps) in one process, as the job's
    default settings run them."""
    batch = signatures(make_batch(list(docs.values()), ids=list(docs)))
    keys = band_keys(batch)
    everything = candidate_pairs(keys, anchors=None)
    pairs = set(zip(everything["id_a"].to_pylist(), everything["id_b"].to_pylist(), strict=True))
    return pairs, verify_pairs_exact(candidate_pairs(keys, anchors=ANCHORS), batch)


def _clusters(rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {doc: row["minhash_cluster"] for doc, row in rows.items()}


def _planted_below(docs: dict[str, str], candidates: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The planted (original, copy) pairs below the threshold that LSH proposes."""
    sets = {doc: shingles(text) for doc, text in docs.items()}
    planted = {(f"a-{i:03d}", f"b-{i:03d}") for i in range(0, BASES, 2)}
    below = {(a, b) for a, b in planted & candidates if jaccard(sets[a], sets[b]) < 0.8}
    assert len(below) >= 3, "too few pairs to tell whether the check works"
    return below


def test_verified_job_merges_what_the_library_merges(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    docs = corpus["docs"]
    sets = {doc: shingles(text) for doc, text in docs.items()}
    candidates, verified = _library_pairs(docs)
    pairs = list(zip(verified["id_a"].to_pylist(), verified["id_b"].to_pylist(), strict=True))
    assert pairs and all(jaccard(sets[a], sets[b]) >= 0.8 for a, b in pairs)

    rows = _run(corpus, tmp_path / "verified")
    clusters = _clusters(rows)
    # The job's clusters are the library's: the same exact check on the same candidate pairs.
    assert clusters == cluster_documents(docs, pairs)
    assert not any(clusters[a] == clusters[b] for a, b in _planted_below(docs, candidates))
    above = {(a, b) for a, b in candidates if jaccard(sets[a], sets[b]) >= 0.8}
    assert len(above) >= 10 and all(clusters[a] == clusters[b] for a, b in above)
    # Each rejected near-duplicate names the document kept for its cluster.
    rejected = {doc: row for doc, row in rows.items() if row.get("reason") is not None}
    assert {row["reason"] for row in rejected.values()} == {"minhash_duplicate"}
    for doc, row in rejected.items():
        kept = row["duplicate_of"]
        assert kept == clusters[doc] != doc and rows[kept].get("reason") is None


def test_unverified_job_merges_pairs_below_the_threshold(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    docs = corpus["docs"]
    candidates, _ = _library_pairs(docs)
    clusters = _clusters(_run(corpus, tmp_path / "unverified", verify=False))
    assert all(clusters[a] == clusters[b] for a, b in candidates)
    assert all(clusters[a] == clusters[b] for a, b in _planted_below(docs, candidates))


def test_a_corpus_without_near_duplicates_keeps_everything(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    # The verification shuffles then carry no rows at all.
    originals = dict(list(corpus["docs"].items())[:6])
    candidates, _ = _library_pairs(originals)
    assert not candidates
    root = tmp_path / "in"
    root.mkdir()
    records = [json.dumps({"id": doc, "text": text}) for doc, text in originals.items()]
    (root / "docs.jsonl").write_text("\n".join(records) + "\n")
    rows = _run({"root": root, "docs": originals}, tmp_path / "out")
    assert _clusters(rows) == {doc: doc for doc in originals}
