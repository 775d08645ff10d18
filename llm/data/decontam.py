"""Decontamination: find training documents that share a 13-gram with an evaluation set.

Following GPT-3 (Brown et al. 2020, appendix C): text is lowercased and stripped of punctuation,
split on whitespace, and any shared 13-gram counts as contamination. N-grams are stored as 64-bit
hashes (``llm.data.ngrams``), so an index of millions of eval n-grams stays a few tens of MB.
Evaluation texts shorter than ``n`` words contribute no n-gram and cannot match.
"""

from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa

from llm.data.ngrams import ngram_hashes, normalized_words, word_hashes
from llm.data.schema import TEXT, kept_mask, set_column, with_reasons

CONTAMINATED_WITH = "contaminated_with"
NGRAM_SIZE = 13


def text_ngrams(text: str, n: int = NGRAM_SIZE) -> np.ndarray:
    """The distinct hashed n-grams of the normalised text."""
    return np.unique(ngram_hashes(word_hashes(normalized_words(text)), n))


class NgramIndex:
    """The hashed n-grams of one evaluation set."""

    def __init__(self, name: str, texts: Iterable[str], n: int = NGRAM_SIZE) -> None:
        self.name = name
        self.n = n
        parts = [text_ngrams(text, n) for text in texts]
        self.hashes = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)

    def __len__(self) -> int:
        return len(self.hashes)

    def overlaps(self, grams: np.ndarray) -> bool:
        """True when any of ``grams`` (hashed n-grams of the same size) is in the index."""
        return bool(len(grams)) and bool(np.isin(grams, self.hashes, assume_unique=True).any())


class DecontaminationFilter:
    """Flags or rejects kept documents sharing an n-gram with any evaluation set.

    ``contaminated_with`` names the first matching set (in ``indexes`` order) or is null. With
    ``reject=True`` (the default) such documents also get ``decontaminated:<set name>``.
    """

    name = "decontaminated"

    def __init__(self, indexes: Iterable[NgramIndex], reject: bool = True) -> None:
        self.indexes = tuple(indexes)
        sizes = {index.n for index in self.indexes}
        if len(sizes) > 1:
            raise ValueError(f"all indexes must use the same n-gram size, got {sorted(sizes)}")
        self.n = sizes.pop() if sizes else NGRAM_SIZE
        self.reject = reject

    @classmethod
    def from_texts(
        cls, sets: Mapping[str, Iterable[str]], reject: bool = True
    ) -> "DecontaminationFilter":
        """Build one index per named evaluation set."""
        return cls([NgramIndex(name, texts) for name, texts in sets.items()], reject=reject)

    def match(self, text: str) -> str | None:
        """The name of the first evaluation set sharing an n-gram with ``text``, or None."""
        grams = text_ngrams(text, self.n)
        return next((index.name for index in self.indexes if index.overlaps(grams)), None)

    def check(self, text: str) -> str | None:
        """The removal reason for ``text``, or None to keep it."""
        matched = self.match(text)
        return f"{self.name}:{matched}" if matched and self.reject else None

    def apply(self, batch: pa.Table) -> pa.Table:
        """Annotate ``contaminated_with`` on kept rows; reject them too when ``reject``."""
        texts = batch.column(TEXT).to_pylist()
        matches = [
            self.match(text) if kept else None
            for text, kept in zip(texts, kept_mask(batch), strict=True)
        ]
        batch = set_column(batch, CONTAMINATED_WITH, pa.array(matches, type=pa.string()))
        if not self.reject:
            return batch
        return with_reasons(batch, [f"{self.name}:{m}" if m else None for m in matches])
