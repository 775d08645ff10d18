"""Tokenization benchmark: llmforge encoding and the Ray job against a bare `tokenizers` loop.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python bench/tokenize.py [--mb 16]

On ~16 MB of real text from ../shared/data (Gutenberg books, Common Crawl pages, German web
pages, US speeches), in one run:
- a tokenizer is trained once (vocab 8k) on a sample; training is timed at 8k and 32k;
- one core (a subprocess pinned with sched_setaffinity, RAYON_NUM_THREADS=1): a bare
  `tokenizers` encode_batch loop, and llmforge's encode path (tiktoken built from the
  tokenizer, verified id for id), both over the same Parquet texts;
- the whole Ray job (ray_jobs.tokenize_corpus with the existing tokenizer) with 1 and 2 workers:
  its encode stage (read Parquet, encode, write shards) and end to end;
- bytes per token on the validation documents against `tokenizers`' own GPT-2-style
  ByteLevelBPETokenizer trained with the same vocab on the same sample.
The last line is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where this file would shadow the
# standard library's `tokenize` (in this process and in Ray's workers, which copy sys.path);
# the repository root goes there instead, which is also what makes `llm` importable.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import gzip
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llm.tokenizer.bpe import EOS_TOKEN, save_tokenizer, train_bpe
from llm.tokenizer.shards import split_of
from ray_jobs.cluster import init_ray

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DOC_CHARS = 1500  # documents of about this size, cut at paragraph breaks
PARQUET_FILES = 8
VAL_FRACTION = 0.05


def _chunks(text: str) -> Iterator[str]:
    buf: list[str] = []
    size = 0
    for para in re.split(r"(?:\r?\n){2,}", text):
        buf.append(para)
        size += len(para) + 2
        if size >= DOC_CHARS:
            yield "\n\n".join(buf)
            buf, size = [], 0
    if buf:
        yield "\n\n".join(buf)


def _jsonl(path: Path) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line).get("text") or ""


def _sources() -> Iterator[tuple[str, str]]:
    """(source, text) round-robin over the corpora, so any prefix mixes them all."""
    streams = [
        (
            "dolma",
            _jsonl(DATA / "web/cc_dolma_sample" / os.listdir(DATA / "web/cc_dolma_sample")[0]),
        ),
        ("german", _jsonl(DATA / "web/trafilatura_pages/pages_text.jsonl.gz")),
        (
            "speeches",
            (
                p.read_bytes().decode("latin-1")
                for p in sorted((DATA / "text/us_speeches_nltk").rglob("*.txt"))
            ),
        ),
        ("gutenberg", _jsonl(DATA / "text/gutenberg_books/gutenberg_books.jsonl.gz")),
    ]
    while streams:
        for item in list(streams):
            text = next(item[1], None)
            if text is None:
                streams.remove(item)
            elif text:
                yield item[0], text


def build_corpus(directory: Path, megabytes: float) -> list[str]:
    """Write ~`megabytes` of documents as Parquet files under directory/data; return them."""
    docs: list[str] = []
    size = 0
    for _, text in _sources():
        for doc in _chunks(text):
            docs.append(doc)
            size += len(doc.encode("utf-8"))
        if size >= megabytes * 1e6:
            break
    (directory / "data").mkdir(parents=True)
    per_file = -(-len(docs) // PARQUET_FILES)
    for f in range(PARQUET_FILES):
        part = docs[f * per_file : (f + 1) * per_file]
        ids = [f"doc-{f * per_file + i}" for i in range(len(part))]
        pq.write_table(
            pa.table({"id": ids, "text": part}), directory / "data" / f"part-{f}.parquet"
        )
    return docs


def one_core(kind: str, corpus: Path, tokenizer: Path) -> dict[str, float]:
    """Encode every Parquet text on one pinned core with `kind`; runs in a subprocess."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    texts = pq.read_table(corpus / "data", columns=["text"]).column("text").to_pylist()
    batches = [texts[i : i + 1024] for i in range(0, len(texts), 1024)]
    if kind == "tokenizers":
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(tokenizer))
        started = time.perf_counter()
        for batch in batches:
            tok.encode_batch(batch, add_special_tokens=False)
    else:
        import numpy as np

        from llm.tokenizer.fast import document_encoder

        started = time.perf_counter()  # building the tiktoken encoding is part of the path
        encode, used = document_encoder(tokenizer, np.uint16)
        assert used == "tiktoken", used
        for batch in batches:
            encode(batch)
    seconds = time.perf_counter() - started
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"seconds": round(seconds, 3), "mb_per_s": round(nbytes / 1e6 / seconds, 3)}


def run_one_core(kind: str, corpus: Path, tokenizer: Path) -> dict[str, float]:
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--one-core", kind, "--corpus", str(corpus)]
    cmd += ["--tokenizer", str(tokenizer)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_job(corpus: Path, tokenizer: Path, out: Path, workers: int) -> dict[str, Any]:
    from contracts.specs import TokenizeSpec
    from ray_jobs.tokenize_corpus import run

    spec = TokenizeSpec(
        input=str(corpus), output=str(out), tokenizer=str(tokenizer), workers=workers
    )
    stats = run(spec)["stats"]
    nbytes = sum(s["bytes"] for s in stats["splits"].values())
    return {
        "encoder": stats["encoder"],
        "encode_stage_mb_per_s": stats["encode_mb_per_s"],
        "end_to_end_mb_per_s": round(nbytes / 1e6 / stats["seconds"], 3),
        "seconds": stats["seconds"],
    }


def bytes_per_token(tok: Any, texts: list[str]) -> float:
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    return round(sum(len(t.encode("utf-8")) for t in texts) / tokens, 4)


def train_figures(sample: list[str], val: list[str], tokenizer: Path) -> dict[str, Any]:
    """Train 8k (kept, at `tokenizer`) and 32k; compare 8k with tokenizers' own GPT-2 BPE."""
    from tokenizers import ByteLevelBPETokenizer

    figures: dict[str, Any] = {}
    for vocab in (8192, 32768):
        started = time.perf_counter()
        tok = train_bpe(sample, vocab_size=vocab)
        figures[f"train_seconds_{vocab // 1024}k"] = round(time.perf_counter() - started, 3)
        if vocab == 8192:
            save_tokenizer(tok, tokenizer)
            figures["bytes_per_token_val"] = bytes_per_token(tok, val)
    reference = ByteLevelBPETokenizer()
    started = time.perf_counter()
    reference.train_from_iterator(sample, vocab_size=8192, special_tokens=[EOS_TOKEN])
    figures["reference_train_seconds_8k"] = round(time.perf_counter() - started, 3)
    figures["reference_bytes_per_token_val"] = bytes_per_token(reference, val)
    llama3 = train_bpe(sample, vocab_size=8192, pretokenizer="llama3")
    figures["llama3_bytes_per_token_val"] = bytes_per_token(llama3, val)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=16.0, help="corpus size in MB")
    parser.add_argument("--sample-mb", type=float, default=4.0, help="tokenizer training sample")
    parser.add_argument("--one-core", choices=["tokenizers", "llmforge"])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--tokenizer", type=Path)
    args = parser.parse_args()
    if args.one_core:
        print(json.dumps(one_core(args.one_core, args.corpus, args.tokenizer)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        print(json.dumps(measure(Path(tmp), args.mb, args.sample_mb)))


def measure(work: Path, megabytes: float, sample_mb: float) -> dict[str, Any]:
    docs = build_corpus(work / "corpus", megabytes)
    keyed = [(f"doc-{i}", d) for i, d in enumerate(docs)]
    val = [d for k, d in keyed if split_of(k, VAL_FRACTION) == "val"]
    train = [d for k, d in keyed if split_of(k, VAL_FRACTION) == "train"]
    step = max(1, round(sum(map(len, train)) / (sample_mb * 1e6)))
    tokenizer = work / "tokenizer.json"
    result: dict[str, Any] = {"corpus_mb": round(sum(len(d.encode()) for d in docs) / 1e6, 2)}
    result["documents"] = len(docs)
    result.update(train_figures(train[::step], val, tokenizer))
    one = {k: run_one_core(k, work / "corpus", tokenizer) for k in ("tokenizers", "llmforge")}
    init_ray()  # started before timing, so neither job pays for it
    jobs = {w: run_job(work / "corpus", tokenizer, work / f"out-{w}", w) for w in (1, 2)}
    for name, figures in [*one.items(), *((f"job_{w}_workers", j) for w, j in jobs.items())]:
        print(f"{name}: {figures}", file=sys.stderr)
    base = one["tokenizers"]["mb_per_s"]
    result.update(
        tokenizers_one_core_mb_per_s=base,
        llmforge_encode_one_core_mb_per_s=one["llmforge"]["mb_per_s"],
        job_1_worker=jobs[1],
        job_2_workers=jobs[2],
        per_core_vs_tokenizers=round(jobs[1]["encode_stage_mb_per_s"] / base, 3),
        per_core_vs_tokenizers_is="whole job's encode stage (read, encode, write shards), 1 worker",
        per_core_encode_path_vs_tokenizers=round(one["llmforge"]["mb_per_s"] / base, 3),
        per_core_end_to_end_vs_tokenizers=round(jobs[1]["end_to_end_mb_per_s"] / base, 3),
        scaling_2_workers=round(
            jobs[2]["encode_stage_mb_per_s"] / jobs[1]["encode_stage_mb_per_s"], 3
        ),
        scaling_2_workers_end_to_end=round(
            jobs[2]["end_to_end_mb_per_s"] / jobs[1]["end_to_end_mb_per_s"], 3
        ),
    )
    return result


if __name__ == "__main__":
    main()
