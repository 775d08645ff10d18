"""FineWeb's quality rules (Penedo et al. 2024), as FineWeb was built with datatrove's filter.

Lines are split on "\\n" only (a trailing newline makes an empty last line, as in datatrove); the
duplicate-line ratio is over non-empty lines and the characters of the text without newlines.

Kept on purpose from the published recipe, where datatrove 0.10.1 has since changed its defaults:
a line ends in punctuation with one of ``. ' " ! ?`` (0.10.1: Unicode sentence terminators, not
quotes), blank lines count as lines, and the thresholds are inclusive (≤ 0.12, ≥ 0.67, ≥ 0.01;
0.10.1: strict). bench/curate_vs_datatrove.py sees these as its only disagreements: lines ending
in a closing quote, on dialogue-heavy book text.
"""

from dataclasses import dataclass
from typing import Annotated

import pyarrow as pa
from annotated_types import Ge

from llm.data.block import DocumentBlock, Fraction
from llm.data.repetition import find_duplicates
from llm.data.schema import mark_failures
from llm.data.words import document_words

STOP_CHARS = (".", "'", '"', "!", "?")


@dataclass(frozen=True)
class FineWebQualityParams:
    """FineWeb's quality rules (Penedo et al. 2024), as datatrove defines them."""

    line_punct_thr: Fraction | None = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: Fraction | None = 0.67
    short_line_length: Annotated[int, Ge(0)] = 30
    char_duplicates_ratio: Fraction | None = 0.01
    new_line_ratio: Annotated[float, Ge(0)] | None = 0.3


class FineWebQualityFilter(DocumentBlock):
    """Rejects list-like, short-line and repeated-line documents.

    Every threshold is overridable; None switches a rule off. Reasons are ``fineweb_quality:<rule>``
    with datatrove's names: ``line_punct_ratio``, ``short_line_ratio``, ``char_dup_ratio``,
    ``list_ratio``.
    """

    name = "fineweb_quality"
    kind = "fineweb_quality"
    Params = FineWebQualityParams

    def __init__(
        self,
        line_punct_thr: float | None = 0.12,
        line_punct_exclude_zero: bool = False,
        short_line_thr: float | None = 0.67,
        short_line_length: int = 30,
        char_duplicates_ratio: float | None = 0.01,
        new_line_ratio: float | None = 0.3,
    ) -> None:
        self.line_punct_thr = line_punct_thr
        self.line_punct_exclude_zero = line_punct_exclude_zero
        self.short_line_thr = short_line_thr
        self.short_line_length = short_line_length
        self.char_duplicates_ratio = char_duplicates_ratio
        self.new_line_ratio = new_line_ratio

    def check(self, text: str) -> str | None:
        """The removal reason for ``text``, or None to keep it."""
        failed = self._line_rule(text) or self._repetition_rule(text)
        return f"{self.name}:{failed}" if failed else None

    def apply(self, batch: pa.Table) -> pa.Table:
        """Mark kept rows that fail ``check``."""
        return mark_failures(batch, self.check)

    def _line_rule(self, text: str) -> str | None:
        lines = text.split("\n")
        ratio = sum(line.endswith(STOP_CHARS) for line in lines) / len(lines)
        if (
            self.line_punct_thr is not None
            and ratio <= self.line_punct_thr
            and not (ratio == 0 and self.line_punct_exclude_zero)
        ):
            return "line_punct_ratio"
        ratio = sum(len(line) <= self.short_line_length for line in lines) / len(lines)
        if self.short_line_thr is not None and ratio >= self.short_line_thr:
            return "short_line_ratio"
        return None

    def _repetition_rule(self, text: str) -> str | None:
        if self.char_duplicates_ratio is not None:
            chars = len(text.replace("\n", ""))
            duplicated = find_duplicates(line for line in text.split("\n") if line.strip())[1]
            # datatrove divides by zero on a text of newlines only; such a text has no duplicates.
            if chars and duplicated / chars >= self.char_duplicates_ratio:
                return "char_dup_ratio"
        if self.new_line_ratio is not None:
            words = len(document_words(text))
            if words and text.count("\n") / words > self.new_line_ratio:
                return "list_ratio"
        return None
