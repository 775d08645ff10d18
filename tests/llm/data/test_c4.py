from pathlib import Path

import pytest

from llm.data.c4 import C4BadWordsFilter, C4QualityFilter
from llm.data.sentences import count_sentences
from tests.llm.data.batches import make_batch

GOOD = "This line has enough words."


def doc(*lines: str) -> str:
    return "\n".join(lines)


@pytest.mark.parametrize(("line", "count"), [
    ("One. Two! Three? Four.", 4),
    ("Mr. Smith met Dr. Jones at 5 p.m. today.", 1),
    ("J. R. R. Tolkien wrote it.", 1),
    ("He waited... Then he left.", 2),
    ("He waited... and waited.", 1),
    ("", 0),
])  # fmt: skip
def test_count_sentences(line: str, count: int) -> None:
    assert count_sentences(line) == count


def test_five_sentences_kept_four_rejected() -> None:
    c4 = C4QualityFilter()
    assert c4.check(doc(*[GOOD] * 5)) is None
    assert c4.check(doc(*[GOOD] * 4)) == "c4_quality:too_few_sentences"
    assert c4.check(doc("One is here. Two is here. Three is here.", GOOD, GOOD)) is None


@pytest.mark.parametrize("bad_line", [
    "No terminal punctuation here",
    "It trails off here...",
    "Two words.",
    "Please enable JavaScript to view this page.",
    "Read our privacy policy before you continue.",
    "This line has a " + "x" * 1001 + " word.",
])  # fmt: skip
def test_failing_lines_are_removed(bad_line: str) -> None:
    cleaned, reason = C4QualityFilter().clean(doc(GOOD, bad_line, *[GOOD] * 4))
    assert reason is None
    assert cleaned == doc(*[GOOD] * 5)


def test_citations_removed_before_punctuation_check() -> None:
    cleaned, reason = C4QualityFilter().clean(doc("A fact is stated here.[1]", *[GOOD] * 4))
    assert reason is None
    assert cleaned.splitlines()[0] == "A fact is stated here."


@pytest.mark.parametrize(("line", "reason"), [
    ("Lorem ipsum dolor sit amet.", "lorem_ipsum"),
    ("Call f{x} with care.", "curly_bracket"),
])  # fmt: skip
def test_page_rules_reject_the_document(line: str, reason: str) -> None:
    assert C4QualityFilter().check(doc(line, *[GOOD] * 5)) == f"c4_quality:{reason}"


def test_rules_can_be_switched_off() -> None:
    c4 = C4QualityFilter(filter_curly_bracket=False, min_num_sentences=-1, min_words_per_line=None)
    cleaned, reason = c4.clean(doc("Call f{x}.", "Ok."))
    assert (cleaned, reason) == (doc("Call f{x}.", "Ok."), None)


def test_apply_edits_kept_rows_only() -> None:
    text = doc("Menu", *[GOOD] * 5)
    batch = C4QualityFilter().apply(make_batch([text, text, "Short."], [None, "earlier", None]))
    assert batch.column("text").to_pylist() == [doc(*[GOOD] * 5), text, "Short."]
    assert batch.column("reason").to_pylist() == [None, "earlier", "c4_quality:too_few_sentences"]


def test_bad_words_match_whole_words_only() -> None:
    bad = C4BadWordsFilter()
    assert bad.check("What the fuck is this?") == "c4_badwords:has_bad_words"
    assert bad.check("Shit.") == "c4_badwords:has_bad_words"
    assert bad.check("Scunthorpe is a town; cocktail hour starts.") is None


def test_bad_words_language_and_custom_list(tmp_path: Path) -> None:
    words = tmp_path / "de.txt"
    words.write_text("scheisse\n\n", encoding="utf-8")
    bad = C4BadWordsFilter(word_lists={"de": words}, fail_on_missing_language=False)
    batch = make_batch(["So eine Scheisse!", "fuck", "fuck"]).append_column(
        "lang", [["de", "de", "fr"]]
    )
    assert (
        bad.apply(batch).column("reason").to_pylist() == ["c4_badwords:has_bad_words"] + [None] * 2
    )
    with pytest.raises(ValueError, match="no bad-words list"):
        C4BadWordsFilter().check("text", language="xx")


def test_bad_words_keep_fraction_is_deterministic_per_id() -> None:
    bad = C4BadWordsFilter(keep_fraction=0.5, seed=3)
    texts = ["shit happens"] * 400
    first = bad.apply(make_batch(texts)).column("reason").to_pylist()
    again = C4BadWordsFilter(keep_fraction=0.5, seed=3).apply(make_batch(texts))
    assert first == again.column("reason").to_pylist()
    assert 150 < first.count(None) < 250
