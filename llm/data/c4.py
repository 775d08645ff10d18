"""C4's heuristic rules (Raffel et al. 2020, section 2.2), defined as datatrove's C4 filters are.

``C4QualityFilter`` edits text as well as rejecting: lines that fail a line rule are removed and
the surviving lines are joined with newlines; a document is rejected when a document rule fires
(lorem ipsum, curly bracket) or fewer than ``min_num_sentences`` sentences survive.

``C4BadWordsFilter`` rejects documents containing a word from a per-language list. The reference
list is LDNOOBW's "List of Dirty, Naughty, Obscene, and Otherwise Bad Words" (the one C4 used);
with no network access we ship a short English excerpt of well-known profanities in
``llm/data/resources/badwords_en.txt``. Pass ``word_lists={"en": path, ...}`` to use the full lists.
"""

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import pyarrow as pa
from annotated_types import Ge, MinLen

from llm.data.block import DESCRIPTION, DocumentBlock, Fraction
from llm.data.schema import ID, TEXT, kept_mask, set_column, with_reasons
from llm.data.sentences import count_sentences

CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
ELLIPSIS = "..."
POLICY_SUBSTRINGS: tuple[str, ...] = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
    "use cookies",
)  # fmt: skip
RESOURCES = Path(__file__).parent / "resources"
DEFAULT_WORD_LISTS: Mapping[str, Path] = {"en": RESOURCES / "badwords_en.txt"}
# Scripts written without spaces between words: a bad word matches anywhere, not only as a word.
_NO_SPACE_LANGUAGES = frozenset({"ja", "th", "zh"})
_DROP_LINE = "drop_line"  # a line verdict: remove this line, keep looking at the document


def _enabled(limit: int | None) -> bool:
    # datatrove switches these rules off with -1; None does the same here.
    return limit is not None and limit >= 0


@dataclass(frozen=True)
class C4QualityParams:
    """C4's line and page rules (Raffel et al. 2020); edits text as well as rejecting."""

    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: Annotated[int, Ge(0)] | None = 5
    min_words_per_line: Annotated[int, Ge(0)] | None = 3
    max_word_length: Annotated[int, Ge(1)] | None = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class C4QualityFilter(DocumentBlock):
    """Removes lines that fail C4's line rules and rejects documents that fail its page rules."""

    name = "c4_quality"
    kind = "c4_quality"
    Params = C4QualityParams

    def __init__(
        self,
        remove_citations: bool = True,
        filter_no_terminal_punct: bool = True,
        min_num_sentences: int | None = 5,
        min_words_per_line: int | None = 3,
        max_word_length: int | None = 1000,
        filter_lorem_ipsum: bool = True,
        filter_javascript: bool = True,
        filter_curly_bracket: bool = True,
        filter_policy: bool = True,
    ) -> None:
        self.remove_citations = remove_citations
        self.filter_no_terminal_punct = filter_no_terminal_punct
        self.min_num_sentences = min_num_sentences
        self.min_words_per_line = min_words_per_line
        self.max_word_length = max_word_length
        self.filter_lorem_ipsum = filter_lorem_ipsum
        self.filter_javascript = filter_javascript
        self.filter_curly_bracket = filter_curly_bracket
        self.filter_policy = filter_policy

    def clean(self, text: str) -> tuple[str, str | None]:
        """(the text with failing lines removed, the removal reason or None to keep it)."""
        sentences = 0
        kept: list[str] = []
        for raw_line in text.splitlines():
            line, verdict = self._line_verdict(raw_line)
            if verdict == _DROP_LINE:
                continue
            if verdict is not None:
                return text, f"{self.name}:{verdict}"
            sentences += count_sentences(line)
            kept.append(line)
        if _enabled(self.min_num_sentences) and sentences < (self.min_num_sentences or 0):
            return text, f"{self.name}:too_few_sentences"
        return "\n".join(kept).strip(), None

    def check(self, text: str) -> str | None:
        """The removal reason for ``text``, or None to keep it (its lines may still be edited)."""
        return self.clean(text)[1]

    def apply(self, batch: pa.Table) -> pa.Table:
        """Edit the text of kept rows and mark those that fail."""
        texts = batch.column(TEXT).to_pylist()
        reasons: list[str | None] = []
        for row, keep in enumerate(kept_mask(batch)):
            if not keep:
                reasons.append(None)
                continue
            cleaned, reason = self.clean(texts[row])
            texts[row] = cleaned if reason is None else texts[row]
            reasons.append(reason)
        batch = set_column(batch, TEXT, pa.array(texts, type=pa.string()))
        return with_reasons(batch, reasons)

    def _line_verdict(self, raw_line: str) -> tuple[str, str | None]:
        """(the line after citation removal, None to keep it, _DROP_LINE, or a document reason)."""
        line = raw_line.strip()
        words = line.split()  # counted before citations are removed, as in datatrove
        if _enabled(self.max_word_length) and max(map(len, words), default=0) > (
            self.max_word_length or 0
        ):
            return line, _DROP_LINE
        if self.remove_citations:
            line = CITATION_RE.sub("", line)
        if self.filter_no_terminal_punct and (
            not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)
        ):
            return line, _DROP_LINE
        if _enabled(self.min_words_per_line) and len(words) < (self.min_words_per_line or 0):
            return line, _DROP_LINE
        lowered = line.lower()
        if self.filter_lorem_ipsum and "lorem ipsum" in lowered:
            return line, "lorem_ipsum"
        if self.filter_javascript and "javascript" in lowered:
            return line, _DROP_LINE
        if self.filter_curly_bracket and "{" in line:
            return line, "curly_bracket"
        if self.filter_policy and any(phrase in lowered for phrase in POLICY_SUBSTRINGS):
            return line, _DROP_LINE
        return line, None


def load_word_list(path: Path) -> frozenset[str]:
    """One lowercase word or phrase per line; blank lines are ignored."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip())


def bad_words_pattern(words: frozenset[str], language: str) -> re.Pattern[str]:
    """A regex finding any of ``words`` in lowercased text, flanked by non-word characters."""
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    if language in _NO_SPACE_LANGUAGES:
        return re.compile(alternatives)
    return re.compile(rf"(?:\W|^)(?:{alternatives})(?:\W|$)")


@dataclass(frozen=True)
class C4BadWordsParams:
    """C4's bad-words filter: documents containing a word from their language's list."""

    word_lists: dict[str, str] | None = field(
        default=None,
        metadata={DESCRIPTION: "language -> word list file; None: the shipped English list"},
    )
    keep_fraction: Fraction = 0.0
    fail_on_missing_language: bool = True
    seed: int = 0
    default_language: Annotated[str, MinLen(2)] = "en"


class C4BadWordsFilter(DocumentBlock):
    """Rejects documents containing a bad word for their language.

    The language is the row's ``lang`` annotation when present (from ``LanguageFilter``), else
    ``default_language``. ``keep_fraction`` keeps that share of matching documents; the draw is a
    hash of (seed, document id) rather than a random stream, so it does not depend on batch order.
    """

    name = "c4_badwords"
    kind = "c4_badwords"
    Params = C4BadWordsParams

    @classmethod
    def from_params(cls, params: C4BadWordsParams) -> "C4BadWordsFilter":
        lists = params.word_lists or DEFAULT_WORD_LISTS
        return cls(
            word_lists={language: Path(path) for language, path in lists.items()},
            keep_fraction=params.keep_fraction,
            fail_on_missing_language=params.fail_on_missing_language,
            seed=params.seed,
            default_language=params.default_language,
        )

    def __init__(
        self,
        word_lists: Mapping[str, Path] = DEFAULT_WORD_LISTS,
        keep_fraction: float = 0.0,
        fail_on_missing_language: bool = True,
        seed: int = 0,
        default_language: str = "en",
    ) -> None:
        self.word_lists = dict(word_lists)
        self.keep_fraction = keep_fraction
        self.fail_on_missing_language = fail_on_missing_language
        self.seed = seed
        self.default_language = default_language
        self._patterns: dict[str, re.Pattern[str] | None] = {}

    def check(self, text: str, language: str | None = None, doc_id: str = "") -> str | None:
        """The removal reason for ``text``, or None to keep it."""
        pattern = self._pattern(language or self.default_language)
        if pattern is None or pattern.search(text.lower()) is None:
            return None
        if self.keep_fraction > 0 and self._draw(doc_id) < self.keep_fraction:
            return None
        return f"{self.name}:has_bad_words"

    def apply(self, batch: pa.Table) -> pa.Table:
        """Mark kept rows that fail ``check``."""
        languages = (
            batch.column("lang").to_pylist()
            if "lang" in batch.column_names
            else [None] * batch.num_rows
        )
        rows = zip(
            batch.column(TEXT).to_pylist(),
            languages,
            batch.column(ID).to_pylist(),
            kept_mask(batch),
            strict=True,
        )
        reasons = [self.check(text, lang, doc) if keep else None for text, lang, doc, keep in rows]
        return with_reasons(batch, reasons)

    def _pattern(self, language: str) -> re.Pattern[str] | None:
        if language not in self._patterns:
            path = self.word_lists.get(language)
            if path is None:
                if self.fail_on_missing_language:
                    raise ValueError(
                        f"no bad-words list for language {language!r}; pass word_lists or "
                        "fail_on_missing_language=False"
                    )
                self._patterns[language] = None
            else:
                self._patterns[language] = bad_words_pattern(load_word_list(path), language)
        return self._patterns[language]

    def _draw(self, doc_id: str) -> float:
        digest = hashlib.blake2b(f"{self.seed}:{doc_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64
