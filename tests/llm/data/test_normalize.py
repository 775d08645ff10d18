import unicodedata

import pytest

from llm.data.normalize import Normalizer, collapse_whitespace
from tests.llm.data.batches import make_batch


def test_whitespace_collapses_within_lines_and_keeps_paragraphs() -> None:
    text = "  a \t b  \r\nc   \n\n\n\nd\u00a0e  "
    assert collapse_whitespace(text) == "a b\nc\n\nd e"


def test_unicode_form() -> None:
    decomposed = "cafe\u0301"
    assert Normalizer(fix_text=False).normalize(decomposed) == "café"
    assert Normalizer(fix_text=False, unicode_form=None).normalize(decomposed) == decomposed
    assert unicodedata.is_normalized("NFKC", Normalizer(unicode_form="NFKC").normalize("ﬁne"))


def test_mojibake_is_fixed_when_ftfy_is_installed() -> None:
    pytest.importorskip("ftfy")
    assert Normalizer().normalize("The cafÃ© is open") == "The café is open"
    assert Normalizer(fix_text=False).normalize("cafÃ©") == "cafÃ©"


def test_stages_can_be_switched_off() -> None:
    text = "a   b"
    assert Normalizer(collapse_spaces=False).normalize(text) == text


def test_apply_leaves_removed_rows_alone() -> None:
    batch = Normalizer().apply(make_batch(["a   b", "c   d"], [None, "earlier"]))
    assert batch.column("text").to_pylist() == ["a b", "c   d"]
