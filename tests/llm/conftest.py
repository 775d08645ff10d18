"""Shared fixtures for tests/llm: real token-shard folders built with the project's own tools."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from llm.tokenizer.bpe import EOS_TOKEN, eos_id, save_tokenizer, train_bpe
from llm.tokenizer.shards import (
    encode_documents,
    split_of,
    token_dtype,
    write_manifest,
    write_shard,
)
from tests.shared import DATA

DATA = DATA
SHAKESPEARE = DATA / "text/tinyshakespeare/input.txt"
SHARDS_VOCAB = 512


def build_shard_folder(
    directory: Path,
    docs: Sequence[str],
    *,
    vocab_size: int = SHARDS_VOCAB,
    val_fraction: float = 0.1,
    special_tokens: Sequence[str] = (EOS_TOKEN,),
    sources: Sequence[str] | None = None,
) -> Path:
    """train_bpe -> tokenizer.json -> one shard per split (by split_of on "doc{i}") -> manifest.
    With ``sources`` (each document's source tag), one shard per split and source instead."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(docs, vocab_size=vocab_size, special_tokens=special_tokens)
    save_tokenizer(tok, directory / "tokenizer.json")
    eos, dtype = eos_id(tok), token_dtype(tok.get_vocab_size())
    tags = list(sources) if sources is not None else [None] * len(docs)
    if len(tags) != len(docs):
        raise ValueError(f"{len(tags)} sources for {len(docs)} documents")
    # untagged, both splits get a shard, empty or not
    by_shard: dict[tuple[str, str | None], list[str]] = (
        {("train", None): [], ("val", None): []} if sources is None else {}
    )
    for i, (doc, tag) in enumerate(zip(docs, tags, strict=True)):
        by_shard.setdefault((split_of(f"doc{i}", val_fraction), tag), []).append(doc)
    shards: dict[str, list[dict]] = {"train": [], "val": []}
    for (split, tag), texts in sorted(by_shard.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        name = f"{split}-{tag or '0000'}.bin"
        entry = write_shard(directory, name, encode_documents(tok, texts, eos, dtype))
        entry["documents"] = len(texts)
        if tag is not None:
            entry["source"] = tag
        shards[split].append(entry)
    write_manifest(
        directory,
        tokenizer_file="tokenizer.json",
        vocab_size=tok.get_vocab_size(),
        dtype=dtype,
        eos_id=eos,
        shards=shards,
        extra={"source": "tests/llm/conftest.py"},
    )
    return directory


def shakespeare_docs(max_chars: int = 200_000) -> list[str]:
    text = SHAKESPEARE.read_text(encoding="utf-8")[:max_chars]
    return [d for d in text.split("\n\n") if d.strip()]


@pytest.fixture(scope="session")
def shakespeare_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shard folder of the first ~200 KB of tinyshakespeare, vocab 512, val_fraction 0.1."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} absent")
    return build_shard_folder(tmp_path_factory.mktemp("shakespeare_shards"), shakespeare_docs())
