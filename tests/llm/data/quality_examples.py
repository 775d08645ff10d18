"""Real positive and negative example sets for the quality-classifier tests.

Positive: Reuters-21578 news stories of at least 100 words (edited prose). Negative: web text
that is mostly navigation and boilerplate: trafilatura's whole-page extractions, and the dolma
Common Crawl sample's documents that the Gopher quality rules reject.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm.data.filters import GopherQualityFilter

REUTERS = Path("text") / "reuters21578" / "reuters21578.jsonl.gz"
PAGES = Path("web") / "trafilatura_pages" / "pages_text.jsonl.gz"
DOLMA = Path("web") / "cc_dolma_sample" / "CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"


def records(path: Path) -> Iterator[dict[str, object]]:
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        yield from (json.loads(line) for line in lines)


def reuters_stories(shared: Path, skip: int = 0, limit: int = 400) -> list[str]:
    """News stories of at least 100 words, after the first ``skip`` such stories."""
    texts = (r.get("text") for r in records(shared / REUTERS))
    long = [t for t in texts if isinstance(t, str) and len(t.split()) >= 100]
    return long[skip : skip + limit]


def boilerplate_pages(shared: Path, limit: int = 400) -> list[str]:
    """Whole-page web text (menus, footers) and dolma documents the Gopher rules reject."""
    gopher = GopherQualityFilter()
    pages = [str(r["text"]) for r in records(shared / PAGES) if r.get("text")][: limit // 2]
    rejected = [str(r["text"]) for r in records(shared / DOLMA) if gopher.check(str(r["text"]))]
    return pages + rejected[: limit - len(pages)]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: text}) + "\n" for text in texts))
    return path
