"""Tokenize a curated corpus on Ray: train a byte-level BPE, encode to token shards.

Input and output are folders or ``s3://`` URIs (``llm.storage``). The tokenizer is trained on a
uniform sample drawn in parallel by the workers (only the sample reaches the driver) and stored
with the shards. Encoding runs as Ray tasks over planned pieces (row ranges of the Parquet files,
read from the Parquet footers), each writing whole shards straight to the output and returning
their entries, from which the driver writes ``manifest.json`` (after the shards) and
``stats.json``.

Every shard holds one source's documents: with ``input``, the curated documents' ``source``
tags; with ``inputs``, the name each corpus is given. One tokenizer serves all sources.
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from contracts.specs import TokenizeSpec
from llm import storage
from llm.data.sources import list_files
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
# Documents per encoding call, and so per shard of each source and split: batches are counted
# from each file's first row, so the shards never depend on the pieces or the worker count.
ENCODE_BATCH = 1024
PIECE_BATCHES = 8  # batches per encoding task: ~12 MB of text, enough tasks to share out
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


@dataclass(frozen=True)
class Piece:
    """Rows start..stop-1 of one Parquet file (whole encoding batches, the file's last short),
    and the source their shards are tagged with: ``source`` for a named input, else the
    file's own ``source`` column (``tagged``), else DEFAULT_SOURCE."""

    uri: str
    start: int
    stop: int
    groups: tuple[int, ...]  # the row groups these rows lie in
    first_row: int  # the first of those groups' first row in the file
    source: str
    tagged: bool


@dataclass
class Plan:
    pieces: list[Piece]
    documents: dict[str | None, int]  # per input name


def _plan(
    corpora: dict[str | None, str], batch: int = ENCODE_BATCH, piece_batches: int = PIECE_BATCHES
) -> Plan:
    """Pieces of ``piece_batches`` batches of ``batch`` rows over every Parquet file, counted
    from each file's first row, from the footers alone.

    Why not Ray Data's reader: in Ray 2.60 it makes blocks of up to 128 MB whatever
    override_num_blocks asks (the 147 MB bench corpus came as 2 blocks of 27k and 80k rows), a
    map task takes whole blocks, and its per-operator CPU reservations held the encoding
    operator behind a reader to one task at a time on a 2-CPU node. Pieces planned here and
    handed out by ``_run_window`` spread evenly over any number of workers.
    """
    pieces: list[Piece] = []
    documents: dict[str | None, int] = {}
    step = batch * piece_batches
    for name, data in corpora.items():
        try:
            files = list_files(data, "parquet")
        except FileNotFoundError as e:
            raise JobError(f"input not found: {data} ({e})") from e
        # footers are a ranged read or two each: fetch many at once from object storage
        with ThreadPoolExecutor(max_workers=16) as pool:
            footers = list(pool.map(_footer, files))
        documents[name] = 0
        for uri, (columns, group_rows) in zip(files, footers, strict=True):
            ends = np.cumsum(group_rows, dtype=np.int64)
            starts = ends - np.asarray(group_rows, dtype=np.int64)
            rows = int(ends[-1]) if len(ends) else 0
            documents[name] += rows
            for start in range(0, rows, step):
                stop = min(start + step, rows)
                first = int(np.searchsorted(ends, start, side="right"))
                last = int(np.searchsorted(ends, stop - 1, side="right"))
                pieces.append(
                    Piece(
                        uri=uri,
                        start=start,
                        stop=stop,
                        groups=tuple(range(first, last + 1)),
                        first_row=int(starts[first]),
                        source=name or DEFAULT_SOURCE,
                        tagged=name is None and "source" in columns,
                    )
                )
    return Plan(pieces, documents)


def _footer(uri: str) -> tuple[set[str], list[int]]:
    """A Parquet file's column names and its row groups' row counts, checked for the columns
    the job reads."""
    try:
        with storage.open_input_file(uri) as f:
            meta = pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowInvalid) as e:
        raise JobError(f"{uri}: not a readable Parquet file ({e})") from e
    columns = set(meta.schema.names)
    missing = sorted({"id", "text"} - columns)
    if missing:
        raise JobError(
            f"{uri}: no column {', '.join(map(repr, missing))} (the tokenize job reads "
            "curated Parquet: an 'id' and a 'text' column, and optionally 'source')"
        )
    return columns, [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def _read_piece(piece: Piece) -> pa.Table:
    """The piece's id, text and source columns."""
    columns = ["id", "text", "source"] if piece.tagged else ["id", "text"]
    with storage.open_input_file(piece.uri) as f:
        table = pq.ParquetFile(f).read_row_groups(list(piece.groups), columns=columns)
    table = table.slice(piece.start - piece.first_row, piece.stop - piece.start)
    if piece.tagged:
        return table
    return table.append_column("source", pa.array([piece.source] * table.num_rows, pa.string()))


@dataclass(frozen=True)
class Encoding:
    """What every encoding task shares: where shards go and how documents become them."""

    out: str
    tokenizer_sha256: str
    val_fraction: float
    vocab_size: int
    fast: bool  # tiktoken, checked against `tokenizers` on the driver
    batch: int = ENCODE_BATCH


def _encode_piece(piece: Piece, how: Encoding) -> list[dict[str, Any]]:
    """Encode one piece, ``how.batch`` rows at a time: the entries of the shards it wrote."""
    table = _read_piece(piece)
    entries: list[dict[str, Any]] = []
    for offset in range(0, table.num_rows, how.batch):
        entries.extend(_encode_block(table.slice(offset, how.batch), how))
    return entries


def _encode_block(batch: pa.Table, how: Encoding) -> list[dict[str, Any]]:
    """Encode a batch into one shard per split, written straight to ``how.out``; their
    entries, with which token ids occur (a bitmap, so the driver never reads a shard back)."""
    out, val_fraction, vocab_size = how.out, how.val_fraction, how.vocab_size
    uri = storage.join(out, TOKENIZER_FILE)
    encode = _worker_encoder(uri, how.tokenizer_sha256, vocab_size, how.fast)
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
    return rows


def _prepare_tokenizer(
    spec: TokenizeSpec, corpora: dict[str | None, str], n_docs: int, out: str, local: Path
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
    parts = [_read(data) for data in corpora.values()]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
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


def _choose_encoder(pieces: list[Piece], tokenizer: Path, vocab_size: int) -> str:
    """Which encoder the workers use: tiktoken if it matches `tokenizers` on a few documents
    (the first 64, read here on the driver)."""
    check: list[str] = []
    for piece in pieces:
        if len(check) >= 64:
            break
        texts = _read_piece(piece).column("text").slice(0, 64 - len(check))
        check.extend(t for t in texts.to_pylist() if t is not None)
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
    spec: TokenizeSpec, pieces: list[Piece], out: str, tokenizer: Path, vocab_size: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Encode every piece in parallel; return shard entries and the encoding figures."""
    encoder = _choose_encoder(pieces, tokenizer, vocab_size)
    how = Encoding(
        out=out,
        tokenizer_sha256=file_sha256(tokenizer),
        val_fraction=spec.val_fraction,
        vocab_size=vocab_size,
        fast=encoder == "tiktoken",
        batch=ENCODE_BATCH,
    )
    started = time.time()
    workers = spec.workers or int(ray.cluster_resources().get("CPU", 1))
    entries = [e for done in _run_window(pieces, workers, how) for e in done]
    seconds = time.time() - started
    nbytes = sum(e["bytes"] for e in entries)
    return entries, {
        "encoder": encoder,
        "encode_seconds": round(seconds, 3),
        "encode_mb_per_s": round(nbytes / 1e6 / max(seconds, 1e-9), 3),
    }


def _run_window(pieces: list[Piece], workers: int, how: Encoding) -> list[list[dict[str, Any]]]:
    """_encode_piece over every piece as Ray tasks, at most ``workers`` at a time; results in
    piece order.

    Ray core tasks, not a Ray Data map: its streaming executor polls for finished tasks every
    100 ms, which left each worker idle 0.1-0.2 s between the ~0.5 s pieces (measured on the
    bench corpus); ``ray.wait`` hands the next piece over as soon as one ends. SPREAD places
    the tasks over the cluster's nodes as Ray Data's tasks are.
    """
    remote = ray.remote(_encode_piece).options(num_cpus=1, scheduling_strategy="SPREAD")
    results: dict[int, list[dict[str, Any]]] = {}
    running: dict[ray.ObjectRef, int] = {}
    todo = iter(enumerate(pieces))
    for index, piece in itertools.islice(todo, workers):
        running[remote.remote(piece, how)] = index
    try:
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            results[running.pop(ready)] = ray.get(ready)
            for index, piece in itertools.islice(todo, 1):
                running[remote.remote(piece, how)] = index
    except BaseException:
        for ref in running:  # a failed piece ends the job: stop the others' work too
            ray.cancel(ref)
        raise
    return [results[i] for i in range(len(pieces))]


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


def _read(data: str) -> ray.data.Dataset:
    """The documents' texts as a Ray dataset, read on the workers: the tokenizer's training
    sample is drawn from it there, so only the sample reaches the driver."""
    filesystem, path = storage.filesystem(data)
    return ray.data.read_parquet(path, filesystem=filesystem, columns=["text"])


def run(spec: TokenizeSpec) -> dict[str, Any]:
    out = storage.resolve(spec.output)
    storage.check_access(out, write=True)
    corpora = _corpora(spec)
    started = time.time()
    plan = _plan(corpora, ENCODE_BATCH, PIECE_BATCHES)
    for name, data in corpora.items():
        if len(corpora) > 1 and plan.documents[name] == 0:
            raise JobError(f"empty corpus: {data} (source {name!r}) holds no documents")
    n_docs = sum(plan.documents.values())
    if n_docs == 0:
        raise JobError(f"empty corpus: {', '.join(corpora.values())} holds no documents")
    init_ray()
    with tempfile.TemporaryDirectory(dir=storage.scratch("tokenize")) as scratch:
        local = Path(scratch) / TOKENIZER_FILE
        train_seconds = _prepare_tokenizer(spec, corpora, n_docs, out, local)
        tok = load_tokenizer(local)
        entries, encoding = _encode_corpus(spec, plan.pieces, out, local, tok.get_vocab_size())
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
