"""Document filters: each marks failing kept rows with a reason and leaves every other row alone."""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from operator import methodcaller
from typing import Annotated

import pyarrow as pa
import regex
from annotated_types import Ge, Gt, Le

from llm.data.block import DocumentBlock
from llm.data.schema import mark_failures
from llm.data.words import document_words, split_words

__all__ = ["split_words"]  # re-exported: callers import the word splitter from here

GOPHER_STOP_WORDS: frozenset[str] = frozenset(
    {"the", "be", "to", "of", "and", "that", "have", "with"}
)

# The characters datatrove 0.10.1 counts as punctuation (datatrove.utils.text PUNCTUATION_SET: its
# PUNCTUATION string and the Unicode sentence terminators): a token made only of these is not a
# word for the word-count and mean-length rules.
_PUNCTUATION = (
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
)
_CONTROL = "".join(chr(c) for c in (*range(0, 9), 11, 12, *range(13, 32), *range(127, 160)))
_SYMBOLS_ONLY = regex.compile(
    rf"[{regex.escape(_PUNCTUATION + _CONTROL)}\p{{Sentence_Terminal}}៖៙៚]+", regex.V1
)


def _is_symbol(token: str) -> bool:
    return _SYMBOLS_ONLY.fullmatch(token) is not None


# Every word classified so far, and which of them are symbols only / have no letter: a
# document's distinct words are classified with set operations (in C), and only words new to
# these sets take a Python step. Emptied together when they outgrow the bound.
_CLASSIFIED: set[str] = set()
_SYMBOL_WORDS: set[str] = set()
_LETTERLESS_WORDS: set[str] = set()
_CLASSIFIED_LIMIT = 1 << 20


def _classify(words: Iterable[str]) -> None:
    new = set(words).difference(_CLASSIFIED)
    if not new:
        return
    if len(_CLASSIFIED) + len(new) > _CLASSIFIED_LIMIT:
        for table in (_CLASSIFIED, _SYMBOL_WORDS, _LETTERLESS_WORDS):
            table.clear()
    for word in new:
        if _is_symbol(word):
            _SYMBOL_WORDS.add(word)
        if not word.isalpha() and not any(ch.isalpha() for ch in word):
            _LETTERLESS_WORDS.add(word)
    _CLASSIFIED.update(new)


_IS_BULLET = methodcaller("startswith", ("•", "-"))
_ENDS_IN_ELLIPSIS = methodcaller("endswith", ("...", "…"))


def _ratio(count: int, total: int) -> float:
    return count / total if total else 0.0


def _above(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def _below(value: float, limit: float | None) -> bool:
    return limit is not None and value < limit


@dataclass(frozen=True)
class LengthParams:
    """Rejects empty documents and those outside [min_chars, max_chars] characters."""

    min_chars: Annotated[int, Ge(0)] = 1
    max_chars: Annotated[int, Gt(0)] = 1_000_000


class LengthFilter(DocumentBlock):
    """Rejects empty or whitespace-only documents, and those outside [min_chars, max_chars]."""

    name = "length"
    kind = "length"
    Params = LengthParams

    def __init__(self, min_chars: int = 1, max_chars: int | None = None) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars

    def check(self, text: str) -> str | None:
        """The removal reason for ``text``, or None to keep it."""
        if not text.strip():
            return "empty"
        if len(text) < self.min_chars:
            return f"{self.name}:too_short"
        if _above(len(text), self.max_chars):
            return f"{self.name}:too_long"
        return None

    def apply(self, batch: pa.Table) -> pa.Table:
        """Mark kept rows that fail ``check``."""
        return mark_failures(batch, self.check)


@dataclass(frozen=True)
class GopherQualityParams:
    """Gopher quality rules (Rae et al. 2021); defaults are the published thresholds."""

    min_doc_words: Annotated[int, Ge(0)] = 50
    max_doc_words: Annotated[int, Gt(0)] = 100_000
    min_avg_word_length: Annotated[float, Ge(0)] = 3
    max_avg_word_length: Annotated[float, Gt(0)] = 10
    max_symbol_word_ratio: Annotated[float, Ge(0)] = 0.1
    max_bullet_lines_ratio: Annotated[float, Ge(0), Le(1)] = 0.9
    max_ellipsis_lines_ratio: Annotated[float, Ge(0), Le(1)] = 0.3
    max_non_alpha_words_ratio: Annotated[float, Ge(0), Le(1)] = 0.8
    min_stop_words: Annotated[int, Ge(0)] = 2


class GopherQualityFilter(DocumentBlock):
    """The Gopher quality rules (Rae et al. 2021, section A.1.1), as datatrove implements them.

    Every threshold is overridable; None switches a rule off. A failing document gets the reason
    of the first rule it fails, in the order the rules are listed in ``__init__``.
    """

    name = "gopher_quality"
    kind = "gopher_quality"
    Params = GopherQualityParams

    def __init__(
        self,
        min_doc_words: int | None = 50,
        max_doc_words: int | None = 100_000,
        min_avg_word_length: float | None = 3,
        max_avg_word_length: float | None = 10,
        max_symbol_word_ratio: float | None = 0.1,
        max_bullet_lines_ratio: float | None = 0.9,
        max_ellipsis_lines_ratio: float | None = 0.3,
        max_non_alpha_words_ratio: float | None = 0.8,
        min_stop_words: int | None = 2,
        stop_words: Iterable[str] = GOPHER_STOP_WORDS,
    ) -> None:
        self.min_doc_words = min_doc_words
        self.max_doc_words = max_doc_words
        self.min_avg_word_length = min_avg_word_length
        self.max_avg_word_length = max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        # Named as in datatrove, but it is a floor: this share of words must contain a letter.
        self.max_non_alpha_words_ratio = max_non_alpha_words_ratio
        self.min_stop_words = min_stop_words
        self.stop_words = frozenset(stop_words)

    def check(self, text: str) -> str | None:
        """The removal reason for ``text``, or None to keep it."""
        words = document_words(text)
        # The word rules only count, so each distinct word is classified once.
        counts = Counter(words)
        _classify(counts)
        failed = self._word_rule(words, counts) or self._symbol_rule(text, len(words))
        failed = failed or self._line_rule(text) or self._content_rule(counts, len(words))
        return f"{self.name}:{failed}" if failed else None

    def apply(self, batch: pa.Table) -> pa.Table:
        """Mark kept rows that fail ``check``."""
        return mark_failures(batch, self.check)

    def _word_rule(self, words: tuple[str, ...], counts: Counter[str]) -> str | None:
        symbols = [(word, counts[word]) for word in counts.keys() & _SYMBOL_WORDS]
        n_words = len(words) - sum(count for _, count in symbols)
        chars = sum(map(len, words)) - sum(len(word) * count for word, count in symbols)
        if _below(n_words, self.min_doc_words):
            return "short_doc"
        if _above(n_words, self.max_doc_words):
            return "long_doc"
        mean_length = _ratio(chars, n_words)
        if _below(mean_length, self.min_avg_word_length):
            return "below_avg_word_length"
        if _above(mean_length, self.max_avg_word_length):
            return "above_avg_word_length"
        return None

    def _symbol_rule(self, text: str, n_words: int) -> str | None:
        if _above(_ratio(text.count("#"), n_words), self.max_symbol_word_ratio):
            return "too_many_hashes"
        ellipses = text.count("...") + text.count("…")
        if _above(_ratio(ellipses, n_words), self.max_symbol_word_ratio):
            return "too_many_ellipsis"
        return None

    def _line_rule(self, text: str) -> str | None:
        lines = text.splitlines()
        # map over C methods: no Python step per line
        bullets = sum(map(_IS_BULLET, map(str.lstrip, lines)))
        if _above(_ratio(bullets, len(lines)), self.max_bullet_lines_ratio):
            return "too_many_bullets"
        trailing = sum(map(_ENDS_IN_ELLIPSIS, map(str.rstrip, lines)))
        if _above(_ratio(trailing, len(lines)), self.max_ellipsis_lines_ratio):
            return "too_many_end_ellipsis"
        return None

    def _content_rule(self, counts: Counter[str], n_words: int) -> str | None:
        alpha = n_words - sum(counts[word] for word in counts.keys() & _LETTERLESS_WORDS)
        if _below(_ratio(alpha, n_words), self.max_non_alpha_words_ratio):
            return "below_alpha_words"
        # "At least two of" the stop words (Gopher paper, datatrove): distinct words, not
        # occurrences. Case-sensitive, as in datatrove: a capitalised "The" is not counted.
        present = sum(word in counts for word in self.stop_words)
        if _below(present, self.min_stop_words):
            return "below_stop_words"
        return None
