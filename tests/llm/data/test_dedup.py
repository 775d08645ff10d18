import hashlib
import subprocess
import sys

import pyarrow as pa

from llm.data.dedup import add_text_hash, mark_exact_duplicates, normalize_for_hash, text_hash
from tests.llm.data.batches import make_batch


def test_normalize_for_hash() -> None:
    assert normalize_for_hash("  Hello\t\n  WORLD  ") == "hello world"
    # "é" precomposed and as e + combining accent normalise to the same NFC string.
    assert normalize_for_hash("Caf\u00e9") == normalize_for_hash("Cafe\u0301") == "caf\u00e9"


def test_text_hash_is_blake2b_of_normalized_text_and_stable_across_processes() -> None:
    expected = hashlib.blake2b(b"hello world", digest_size=16).hexdigest()
    assert text_hash("Hello   World\n") == expected
    assert len(expected) == 32
    code = "from llm.data.dedup import text_hash; print(text_hash('Hello World'))"
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed},
        )  # fmt: skip
        assert out.stdout.strip() == expected


def test_add_text_hash_skips_rejected_rows() -> None:
    batch = make_batch(["Same text", "same  TEXT", "other"], reasons=[None, None, "empty"])
    hashes = add_text_hash(batch)["text_hash"].to_pylist()
    assert hashes[0] == hashes[1] == text_hash("same text")
    assert hashes[2] is None
    assert add_text_hash(add_text_hash(batch)).column_names == [*batch.column_names, "text_hash"]


def _planted() -> pa.Table:
    return add_text_hash(
        make_batch(
            ["The Doc", "the doc ", "THE\n\tDOC", "unique text", "the doc"],
            ids=["b10", "a10", "a9", "u", "rej"],
            positions=["b.jsonl:1", "a.jsonl:10", "a.jsonl:9", "a.jsonl:2", "a.jsonl:1"],
            reasons=[None, None, None, None, "gopher_quality:short_doc"],
        )
    )


def test_planted_duplicates_keep_the_earliest_position() -> None:
    out = mark_exact_duplicates(_planted())
    rows = {row["id"]: row for row in out.to_pylist()}
    # a.jsonl:9 precedes a.jsonl:10 (numeric line order) and b.jsonl:1.
    assert rows["a9"]["reason"] is None and rows["a9"]["duplicate_of"] is None
    assert rows["a10"]["reason"] == rows["b10"]["reason"] == "exact_duplicate"
    assert rows["a10"]["duplicate_of"] == rows["b10"]["duplicate_of"] == "a9"
    assert rows["u"]["reason"] is None and rows["u"]["duplicate_of"] is None
    # Already rejected (so never hashed): untouched even though its text matches.
    assert rows["rej"]["reason"] == "gopher_quality:short_doc"
    assert rows["rej"]["duplicate_of"] is None


def test_kept_row_does_not_depend_on_row_order() -> None:
    batch = _planted()
    expected = sorted(mark_exact_duplicates(batch).to_pylist(), key=lambda row: row["id"])
    for order in ([4, 3, 2, 1, 0], [1, 0, 4, 2, 3], [2, 4, 0, 3, 1]):
        shuffled = mark_exact_duplicates(batch.take(order))
        assert sorted(shuffled.to_pylist(), key=lambda row: row["id"]) == expected


def test_ties_on_position_fall_back_to_id() -> None:
    batch = add_text_hash(make_batch(["x", "x"], ids=["z", "y"], positions=["p", "p"]))
    assert mark_exact_duplicates(batch)["duplicate_of"].to_pylist() == ["y", None]


def test_group_of_one_is_kept() -> None:
    batch = add_text_hash(make_batch(["alone"]))
    out = mark_exact_duplicates(batch)
    assert out["reason"].to_pylist() == [None]
    assert out["duplicate_of"].to_pylist() == [None]
