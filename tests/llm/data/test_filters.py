import gzip
import itertools
import json
import random
from pathlib import Path

import pytest

from llm.data import words as word_rules
from llm.data.filters import GopherQualityFilter, LengthFilter, split_words
from tests.llm.data.batches import make_batch

# Three-letter, alphabetic, no stop words: a doc built from these fails no rule but the one
# under test.
FILLER = ["cat", "dog", "sun", "red", "big", "sky"]


def words(n: int, stop_words: tuple[str, ...] = ("the", "and")) -> list[str]:
    """n words of length 3, the first of them the given stop words."""
    filler = [FILLER[i % len(FILLER)] for i in range(n - len(stop_words))]
    return [*stop_words, *filler]


def doc(n: int, extra: str = "", stop_words: tuple[str, ...] = ("the", "and")) -> str:
    return " ".join(words(n, stop_words)) + extra


GOPHER = GopherQualityFilter()


def test_split_words_follows_spacy_english_rules() -> None:
    text = (
        "I don't know, it's 1,000 U.S. e-mails... #tag (ok) and/or end. 'Dolly,' said Mr. "
        "Smith-Jones (aged 40%) at http://foo.com/bar?x=1. He cannot: 2413-3299 £5 x.Y"
    )
    assert split_words(text) == [
        "I", "do", "n't", "know", ",", "it", "'s", "1,000", "U.S.", "e", "-", "mails", "...",
        "#", "tag", "(", "ok", ")", "and/or", "end", ".", "'", "Dolly", ",", "'", "said", "Mr.",
        "Smith", "-", "Jones", "(", "aged", "40", "%", ")", "at", "http://foo.com/bar?x=1", ".",
        "He", "can", "not", ":", "2413", "-", "3299", "£", "5", "x.", "Y",
    ]  # fmt: skip


def test_split_words_agrees_with_spacy_on_real_web_text(shared_data: Path) -> None:
    """datatrove splits with spacy.blank("en"); the port must give the same tokens."""
    spacy = pytest.importorskip("spacy")  # in the dev extra
    nlp = spacy.blank("en")
    path = next((shared_data / "web" / "cc_dolma_sample").iterdir())
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in itertools.islice(lines, 200)]
    same = 0
    for text in texts:
        nlp.max_length = len(text) + 10
        theirs = [token.text.strip() for token in nlp.tokenizer(text) if token.text.strip()]
        same += split_words(text) == theirs
    assert same / len(texts) >= 0.97


def test_good_document_is_kept() -> None:
    assert GOPHER.check(doc(60)) is None


@pytest.mark.parametrize(("text", "reason"), [
    (doc(50), None),
    (doc(49), "short_doc"),
    (doc(50, " ! ? , ;"), None),  # punctuation tokens are not words for the length rule
    (doc(100_000), None),
    (doc(100_001), "long_doc"),
])  # fmt: skip
def test_document_word_count(text: str, reason: str | None) -> None:
    assert GOPHER.check(text) == (reason and f"gopher_quality:{reason}")


def test_average_word_length_bounds() -> None:
    assert GOPHER.check(doc(50)) is None  # mean exactly 3
    assert GOPHER.check(doc(49) + " ab") == "gopher_quality:below_avg_word_length"
    # 2 stop words of 3 letters + 14 of 11 + 34 of 10 letters: mean exactly 10.
    long_words = ["the", "and", *["abcdefghijk"] * 14, *["abcdefghij"] * 34]
    assert GOPHER.check(" ".join(long_words)) is None
    assert GOPHER.check(" ".join(long_words) + "x") == "gopher_quality:above_avg_word_length"


@pytest.mark.parametrize(
    ("symbol", "reason"), [("#", "too_many_hashes"), ("...", "too_many_ellipsis")]
)
def test_symbol_to_word_ratio(symbol: str, reason: str) -> None:
    # Each symbol is a token of its own: 6 of 60 tokens is exactly 0.1, 7 of 62 is over.
    assert GOPHER.check(f" {symbol} ".join(words(54)[:7]) + " " + doc(47)) is None
    too_many = f" {symbol} ".join(words(55)[:8]) + " " + doc(47)
    assert GOPHER.check(too_many) == f"gopher_quality:{reason}"


@pytest.mark.parametrize("bullet", ["•", "-"])
def test_bullet_lines_ratio(bullet: str) -> None:
    # "•" is not in datatrove's punctuation, so it counts as a one-letter word: longer words
    # keep the mean word length above 3.
    line = "the and river stone cloud light"
    lines = [line] + [f"{bullet} {line}" for _ in range(9)]
    assert GOPHER.check("\n".join(lines)) is None  # 9 of 10 lines: 0.9
    lines[0] = f"{bullet} {lines[0]}"
    assert GOPHER.check("\n".join(lines)) == "gopher_quality:too_many_bullets"


def test_ellipsis_lines_ratio() -> None:
    lines = [doc(8)] * 7 + [doc(8, "...")] * 3
    assert GOPHER.check("\n".join(lines)) is None  # 3 of 10 lines: 0.3
    lines[0] = doc(8, "…")
    assert GOPHER.check("\n".join(lines)) == "gopher_quality:too_many_end_ellipsis"


def test_alphabetic_words_ratio() -> None:
    # Numbers count as words (length 3) without a letter: 80 of 100 words is exactly 0.8.
    assert GOPHER.check(doc(80, " 123" * 20)) is None
    assert GOPHER.check(doc(80, " 123" * 21)) == "gopher_quality:below_alpha_words"


def test_stop_words() -> None:
    assert GOPHER.check(doc(60, stop_words=("the", "with"))) is None
    assert GOPHER.check(doc(60, stop_words=("the",))) == "gopher_quality:below_stop_words"
    # Case-sensitive, as in datatrove.
    assert GOPHER.check(doc(60, stop_words=("The", "And"))) == "gopher_quality:below_stop_words"
    # "At least two of" the words: one of them ten times is still one.
    assert GOPHER.check(doc(60, stop_words=("the",) * 10)) == "gopher_quality:below_stop_words"


def test_words_of_datatrove_punctuation_only_are_not_words() -> None:
    # 50 words plus tokens made only of punctuation: still 50 words, mean length 3.
    assert GOPHER.check(doc(50, " — … ” 。 ?!")) is None
    # A pound sign is not punctuation to datatrove: the 50th word (not a short document), one
    # letter long (so the mean falls below 3).
    assert GOPHER.check(doc(49, " £")) == "gopher_quality:below_avg_word_length"
    assert GOPHER.check(doc(49, " ?")) == "gopher_quality:short_doc"


def test_first_failing_rule_wins_and_rules_can_be_switched_off() -> None:
    assert GOPHER.check(doc(10, stop_words=())) == "gopher_quality:short_doc"
    lenient = GopherQualityFilter(min_doc_words=None, min_stop_words=1)
    assert lenient.check(doc(10, stop_words=("the",))) is None
    assert GopherQualityFilter(min_doc_words=5).check(doc(5)) is None


def test_apply_marks_kept_rows_and_leaves_rejected_rows_alone() -> None:
    batch = make_batch(
        [doc(60), "too short", "too short", doc(60)],
        reasons=[None, None, "malformed: invalid json", "empty"],
    )
    out = GOPHER.apply(batch)
    assert out.num_rows == 4
    assert out["reason"].to_pylist() == [
        None, "gopher_quality:short_doc", "malformed: invalid json", "empty",
    ]  # fmt: skip
    assert out["text"].equals(batch["text"])
    assert out["id"].equals(batch["id"])
    assert GOPHER.apply(make_batch([])).num_rows == 0


def test_length_filter() -> None:
    batch = make_batch(["", "  \n\t ", "a", "abcdef", "x" * 11], reasons=None)
    out = LengthFilter().apply(batch)
    assert out["reason"].to_pylist() == ["empty", "empty", None, None, None]
    strict = LengthFilter(min_chars=2, max_chars=10)
    assert strict.apply(batch)["reason"].to_pylist() == [
        "empty", "empty", "length:too_short", None, "length:too_long",
    ]  # fmt: skip
    rejected = make_batch([""], reasons=["exact_duplicate"])
    assert LengthFilter().apply(rejected)["reason"].to_pylist() == ["exact_duplicate"]
    assert {LengthFilter.name, GopherQualityFilter.name} == {"length", "gopher_quality"}


def _corpus_chunks(shared_data: Path) -> set[str]:
    path = next((shared_data / "web" / "cc_dolma_sample").iterdir())
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in itertools.islice(lines, 300)]
    books = sorted((shared_data / "text" / "gutenberg_nltk").glob("*.txt"))[:4]
    texts += [book.read_text(encoding="utf-8", errors="replace") for book in books]
    return {chunk for text in texts for chunk in text.split()}


def test_chunk_shortcuts_give_what_the_full_rules_give(shared_data: Path) -> None:
    """Every chunk of real web text and books, and random chunks built from the shortcuts'
    pieces (letters, marks, hyphens, possessives, special cases), split both ways."""
    chunks = _corpus_chunks(shared_data)
    rng = random.Random(3)
    pieces = [
        "word", "Word", "e", "mail", "s", "'s", "’S", "-", "--", "---", ".", "..", ",", ":", ")",
        "(", '"', "“", "”", "'", "’", "[", "]", "!", "?", ";", "etc", "Mr", "U.S", "can't", "é",
        "東京", "3", "x", "n't",
    ]  # fmt: skip
    chunks |= {"".join(rng.choices(pieces, k=rng.randint(1, 5))) for _ in range(20_000)}
    shortcut = 0
    for chunk in chunks:
        expected = word_rules._split_chunk(chunk)
        assert word_rules._chunk_tokens(chunk) == expected, chunk
        shortcut += word_rules._marked_word(chunk) is not None
    assert shortcut > 5_000  # the shortcut is taken, not only the full path
