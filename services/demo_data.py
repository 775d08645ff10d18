"""Where the demo's corpus comes from: the user's, the shared sample, a public one, or offline text.

In order: ``--input``; the Common Crawl sample in ``../shared/data`` beside the checkout; a public
corpus downloaded over the network; and, with no network, the Python Language Reference prose
that ships inside CPython (``pydoc_data.topics``), cut into documents.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import httpx

CHECKOUT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = CHECKOUT.parent / "shared" / "data" / "web" / "cc_dolma_sample"
PUBLIC_CORPUS_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)


@dataclass(frozen=True)
class Corpus:
    path: str
    origin: str


def _write_jsonl(path: Path, docs: list[str], source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"id": f"{source}-{i:06d}", "text": text, "source": source}) + "\n")


def _paragraph_docs(text: str, min_chars: int = 400) -> list[str]:
    """Group consecutive paragraphs into documents of at least ``min_chars`` characters."""
    docs, current = [], ""
    for para in text.split("\n\n"):
        current = f"{current}\n\n{para}" if current else para
        if len(current) >= min_chars:
            docs.append(current.strip())
            current = ""
    if current.strip():
        docs.append(current.strip())
    return docs


def _download(workdir: Path, timeout_s: float = 10) -> Corpus | None:
    try:
        r = httpx.get(PUBLIC_CORPUS_URL, timeout=timeout_s, follow_redirects=True)
        r.raise_for_status()
    except httpx.HTTPError:
        return None
    path = workdir / "downloaded" / "tinyshakespeare.jsonl.gz"
    _write_jsonl(path, _paragraph_docs(r.text, min_chars=2000), "tinyshakespeare")
    return Corpus(str(path), f"downloaded from {PUBLIC_CORPUS_URL}")


def _python_docs(workdir: Path) -> Corpus:
    from pydoc_data.topics import topics

    docs = [t for t in topics.values() if len(t) > 200]
    path = workdir / "offline" / "python_reference.jsonl.gz"
    _write_jsonl(path, docs, "python-language-reference")
    return Corpus(
        str(path),
        "offline fallback: the Python Language Reference shipped in CPython "
        f"(pydoc_data.topics, {len(docs)} documents)",
    )


def resolve_corpus(user_input: str | None, workdir: Path, *, allow_download: bool = True) -> Corpus:
    if user_input:
        return Corpus(user_input, "given with --input")
    if SHARED_SAMPLE.is_dir():
        return Corpus(str(SHARED_SAMPLE), f"Common Crawl sample (allenai/dolma) at {SHARED_SAMPLE}")
    downloaded = _download(workdir) if allow_download else None
    return downloaded or _python_docs(workdir)
