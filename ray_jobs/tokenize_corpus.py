"""Tokenize a curated corpus on Ray Data: train a byte-level BPE, encode to token shards.

The tokenizer is trained on a uniform sample drawn in parallel; encoding runs as one Ray task
per block, each writing whole shards (temporary name, then rename) and returning their entries,
from which the driver writes ``manifest.json`` and ``stats.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from contracts.specs import TokenizeSpec
from llm.tokenizer.bpe import eos_id, file_sha256, load_tokenizer, save_tokenizer, train_bpe
from llm.tokenizer.fast import Encoder, document_encoder
from llm.tokenizer.shards import (
    read_manifest,
    split_of,
    token_dtype,
    write_manifest,
    write_shard,
)
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray
from ray_jobs.entrypoint import JobError, local_path
from ray_jobs.reporting import MetricsReporter

TOKENIZER_FILE = "tokenizer.json"
# One encoder per worker process and tokenizer file (keyed by its hash, so a rewritten file
# at the same path is never encoded with a stale vocabulary), not one per batch.
_encoders: dict[tuple[str, str], Encoder] = {}


def _worker_encoder(path: str, vocab_size: int, fast: bool) -> Encoder:
    key = (path, file_sha256(path))
    if key not in _encoders:
        _encoders[key] = document_encoder(path, token_dtype(vocab_size), allow_fast=fast)[0]
    return _encoders[key]


def _encode_block(
    batch: pa.Table, *, out: str, val_fraction: float, vocab_size: int, fast: bool
) -> pa.Table:
    encode = _worker_encoder(f"{out}/{TOKENIZER_FILE}", vocab_size, fast)
    ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
    rows: list[dict[str, Any]] = []
    for split in ("train", "val"):
        docs = [t for i, t in zip(ids, texts, strict=True) if split_of(i, val_fraction) == split]
        if not docs:
            continue
        key = hashlib.blake2b(f"{ids[0]}|{ids[-1]}|{len(ids)}".encode(), digest_size=8).hexdigest()
        entry = write_shard(out, f"{split}-{key}.bin", encode(docs))
        rows.append(
            {
                **entry,
                "split": split,
                "documents": len(docs),
                "bytes": sum(len(t.encode("utf-8")) for t in docs),
            }
        )
    return pa.Table.from_pylist(rows, schema=_ENTRY_SCHEMA)


_ENTRY_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("tokens", pa.int64()),
        ("sha256", pa.string()),
        ("split", pa.string()),
        ("documents", pa.int64()),
        ("bytes", pa.int64()),
    ]
)


def _prepare_tokenizer(spec: TokenizeSpec, ds: ray.data.Dataset, n_docs: int, out: Path) -> float:
    started = time.time()
    if spec.tokenizer:
        src = local_path(spec.tokenizer)
        if not src.is_file():
            raise JobError(f"tokenizer not found: {spec.tokenizer}")
        shutil.copyfile(src, out / TOKENIZER_FILE)
        eos_id(load_tokenizer(out / TOKENIZER_FILE))  # fails early, naming the file, if no EOS
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
    save_tokenizer(tok, out / TOKENIZER_FILE)
    return time.time() - started


def _choose_encoder(ds: ray.data.Dataset, out: Path, vocab_size: int) -> str:
    """Which encoder the workers use: tiktoken if it matches `tokenizers` on a few documents."""
    check = [r["text"] for r in ds.select_columns(["text"]).take(64)]
    return document_encoder(out / TOKENIZER_FILE, token_dtype(vocab_size), check)[1]


def _vocab_used(out: Path, manifest: dict[str, Any]) -> int:
    seen = np.zeros(manifest["vocab_size"], dtype=bool)
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            tokens = np.memmap(out / shard["file"], dtype=manifest["dtype"], mode="r")
            seen[np.unique(tokens)] = True
    return int(seen.sum())


def _stats(entries: list[dict[str, Any]], manifest: dict[str, Any], out: Path) -> dict[str, Any]:
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
        "vocab_size": manifest["vocab_size"],
        "vocab_used": _vocab_used(out, manifest),
    }


def _encode_corpus(
    spec: TokenizeSpec, ds: ray.data.Dataset, out: Path, vocab_size: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Encode every block in parallel; return shard entries and the encoding figures."""
    encoder = _choose_encoder(ds, out, vocab_size)
    encode = partial(
        _encode_block,
        out=str(out),
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


def run(spec: TokenizeSpec) -> dict[str, Any]:
    src = local_path(spec.input)
    data = src / "data" if (src / "data").is_dir() else src
    if not data.exists():
        raise JobError(f"input not found: {spec.input}")
    out = local_path(spec.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    init_ray()
    # Ray Data sizes read blocks by bytes, which leaves a few MB of text in one block and so
    # one encoding task; encoding is CPU-bound, so ask for several blocks per worker.
    workers = spec.workers or int(ray.cluster_resources().get("CPU", 1))
    ds = ray.data.read_parquet(str(data.resolve()), override_num_blocks=4 * workers).select_columns(
        ["id", "text"]
    )
    n_docs = ds.count()
    if n_docs == 0:
        raise JobError(f"empty corpus: {data} holds no documents")
    train_seconds = _prepare_tokenizer(spec, ds, n_docs, out)
    tok = load_tokenizer(out / TOKENIZER_FILE)
    entries, encoding = _encode_corpus(spec, ds, out, tok.get_vocab_size())
    shards = {
        s: [
            {k: e[k] for k in ("file", "tokens", "documents", "sha256")}
            for e in entries
            if e["split"] == s
        ]
        for s in ("train", "val")
    }
    manifest = write_manifest(
        out,
        tokenizer_file=TOKENIZER_FILE,
        vocab_size=tok.get_vocab_size(),
        dtype=token_dtype(tok.get_vocab_size()),
        eos_id=eos_id(tok),
        shards=shards,
        extra={"source": spec.input},
    )
    read_manifest(out, verify=True)
    stats = {**_stats(entries, manifest, out), **encoding}
    stats.update(
        tokenizer_train_seconds=round(train_seconds, 3), seconds=round(time.time() - started, 3)
    )
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    _report(out, stats)
    return {"stats": stats, "manifest": str(out / "manifest.json")}


def _report(out: Path, stats: dict[str, Any]) -> None:
    splits = stats["splits"]
    MetricsReporter(out).log(
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
