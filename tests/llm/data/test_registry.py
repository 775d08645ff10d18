"""The block registry: every block declares what the job spec is generated from, and its
funnel adds up."""

import dataclasses

import pytest

from llm.data.block import CorpusBlock, DocumentBlock
from llm.data.filters import LengthFilter
from llm.data.pii import PIIRedactor
from llm.data.registry import BLOCKS, document_block
from llm.data.stats import merge_counts
from tests.llm.data.batches import make_batch


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_every_block_declares_its_kind_and_frozen_params(kind: str) -> None:
    block = BLOCKS[kind]
    assert block.kind == kind
    assert dataclasses.is_dataclass(block.Params)
    assert block.Params.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert issubclass(block, DocumentBlock | CorpusBlock)
    # A block that can run on the corpus says what it removes there.
    if issubclass(block, CorpusBlock):
        assert block.corpus_reason


def test_document_block_builds_from_params_and_refuses_corpus_steps() -> None:
    block = document_block("length", LengthFilter.Params(min_chars=3, max_chars=5))
    assert isinstance(block, LengthFilter) and (block.min_chars, block.max_chars) == (3, 5)
    with pytest.raises(ValueError, match="not a per-document step"):
        document_block("exact_dedup", BLOCKS["exact_dedup"].Params())


def test_run_measures_the_funnel_on_rows_kept_before_the_step() -> None:
    batch = make_batch(["", "short", "long enough", "dropped"], reasons=[None, None, None, "x"])
    after, stats = LengthFilter(min_chars=6).run(batch)
    assert after.column("reason").to_pylist() == ["empty", "length:too_short", None, "x"]
    assert stats["step"] == "length" and stats["seconds"] >= 0
    assert stats["in"] == {"documents": 3, "bytes": 16}
    assert stats["kept"] == {"documents": 1, "bytes": 11}
    assert stats["removed"] == {
        "empty": {"documents": 1, "bytes": 0},
        "length:too_short": {"documents": 1, "bytes": 5},
    }


def test_an_editing_block_adds_its_own_counts_and_batches_add_up() -> None:
    redactor = PIIRedactor()
    _, first = redactor.run(make_batch(["mail me at a@example.com", "nothing"]))
    _, second = redactor.run(make_batch(["b@example.org or c@example.net"]))
    assert first["redacted"] == {"documents": 1, "by_type": {"EMAIL": 1}}
    total = merge_counts(first, second)
    assert total["redacted"] == {"documents": 2, "by_type": {"EMAIL": 3}}
    assert total["in"]["documents"] == total["kept"]["documents"] == 3


def test_funnels_of_different_steps_do_not_merge() -> None:
    _, length = LengthFilter().run(make_batch(["a"]))
    _, pii = PIIRedactor().run(make_batch(["a"]))
    with pytest.raises(ValueError, match="different steps"):
        merge_counts(length, pii)
