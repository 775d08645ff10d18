"""Text normalisation before the quality rules: mojibake repair, Unicode form, whitespace.

Whitespace is collapsed within lines only: runs of spaces and tabs become one space, trailing
spaces go, and three or more newlines become two, because the line- and paragraph-based rules
downstream (C4, Gopher repetition, FineWeb) read the newlines.
"""

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from llm.data.block import DocumentBlock
from llm.data.schema import TEXT, kept_mask, set_column

_HORIZONTAL_SPACE_RE = re.compile(r"[^\S\n]+")
_TRAILING_SPACE_RE = re.compile(r" +\n")
_BLANK_LINES_RE = re.compile(r"\n{3,}")

UnicodeForm = Literal["NFC", "NFD", "NFKC", "NFKD"]


def _fix_text(text: str) -> str:
    try:
        import ftfy
    except ImportError:  # ftfy is optional: without it, mojibake is left as it is
        return text
    return str(ftfy.fix_text(text, normalization=None))


def collapse_whitespace(text: str) -> str:
    """Horizontal whitespace runs to one space, no trailing spaces, at most one blank line."""
    text = _HORIZONTAL_SPACE_RE.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _TRAILING_SPACE_RE.sub("\n", text)
    return _BLANK_LINES_RE.sub("\n\n", text).strip()


@dataclass(frozen=True)
class NormalizeParams:
    """ftfy's mojibake repair, a Unicode normal form (None: none), whitespace collapsed."""

    fix_text: bool = True
    unicode_form: UnicodeForm | None = "NFC"
    collapse_spaces: bool = True


class Normalizer(DocumentBlock):
    """Rewrites the text of kept rows; each stage can be switched off."""

    name = "normalize"
    kind = "normalize"
    Params = NormalizeParams

    def __init__(
        self,
        fix_text: bool = True,
        unicode_form: UnicodeForm | None = "NFC",
        collapse_spaces: bool = True,
    ) -> None:
        self.fix_text = fix_text
        self.unicode_form = unicode_form
        self.collapse_spaces = collapse_spaces

    def normalize(self, text: str) -> str:
        """``text`` after the enabled stages, in order: ftfy, Unicode form, whitespace."""
        if self.fix_text:
            text = _fix_text(text)
        if self.unicode_form is not None:
            text = unicodedata.normalize(self.unicode_form, text)
        if self.collapse_spaces:
            text = collapse_whitespace(text)
        return text

    def apply(self, batch: pa.Table) -> pa.Table:
        """Normalise kept rows' text; removed rows are left as they were."""
        texts = batch.column(TEXT).to_pylist()
        keep = kept_mask(batch)
        new = [
            self.normalize(text) if kept else text for text, kept in zip(texts, keep, strict=True)
        ]
        return set_column(batch, TEXT, pa.array(new, type=pa.string()))
