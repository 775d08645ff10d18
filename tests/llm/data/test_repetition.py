import random
import re
from collections import Counter

import numpy as np
import pytest

from llm.data.filters import split_words
from llm.data.repetition import (
    GopherRepetitionFilter,
    _lines,
    _paragraphs,
    repeated_positions,
    top_ngram_chars,
)
from tests.llm.data.batches import make_batch


def reference_check(text: str) -> str | None:
    """datatrove's GopherRepetitionFilter.filter, string by string, with the default thresholds."""

    def find_duplicates(items: list[str]) -> tuple[int, int]:
        seen: set[str] = set()
        count = chars = 0
        for item in items:
            if item in seen:
                count, chars = count + 1, chars + len(item)
            else:
                seen.add(item)
        return count, chars

    paragraphs = re.split(r"\n{2,}", text.strip())
    count, chars = find_duplicates(paragraphs)
    if count / len(paragraphs) > 0.3:
        return "dup_para_frac"
    if chars / len(text) > 0.2:
        return "dup_para_char_frac"
    lines = re.split("\n+", text)
    count, chars = find_duplicates(lines)
    if count / len(lines) > 0.3:
        return "dup_line_frac"
    if chars / len(text) > 0.2:
        return "dup_line_char_frac"
    words = split_words(text)
    for n, limit in ((2, 0.2), (3, 0.18), (4, 0.16)):
        grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        if grams:
            top, times = Counter(grams).most_common(1)[0]
            if len(top) * times / len(text) > limit:
                return f"top_{n}_gram"
    for n, limit in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)):
        seen: set[str] = set()
        repeated = idx = 0
        while idx < len(words) - n + 1:
            gram = "".join(words[idx : idx + n])
            if gram in seen:
                repeated, idx = repeated + len(gram), idx + n
            else:
                seen.add(gram)
                idx += 1
        if repeated / len(text) > limit:
            return f"duplicated_{n}_n_grams"
    return None


def random_doc(rng: random.Random) -> str:
    vocab = [f"{w}{i}" for i, w in enumerate(["alpha", "beta", "gamma", "delta", "eps"] * 60)]
    sentences = [" ".join(rng.choices(vocab, k=rng.randint(5, 15))) + "." for _ in range(30)]
    picked = [rng.choice(sentences[: rng.randint(3, 30)]) for _ in range(rng.randint(5, 40))]
    separators = rng.choices([" ", "\n", "\n\n"], k=len(picked))
    return "".join(s + sep for s, sep in zip(picked, separators, strict=True))


def test_agrees_with_datatrove_reference_on_random_documents() -> None:
    rng = random.Random(7)
    docs = [random_doc(rng) for _ in range(300)]
    expected = [reference_check(doc) for doc in docs]
    got = [GopherRepetitionFilter().check(doc) for doc in docs]
    assert got == [f"gopher_repetition:{r}" if r else None for r in expected]
    assert len(set(expected)) >= 5  # the random set exercises several rules, and passes too


def only(**rules: object) -> GopherRepetitionFilter:
    off: dict[str, object] = {
        "dup_line_frac": None, "dup_para_frac": None, "dup_line_char_frac": None,
        "dup_para_char_frac": None, "top_n_grams": (), "dup_n_grams": (),
    }  # fmt: skip
    return GopherRepetitionFilter(**{**off, **rules})  # type: ignore[arg-type]


def unique_lines(k: int) -> list[str]:
    return [f"line {i} says something" for i in range(k)]


@pytest.mark.parametrize(("unique", "copies", "fails"), [(6, 4, False), (6, 5, True)])
def test_duplicate_line_fraction(unique: int, copies: int, fails: bool) -> None:
    text = "\n".join(
        unique_lines(unique) + ["again"] * copies
    )  # 3 repeats of 10 lines = 0.3 is kept
    assert (only(dup_line_frac=0.3).check(text) is not None) == fails


@pytest.mark.parametrize(("unique", "copies", "fails"), [(6, 4, False), (6, 5, True)])
def test_duplicate_paragraph_fraction(unique: int, copies: int, fails: bool) -> None:
    text = "\n\n".join(unique_lines(unique) + ["again"] * copies)
    assert (only(dup_para_frac=0.3).check(text) is not None) == fails


@pytest.mark.parametrize(("unique_chars", "fails"), [(58, False), (57, True)])
def test_duplicate_line_char_fraction(unique_chars: int, fails: bool) -> None:
    # 20 duplicated characters over 100 (kept, = 0.2) or 99 (removed).
    text = "u" * unique_chars + "\n" + "d" * 20 + "\n" + "d" * 20
    reason = only(dup_line_char_frac=0.2).check(text)
    assert reason == ("gopher_repetition:dup_line_char_frac" if fails else None)


def test_top_ngram_counts_single_occurrence_like_datatrove() -> None:
    assert only(top_n_grams=((2, 0.2),)).check("x y") == "gopher_repetition:top_2_gram"


def test_top_ngram_threshold() -> None:
    text = "aa bb aa bb cc dd ee ff gg hh ii jj kk ll"  # "aa bb" twice: 10 of 41 characters
    assert only(top_n_grams=((2, 10 / 41),)).check(text) is None
    assert only(top_n_grams=((2, 10 / 41 - 1e-9),)).check(text) == "gopher_repetition:top_2_gram"


def test_duplicated_ngram_threshold() -> None:
    text = "a b c d e a b c d e"  # the second 5-gram repeats the first: 5 of 19 characters
    assert only(dup_n_grams=((5, 5 / 19),)).check(text) is None
    reason = only(dup_n_grams=((5, 5 / 19 - 1e-9),)).check(text)
    assert reason == "gopher_repetition:duplicated_5_n_grams"


def test_natural_text_is_kept_and_spam_removed() -> None:
    prose = (
        "The committee met on Tuesday to review the budget. Several members raised concerns "
        "about transport costs, while others argued that the new library deserved priority. "
        "After a long discussion, they agreed to publish a revised plan next month."
    )
    spam = "Buy cheap watches now! " * 30
    batch = GopherRepetitionFilter().apply(make_batch([prose, spam, ""], [None, None, "empty"]))
    assert batch.column("reason").to_pylist() == [None, "gopher_repetition:top_2_gram", "empty"]


def test_long_document_is_fast() -> None:
    import time

    rng = random.Random(1)
    text = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(100_000))
    start = time.perf_counter()
    GopherRepetitionFilter(top_n_grams=()).check(text)
    assert time.perf_counter() - start < 3.0


def test_paragraph_and_line_splits_match_the_regexes_they_replace() -> None:
    rng = random.Random(11)
    texts = ["\n", "\n\n", "a\n", "\na", "a\n\n\nb\n\n", "a\n\n\n\n\nb", "x"]
    for _ in range(2000):
        texts.append("".join(rng.choices(["a", "bc", " ", "\n", "\n\n", "\n\n\n"], k=12)))
    for text in texts:
        assert _lines(text) == re.split(r"\n+", text), repr(text)
        stripped = text.strip()
        assert _paragraphs(stripped) == re.split(r"\n{2,}", stripped), repr(text)


def test_ngram_counts_match_numpy_unique() -> None:
    """The sort-based top n-gram and repeated positions against np.unique's definitions."""
    rng = np.random.default_rng(5)
    for size in [1, 2, 3, 5, 17, 200] * 60:
        hashes = rng.integers(0, rng.integers(1, 12), size=size).astype(np.uint64)
        lengths = rng.integers(1, 50, size=size)
        _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
        best = counts.max()
        assert top_ngram_chars(hashes, lengths) == lengths[first[counts == best].min()] * best
        _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
        expected = np.flatnonzero(counts[inverse] > 1)
        assert repeated_positions(hashes).tolist() == expected.tolist()
        candidates = np.flatnonzero(rng.random(size) < 0.7)
        candidates = np.union1d(candidates, expected)
        assert repeated_positions(hashes, candidates).tolist() == expected.tolist()
