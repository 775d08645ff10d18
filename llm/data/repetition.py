"""Gopher repetition rules (Rae et al. 2021, table A1), defined as datatrove defines them.

The definitions follow datatrove so keep/drop decisions agree: paragraphs split on two or more
newlines of the stripped text, lines on runs of newlines; every fraction is over ``len(text)``;
the top n-gram counts its joined-with-spaces length times its count (even when it occurs once, so
very short documents fail); duplicated n-grams are counted greedily left to right, skipping the
words of a duplicate once counted, and their length is the words' characters without spaces.

datatrove builds each n-gram as a string for n = 2..10; here n-grams are 64-bit hashes computed
with numpy (``llm.data.ngrams``) and lengths come from cumulative sums, so the cost is a few vector
operations per n plus one Python step per *repeated* n-gram position.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import pyarrow as pa
from annotated_types import Ge, Le

from llm.data.block import DocumentBlock, Fraction
from llm.data.ngrams import cumulative_lengths, local_word_hashes, ngram_hashes, ngram_lengths
from llm.data.schema import mark_failures
from llm.data.words import document_words

TOP_N_GRAMS: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
DUP_N_GRAMS: tuple[tuple[int, float], ...] = (
    (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
)  # fmt: skip

_PARAGRAPH_RE = re.compile(r"\n{2,}")


def _paragraphs(stripped: str) -> list[str]:
    """Split at runs of two or more newlines (``_PARAGRAPH_RE``); str.split where no run is
    longer than two."""
    if "\n\n\n" in stripped:
        return _PARAGRAPH_RE.split(stripped)
    return stripped.split("\n\n")


def _lines(text: str) -> list[str]:
    """Split at runs of newlines, as ``re.split`` with ``\\n+`` does, four times faster: a run
    leaves an empty piece only at either end of the text."""
    lines = list(filter(None, text.split("\n")))
    if text[:1] == "\n":
        lines.insert(0, "")
    if text[-1:] == "\n":
        lines.append("")
    return lines


def find_duplicates(items: Iterable[str]) -> tuple[int, int]:
    """(number of items seen before, their total characters), counting each repeat."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def top_ngram_chars(hashes: np.ndarray, lengths: np.ndarray) -> int:
    """Characters covered by the most frequent n-gram (the first one seen on a tie in count).

    One plain sort (SIMD in numpy) instead of ``np.unique(return_index=True)``, whose stable
    argsort took twice as long: the first one seen among the most frequent is the first position
    holding any of them.
    """
    ordered = np.sort(hashes)
    starts_run = np.empty(len(ordered), dtype=bool)
    starts_run[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_run[1:])
    starts = np.flatnonzero(starts_run)
    counts = np.diff(starts, append=len(ordered))
    best = int(counts.max())
    if best == 1:
        position = 0  # all distinct: the first n-gram is the first seen
    else:
        values = ordered[starts[counts == best]]
        if len(values) == 1:
            position = int(np.argmax(hashes == values[0]))
        else:
            position = int(np.flatnonzero(np.isin(hashes, values))[0])
    return int(lengths[position]) * best


def repeated_positions(hashes: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Positions (ascending) whose n-gram occurs more than once, looking only at ``candidates``
    (ascending positions; None: all) — which must include every position of a repeated n-gram.

    An n-gram repeats when a sorted neighbour equals it; one argsort, no inverse index.
    """
    values = hashes if candidates is None else hashes[candidates]
    order = np.argsort(values)
    ordered = values[order]
    equal = ordered[1:] == ordered[:-1]
    repeated = np.zeros(len(ordered), dtype=bool)
    repeated[1:] = equal
    repeated[:-1] |= equal
    positions = np.sort(order[repeated])
    return positions if candidates is None else candidates[positions]


def duplicated_ngram_chars(
    hashes: np.ndarray, lengths: np.ndarray, n: int, repeated: np.ndarray | None = None
) -> int:
    """Characters of n-grams repeating an earlier one, scanning left to right.

    After a duplicate the scan jumps ``n`` words, so overlapping repeats are not counted twice.
    An n-gram that occurs once in the document never counts and never matters as "seen", so only
    positions of n-grams occurring more than once (``repeated``, computed when not given) are
    visited.
    """
    if repeated is None:
        repeated = repeated_positions(hashes)
    seen: set[int] = set()
    total = cursor = 0
    for position, value in zip(repeated.tolist(), hashes[repeated].tolist(), strict=True):
        if position < cursor:
            continue
        if value in seen:
            total += int(lengths[position])
            cursor = position + n
        else:
            seen.add(value)
            cursor = position + 1
    return total


# (n, the largest fraction of the text its n-grams may cover)
NgramLimit = tuple[Annotated[int, Ge(1), Le(100)], Fraction]


@dataclass(frozen=True)
class GopherRepetitionParams:
    """Gopher repetition rules (Rae et al. 2021, table A1), as datatrove defines them."""

    dup_line_frac: Fraction | None = 0.3
    dup_para_frac: Fraction | None = 0.3
    dup_line_char_frac: Fraction | None = 0.2
    dup_para_char_frac: Fraction | None = 0.2
    top_n_grams: list[NgramLimit] = field(default_factory=lambda: list(TOP_N_GRAMS))
    dup_n_grams: list[NgramLimit] = field(default_factory=lambda: list(DUP_N_GRAMS))


class GopherRepetitionFilter(DocumentBlock):
    """Rejects documents whose lines, paragraphs or word n-grams repeat too much.

    Every threshold is overridable; None (or 0, as in datatrove) switches a rule off, and an empty
    tuple switches off a family of n-gram rules. Reasons are ``gopher_repetition:<rule>`` with
    datatrove's rule names (``dup_para_frac``, ``top_2_gram``, ``duplicated_5_n_grams``, ...).
    """

    name = "gopher_repetition"
    kind = "gopher_repetition"
    Params = GopherRepetitionParams

    def __init__(
        self,
        dup_line_frac: float | None = 0.3,
        dup_para_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        dup_para_char_frac: float | None = 0.2,
        top_n_grams: Iterable[tuple[int, float]] = TOP_N_GRAMS,
        dup_n_grams: Iterable[tuple[int, float]] = DUP_N_GRAMS,
    ) -> None:
        self.dup_line_frac = dup_line_frac
        self.dup_para_frac = dup_para_frac
        self.dup_line_char_frac = dup_line_char_frac
        self.dup_para_char_frac = dup_para_char_frac
        self.top_n_grams = tuple(top_n_grams)
        self.dup_n_grams = tuple(dup_n_grams)

    def check(self, text: str) -> str | None:
        """The removal reason for ``text``, or None to keep it."""
        if not text:
            return None  # nothing repeats; LengthFilter is the step that removes empty documents
        failed = self._block_rule(text) or self._ngram_rule(text)
        return f"{self.name}:{failed}" if failed else None

    def apply(self, batch: pa.Table) -> pa.Table:
        """Mark kept rows that fail ``check``."""
        return mark_failures(batch, self.check)

    def _block_rule(self, text: str) -> str | None:
        paragraphs = _paragraphs(text.strip())
        count, chars = find_duplicates(paragraphs)
        if self.dup_para_frac and count / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac and chars / len(text) > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _lines(text)
        count, chars = find_duplicates(lines)
        if self.dup_line_frac and count / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac and chars / len(text) > self.dup_line_char_frac:
            return "dup_line_char_frac"
        return None

    def _ngram_rule(self, text: str) -> str | None:
        words = document_words(text)
        hashes = local_word_hashes(words)
        cumulative = cumulative_lengths(words)
        for n, limit in self.top_n_grams:
            grams = ngram_hashes(hashes, n)
            if (
                len(grams)
                and top_ngram_chars(grams, ngram_lengths(cumulative, n, 1)) / len(text) > limit
            ):
                return f"top_{n}_gram"
        # An n-gram that repeats starts with an m-gram (m < n) that repeats at the same position,
        # so positions are looked for among those of the longest shorter n-gram done so far.
        repeats: dict[int, np.ndarray] = {}
        for n, limit in self.dup_n_grams:
            grams = ngram_hashes(hashes, n)
            if not len(grams):
                continue
            shorter = [m for m in repeats if m < n]
            candidates = repeats[max(shorter)] if shorter else None
            if candidates is not None:
                candidates = candidates[candidates < len(grams)]
            if candidates is not None and not len(candidates):
                repeats[n] = candidates  # nothing repeats at n, nor at any longer n
                continue
            repeated = repeated_positions(grams, candidates)
            repeats[n] = repeated
            chars = duplicated_ngram_chars(grams, ngram_lengths(cumulative, n, 0), n, repeated)
            if chars / len(text) > limit:
                return f"duplicated_{n}_n_grams"
        return None
