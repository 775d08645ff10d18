"""Tokenize a curated corpus on Ray Data: train a byte-level BPE, encode to token shards.

Input and output are folders or ``s3://`` URIs (``llm.storage``). The tokenizer is trained on a
uniform sample drawn in parallel by the workers (only the sample reaches the driver) and stored
with the shards; encoding runs as one Ray task per block, each writing whole shards straight to
the output and returning their entries, from which the driver writes ``manifest.json`` (after
the shards) and ``stats.json``.

Every shard holds one source's documents: with ``input``, the curated documents' ``source``
tags; with ``inputs``, the name each corpus is given. One tokenizer serves all sources.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from contracts.specs import TokenizeSpec
from llm import storage
from llm.tokenizer.bpe import eos_id, file_sha256, load_tokenizer, save_tokenizer, train_bpe
from llm.tokenizer.fast import Encoder, document_encoder
from llm.tokenizer.shards import (
    DEFAULT_SOURCE,
    MANIFEST_FILE,
    split_of,
    token_dtype,
    write_manifest,
    write_shard,
)
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray, node_id
from ray_jobs.entrypoint import JobError
from ray_jobs.reporting import report

TOKENIZER_FILE = "tokenizer.json"
# One encoder per worker process and tokenizer (keyed by its hash, so a rewritten file at the
# same URI is never encoded with a stale vocabulary), not one per batch.
_encoders: dict[tuple[str, str], Encoder] = {}


def _node_copy(uri: str, sha256: str) -> Path:
    """This node's copy of the tokenizer at ``uri`` (named by its hash), fetched once."""
    path = storage.scratch("tokenizers") / f"{sha256}.json"
    if not path.is_file():
        storage.download(uri, path)
    return path


def _worker_encoder(uri: str, sha256: str, vocab_size: int, fast: bool) -> Encoder:
    key = (uri, sha256)
    if key not in _encoders:
        path = _node_copy(uri, sha256)
        _encoders[key] = document_encoder(path, token_dtype(vocab_size), allow_fast=fast)[0]
    return _encoders[key]


def _encode_block(
    batch: pa.Table,
    *,
    out: str,
    tokenizer_sha256: str,
    val_fraction: float,
    vocab_size: int,
    fast: bool,
) -> pa.Table:
    """Encode a batch into one shard per split, written straight to ``out``; their entries,
    with which token ids occur (a bitmap, so the driver never reads a shard back)."""
    uri = storage.join(out, TOKENIZER_FILE)
    encode = _worker_encoder(uri, tokenizer_sha256, vocab_size, fast)
    ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
    sources = batch.column("source").to_pylist()
    # UTF-8 sizes from Arrow's offsets, not by encoding every text again
    sizes = pc.binary_length(batch.column("text")).to_pylist()
    splits = [split_of(i, val_fraction) for i in ids]
    rows: list[dict[str, Any]] = []
    for source in sorted(set(sources)):
        # named by the source and the block's first and last ids: unique across inputs
        name = f"{source}|{ids[0]}|{ids[-1]}|{len(ids)}"
        key = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
        for split in ("train", "val"):
            chosen = [
                row
                for row, (s, where) in enumerate(zip(sources, splits, strict=True))
                if s == source and where == split
            ]
            if not chosen:
                continue
            docs = [texts[row] for row in chosen]
            tokens = encode(docs)
            entry = write_shard(out, f"{split}-{key}.bin", tokens)
            seen = np.zeros(vocab_size, dtype=bool)
            seen[tokens] = True
            rows.append(
                {
                    **entry,
                    "split": split,
                    "source": source,
                    "documents": len(docs),
                    "bytes": sum(sizes[row] or 0 for row in chosen),
                    "used": np.packbits(seen).tobytes(),
                    "node": node_id(),
                }
            )
    return pa.Table.from_pylist(rows, schema=_ENTRY_SCHEMA)


_ENTRY_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("tokens", pa.int64()),
        ("sha256", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("documents", pa.int64()),
        ("bytes", pa.int64()),
        ("used", pa.binary()),
        ("node", pa.string()),
    ]
)


def _prepare_tokenizer(
    spec: TokenizeSpec, ds: ray.data.Dataset, n_docs: int, out: str, local: Path
) -> float:
    """The tokenizer stored with the shards in ``out`` and at ``local`` (the driver's copy):
    ``spec.tokenizer`` copied, or one trained on a sample drawn on the workers."""
    started = time.time()
    if spec.tokenizer:
        src = storage.resolve(spec.tokenizer)
        storage.check_access(src)
        if not storage.is_file(src):
            raise JobError(f"tokenizer not found: {spec.tokenizer}")
        storage.download(src, local)
        eos_id(load_tokenizer(local))  # fails early if it has no EOS
        storage.upload(local, storage.join(out, TOKENIZER_FILE))
        return 0.0
    fraction = min(1.0, spec.sample_docs / n_docs)
    sample = ds.random_sample(fraction, seed=spec.seed) if fraction < 1 else ds
    texts = [r["text"] for r in sample.select_columns(["text"]).take(spec.sample_docs)]
    tok = train_bpe(
        texts,
        vocab_size=spec.vocab_size,
        special_tokens=spec.special_tokens,
        pretokenizer=spec.pretokenizer,
    )
    save_tokenizer(tok, local)
    storage.upload(local, storage.join(out, TOKENIZER_FILE))
    return time.time() - started


def _choose_encoder(ds: ray.data.Dataset, tokenizer: Path, vocab_size: int) -> str:
    """Which encoder the workers use: tiktoken if it matches `tokenizers` on a few documents."""
    check = [r["text"] for r in ds.select_columns(["text"]).take(64)]
    return document_encoder(tokenizer, token_dtype(vocab_size), check)[1]


def _vocab_used(entries: list[dict[str, Any]], vocab_size: int) -> int:
    seen = np.zeros((vocab_size + 7) // 8, dtype=np.uint8)
    for entry in entries:
        seen |= np.frombuffer(entry["used"], dtype=np.uint8)
    return int(np.unpackbits(seen)[:vocab_size].sum())


def _stats(entries: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
    splits = {}
    for split in ("train", "val"):
        es = [e for e in entries if e["split"] == split]
        tokens, docs = sum(e["tokens"] for e in es), sum(e["documents"] for e in es)
        nbytes = sum(e["bytes"] for e in es)
        # EOS separators are not text: leave them out of the compression figure.
        splits[split] = {
            "tokens": tokens,
            "documents": docs,
            "bytes": nbytes,
            "bytes_per_token": round(nbytes / max(1, tokens - docs), 4),
        }
    return {
        "splits": splits,
        # per source and split: tokens and documents, as the manifest lists them
        "sources": {split: manifest["splits"][split]["sources"] for split in ("train", "val")},
        "vocab_size": manifest["vocab_size"],
        "vocab_used": _vocab_used(entries, manifest["vocab_size"]),
    }


def _encode_corpus(
    spec: TokenizeSpec, ds: ray.data.Dataset, out: str, tokenizer: Path, vocab_size: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Encode every block in parallel; return shard entries and the encoding figures."""
    encoder = _choose_encoder(ds, tokenizer, vocab_size)
    encode = partial(
        _encode_block,
        out=out,
        tokenizer_sha256=file_sha256(tokenizer),
        val_fraction=spec.val_fraction,
        vocab_size=vocab_size,
        fast=encoder == "tiktoken",
    )
    started = time.time()
    compute = ray.data.TaskPoolStrategy(size=spec.workers)
    entries = ds.map_batches(
        encode, batch_format="pyarrow", batch_size=1024, compute=compute
    ).take_all()
    seconds = time.time() - started
    nbytes = sum(e["bytes"] for e in entries)
    return entries, {
        "encoder": encoder,
        "encode_seconds": round(seconds, 3),
        "encode_mb_per_s": round(nbytes / 1e6 / max(seconds, 1e-9), 3),
    }


def _corpora(spec: TokenizeSpec) -> dict[str | None, str]:
    """Source name (None: the documents' own tags) -> the curated Parquet to read (a curate
    output's ``data/``, else the folder itself); fails before Ray starts when one is missing
    or its bucket cannot be read."""
    given: dict[str | None, str] = {None: spec.input} if spec.input else {}
    given.update(spec.inputs or {})
    found: dict[str | None, str] = {}
    for name, uri in given.items():
        src = storage.resolve(uri)
        storage.check_access(src)
        data = storage.join(src, "data")
        data = data if storage.is_dir(data) else src
        if not storage.exists(data):
            raise JobError(f"input not found: {uri}" + (f" (source {name!r})" if name else ""))
        found[name] = data
    return found


def _read(data: str, name: str | None, blocks: int) -> ray.data.Dataset:
    """The documents' id, text and source: ``name`` for all of them when given, else their
    own ``source`` column (DEFAULT_SOURCE for a corpus without one)."""
    filesystem, path = storage.filesystem(data)
    ds = ray.data.read_parquet(path, filesystem=filesystem, override_num_blocks=blocks)
    columns = ["id", "text"]
    if name is None and "source" in ds.schema().names:
        return ds.select_columns([*columns, "source"])
    return ds.select_columns(columns).map_batches(
        partial(_tag, source=name or DEFAULT_SOURCE), batch_format="pyarrow"
    )


def _tag(batch: pa.Table, *, source: str) -> pa.Table:
    return batch.append_column("source", pa.array([source] * batch.num_rows, pa.string()))


def run(spec: TokenizeSpec) -> dict[str, Any]:
    out = storage.resolve(spec.output)
    storage.check_access(out, write=True)
    corpora = _corpora(spec)
    started = time.time()
    init_ray()
    # Ray Data sizes read blocks by bytes, which leaves a few MB of text in one block and so
    # one encoding task; encoding is CPU-bound, so ask for several blocks per worker.
    workers = spec.workers or int(ray.cluster_resources().get("CPU", 1))
    parts = [_read(data, name, 4 * workers) for name, data in corpora.items()]
    for (name, data), part in zip(corpora.items(), parts, strict=True):
        if len(corpora) > 1 and part.count() == 0:
            raise JobError(f"empty corpus: {data} (source {name!r}) holds no documents")
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    n_docs = ds.count()
    if n_docs == 0:
        raise JobError(f"empty corpus: {', '.join(corpora.values())} holds no documents")
    with tempfile.TemporaryDirectory(dir=storage.scratch("tokenize")) as scratch:
        local = Path(scratch) / TOKENIZER_FILE
        train_seconds = _prepare_tokenizer(spec, ds, n_docs, out, local)
        tok = load_tokenizer(local)
        entries, encoding = _encode_corpus(spec, ds, out, local, tok.get_vocab_size())
    shards = {
        s: [
            {k: e[k] for k in ("file", "tokens", "documents", "sha256", "source")}
            for e in entries
            if e["split"] == s
        ]
        for s in ("train", "val")
    }
    # After every shard and the tokenizer: a manifest names only files that are there.
    manifest = write_manifest(
        out,
        tokenizer_file=TOKENIZER_FILE,
        vocab_size=tok.get_vocab_size(),
        dtype=token_dtype(tok.get_vocab_size()),
        eos_id=eos_id(tok),
        shards=shards,
        extra={"source": spec.input} if spec.input else {"inputs": spec.inputs},
    )
    stats = {**_stats(entries, manifest), **encoding}
    stats.update(
        tokenizer_train_seconds=round(train_seconds, 3), seconds=round(time.time() - started, 3)
    )
    storage.write_json(storage.join(out, "stats.json"), stats)
    _report(out, stats)
    return {
        "stats": stats,
        "manifest": storage.join(out, MANIFEST_FILE),
        "nodes": sorted({e["node"] for e in entries}),
    }


def _report(out: str, stats: dict[str, Any]) -> None:
    splits = stats["splits"]
    report(
        out,
        0,
        {
            "train_tokens": splits["train"]["tokens"],
            "val_tokens": splits["val"]["tokens"],
            "bytes_per_token": splits["train"]["bytes_per_token"],
            "vocab_used": stats["vocab_used"],
            "encode_mb_per_s": stats["encode_mb_per_s"],
            "seconds": stats["seconds"],
        },
    )


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(TokenizeSpec, run))
