"""Train a tokenizer from local text files in one process (``llmforge tokenizer-train``).

Reads Parquet, JSONL (plain or .gz) and plain-text files; holds out documents by a hash of
their position, as the token shards do by id, and measures compression on them.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from llm.tokenizer.bpe import EOS_TOKEN, save_tokenizer, train_bpe
from llm.tokenizer.shards import split_of

_JSONL = (".jsonl", ".jsonl.gz", ".json.gz")


def _files(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"input not found: {path}")


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    name = path.name
    if name.endswith(".parquet"):
        yield from pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    elif name.endswith(_JSONL):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line).get(text_field) or ""
    else:
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc


def read_texts(
    paths: Sequence[str | os.PathLike[str]], *, text_field: str = "text", limit: int | None = None
) -> Iterator[tuple[str, str]]:
    """(document key, text) of every non-empty document, in file order, at most `limit`."""
    count = 0
    for path in _files(paths):
        for i, text in enumerate(_read_file(path, text_field)):
            if limit is not None and count >= limit:
                return
            if text:
                count += 1
                yield f"{path}:{i}", text


def train_from_files(
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    vocab_size: int,
    special_tokens: Sequence[str] = (EOS_TOKEN,),
    pretokenizer: str = "gpt2",
    text_field: str = "text",
    max_docs: int | None = None,
    val_fraction: float = 0.05,
) -> dict[str, Any]:
    """Train on the files' documents minus a held-out part; save tokenizer.json; report."""
    train: list[str] = []
    val: list[str] = []
    for key, text in read_texts(paths, text_field=text_field, limit=max_docs):
        (val if split_of(key, val_fraction) == "val" else train).append(text)
    if not train:
        raise ValueError(f"empty corpus: no text in {[str(p) for p in paths]}")
    started = time.time()
    tok = train_bpe(
        train, vocab_size=vocab_size, special_tokens=special_tokens, pretokenizer=pretokenizer
    )
    seconds = time.time() - started
    save_tokenizer(tok, output)
    held_out = val or train  # a tiny corpus may hold nothing out; measure on what there is
    tokens = sum(len(e.ids) for e in tok.encode_batch(held_out, add_special_tokens=False))
    return {
        "output": str(output),
        "vocab_size": tok.get_vocab_size(),
        "train_documents": len(train),
        "val_documents": len(val),
        "train_seconds": round(seconds, 3),
        "bytes_per_token": round(sum(len(t.encode()) for t in held_out) / max(tokens, 1), 4),
        "bytes_per_token_on": "val" if val else "train",
    }
