import copy

import pyarrow as pa

from llm.data.stats import empty_counts, merge_counts, reason_counts
from tests.llm.data.batches import make_batch


def _check_adds_up(counts: dict) -> None:
    removed = counts["removed"].values()
    assert counts["documents"] == counts["kept"]["documents"] + sum(r["documents"] for r in removed)
    assert counts["bytes"] == counts["kept"]["bytes"] + sum(r["bytes"] for r in removed)


def test_reason_counts() -> None:
    batch = make_batch(
        ["héllo", "", "abc", "{bad", "日本"],
        reasons=[None, "empty", "gopher_quality:short_doc", "malformed: invalid json", None],
    )
    counts = reason_counts(batch)
    assert counts == {
        "documents": 5,
        "bytes": 6 + 0 + 3 + 4 + 6,
        "kept": {"documents": 2, "bytes": 12},
        "removed": {
            "empty": {"documents": 1, "bytes": 0},
            "gopher_quality:short_doc": {"documents": 1, "bytes": 3},
            "malformed: invalid json": {"documents": 1, "bytes": 4},
        },
    }
    _check_adds_up(counts)


def test_merge_counts_equals_counts_of_the_concatenated_batches() -> None:
    a = make_batch(["one", "two", "three"], reasons=[None, "empty", "exact_duplicate"])
    b = make_batch(["four", "five"], reasons=["exact_duplicate", "gopher_quality:long_doc"])
    counts_a, counts_b = reason_counts(a), reason_counts(b)
    before = copy.deepcopy((counts_a, counts_b))
    merged = merge_counts(counts_a, counts_b)
    assert merged == reason_counts(pa.concat_tables([a, b]))
    assert (counts_a, counts_b) == before
    assert merge_counts(empty_counts(), merged) == merged
    assert reason_counts(make_batch([])) == empty_counts()
    _check_adds_up(merged)
