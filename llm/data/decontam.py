"""Decontamination: find training documents that share a 13-gram with an evaluation set.

Following GPT-3 (Brown et al. 2020, appendix C): text is lowercased and stripped of punctuation,
split on whitespace, and any shared 13-gram counts as contamination. N-grams are stored as 64-bit
hashes (``llm.data.ngrams``), so an index of millions of eval n-grams stays a few tens of MB.
Evaluation texts shorter than ``n`` words contribute no n-gram and cannot match.
"""

import gzip
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
from annotated_types import Ge, Le, MinLen

from llm.data.block import DESCRIPTION, READS_FILE, DocumentBlock, Pattern
from llm.data.ngrams import ngram_hashes, normalized_words, word_hashes
from llm.data.schema import TEXT, kept_mask, set_column, with_reasons

CONTAMINATED_WITH = "contaminated_with"
NGRAM_SIZE = 13


def text_ngrams(text: str, n: int = NGRAM_SIZE) -> np.ndarray:
    """The distinct hashed n-grams of the normalised text."""
    return np.unique(ngram_hashes(word_hashes(normalized_words(text)), n))


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set to decontaminate against, read from a file."""

    name: Annotated[str, MinLen(1), Pattern(r"^[\w.-]+$")]
    path: str = field(
        metadata={
            DESCRIPTION: "JSONL (optionally .gz) or plain text, one example a line",
            READS_FILE: True,
        }
    )
    fields: Annotated[list[str], MinLen(1)] = field(
        default_factory=lambda: ["text"], metadata={DESCRIPTION: "JSONL fields joined per line"}
    )


@dataclass(frozen=True)
class DecontaminateParams:
    """Rejects documents sharing an n-gram with an evaluation set (GPT-3, appendix C)."""

    eval_sets: Annotated[list[EvalSet], MinLen(1)]
    n: Annotated[int, Ge(1), Le(64)] = NGRAM_SIZE
    reject: bool = True


def eval_set_texts(eval_set: EvalSet) -> Iterator[str]:
    """One text per line: the named JSONL fields joined, or the line itself for plain text."""
    opener = gzip.open if eval_set.path.endswith(".gz") else open
    is_jsonl = eval_set.path.removesuffix(".gz").endswith((".jsonl", ".json"))
    with opener(eval_set.path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            if not is_jsonl:
                yield line
                continue
            record = json.loads(line)
            values = [record.get(name) for name in eval_set.fields]
            yield " ".join(_flatten(value) for value in values if value is not None)


def _flatten(value: Any) -> str:
    # ARC-style records nest their choices; every string inside counts as eval text.
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_flatten(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_flatten(v) for v in value)
    return str(value)


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


class DecontaminationFilter(DocumentBlock):
    """Flags or rejects kept documents sharing an n-gram with any evaluation set.

    ``contaminated_with`` names the first matching set (in ``indexes`` order) or is null. With
    ``reject=True`` (the default) such documents also get ``decontaminated:<set name>``.
    """

    name = "decontaminated"
    kind = "decontaminate"
    Params = DecontaminateParams

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

    @classmethod
    def from_params(cls, params: DecontaminateParams) -> "DecontaminationFilter":
        """One index per evaluation set, read from its file."""
        indexes = [NgramIndex(s.name, eval_set_texts(s), n=params.n) for s in params.eval_sets]
        return cls(indexes, reject=params.reject)

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
