"""Real-text corpus shared by the curation benchmarks (read from ../shared/data, offline).

Documents come round-robin from three sources so any prefix mixes them: Project Gutenberg books
cut into chunks of ``PARAGRAPHS_PER_DOC`` paragraphs, the dolma Common Crawl sample (web pages
with boilerplate) and the NLTK US presidential speeches (whole files).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARAGRAPHS_PER_DOC = 20
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _jsonl_texts(path: Path) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line).get("text") or ""


def _gutenberg_chunks(max_per_book: int) -> Iterator[str]:
    # A few chunks from each book rather than whole books, so the sample spans many authors.
    for book in _jsonl_texts(DATA / "text/gutenberg_books/gutenberg_books.jsonl.gz"):
        paragraphs = _PARAGRAPH_BREAK.split(book.replace("\r\n", "\n"))
        for start in range(0, len(paragraphs), PARAGRAPHS_PER_DOC)[:max_per_book]:
            yield "\n\n".join(paragraphs[start : start + PARAGRAPHS_PER_DOC])


def _speeches() -> Iterator[str]:
    for path in sorted((DATA / "text/us_speeches_nltk").rglob("*.txt")):
        yield path.read_bytes().decode("latin-1")


def load_corpus(max_docs: int, max_chunks_per_book: int = 30) -> list[tuple[str, str]]:
    """Up to ``max_docs`` non-empty (source, text) documents, the sources interleaved."""
    streams: list[tuple[str, Iterator[str]]] = [
        ("gutenberg", _gutenberg_chunks(max_chunks_per_book)),
        ("dolma_cc", _jsonl_texts(next((DATA / "web/cc_dolma_sample").glob("*.jsonl.gz")))),
        ("speeches", _speeches()),
    ]
    docs: list[tuple[str, str]] = []
    while streams and len(docs) < max_docs:
        for stream in list(streams):
            text = next(stream[1], None)
            if text is None:
                streams.remove(stream)
            elif text.strip() and len(docs) < max_docs:
                docs.append((stream[0], text))
    return docs
