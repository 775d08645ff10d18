"""Tokenization benchmark: llmforge encoding and the Ray job against `tokenizers` and datatrove.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python bench/tokenization.py [--mb CAP]

On all the English text in ../shared/data, each text once (about 147 MB: ``ENGLISH_SOURCES``,
cut into ~1,500-character documents at paragraph breaks), in one run:
- a tokenizer is trained once (vocab 8k) on a sample; training is timed at 8k and 32k;
- one core (a subprocess pinned with sched_setaffinity, RAYON_NUM_THREADS=1): a bare
  `tokenizers` encode_batch loop, and llmforge's encode path (tiktoken built from the
  tokenizer, verified id for id), both over the same Parquet texts;
- datatrove 0.10.1's tokenize step (ParquetReader → DocumentTokenizer, same tokenizer and EOS,
  no shuffling) on one pinned core, one thread;
- the whole Ray job (ray_jobs.tokenize_corpus with the existing tokenizer) with 1 and 2 workers:
  its encode stage (read Parquet, encode, write shards with checksums) and end to end;
- bytes per token on the validation documents against `tokenizers`' own GPT-2-style
  ByteLevelBPETokenizer trained with the same vocab on the same sample.
Every side reports wall seconds and CPU seconds (process CPU time, all threads; for the Ray job,
the driver and every process of the local cluster it started), so a side that uses more than
one core shows it. The machine's 1-minute load average is recorded with the figures.
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
from collections.abc import Callable, Iterator
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


def _jsonl(path: Path, *fields: str) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield "\n\n".join(str(row.get(k) or "") for k in fields or ("text",)).strip()


def _text_files(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            yield raw.decode("latin-1")


def _alpaca(path: Path) -> Iterator[str]:
    for item in json.loads(path.read_text(encoding="utf-8")):
        yield "\n\n".join(item[k] for k in ("instruction", "input", "output") if item[k])


# Every English text in ../shared/data (PROVENANCE.md), each once: books, speeches, Shakespeare,
# WikiText, Reuters news, newsgroup posts, Enron e-mail, IMDb reviews, the dolma Common Crawl
# pages, Alpaca instructions. Left out: the German trafilatura pages, the raw WARC samples
# (HTML, mostly not English) and the evaluation sets (BLiMP, HellaSwag, ARC).
ENGLISH_SOURCES: dict[str, Callable[[], Iterator[str]]] = {
    "gutenberg_books": lambda: _jsonl(DATA / "text/gutenberg_books/gutenberg_books.jsonl.gz"),
    "newsgroups": lambda: _jsonl(DATA / "email/20newsgroups/20news_bydate.jsonl.gz"),
    "reuters": lambda: _jsonl(DATA / "text/reuters21578/reuters21578.jsonl.gz", "title", "text"),
    "imdb": lambda: _jsonl(DATA / "web/imdb_reviews/imdb_train_10k.jsonl.gz"),
    "enron": lambda: _jsonl(DATA / "email/enron_spam_enron1/enron_spam_enron1.jsonl.gz"),
    "gutenberg_nltk": lambda: _text_files(sorted((DATA / "text/gutenberg_nltk").glob("*.txt"))),
    "speeches": lambda: _text_files(sorted((DATA / "text/us_speeches_nltk").rglob("*.txt"))),
    "wikitext2": lambda: _text_files(sorted((DATA / "text/wikitext2_tokens").glob("*.txt.gz"))),
    "shakespeare": lambda: _text_files([DATA / "text/tinyshakespeare/input.txt"]),
    "dolma_cc": lambda: _jsonl(next((DATA / "web/cc_dolma_sample").glob("*.jsonl.gz"))),
    "alpaca": lambda: _alpaca(DATA / "instruct/alpaca_5000.json"),
}


def _sources() -> Iterator[tuple[str, str]]:
    """(source, text) round-robin over the corpora, so any prefix mixes them all."""
    streams = [(name, make()) for name, make in ENGLISH_SOURCES.items()]
    while streams:
        for item in list(streams):
            text = next(item[1], None)
            if text is None:
                streams.remove(item)
            elif text:
                yield item[0], text


def build_corpus(directory: Path, megabytes: float | None) -> list[str]:
    """Write the English corpus (the first ~`megabytes` of it; None: all of it, each text
    once) as Parquet files under directory/data; return its documents."""
    docs: list[str] = []
    size = 0
    for _, text in _sources():
        for doc in _chunks(text):
            docs.append(doc)
            size += len(doc.encode("utf-8"))
        if megabytes is not None and size >= megabytes * 1e6:
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
        started, cpu_started = time.perf_counter(), time.process_time()
        for batch in batches:
            tok.encode_batch(batch, add_special_tokens=False)
    else:
        import numpy as np

        from llm.tokenizer.fast import document_encoder

        # building the tiktoken encoding is part of the path
        started, cpu_started = time.perf_counter(), time.process_time()
        encode, used = document_encoder(tokenizer, np.uint16)
        assert used == "tiktoken", used
        for batch in batches:
            encode(batch)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "mb_per_s": round(nbytes / 1e6 / seconds, 3),
        "mb_per_cpu_s": round(nbytes / 1e6 / cpu, 3),
    }


def datatrove_job(corpus: Path, tokenizer: Path, out: Path) -> dict[str, float]:
    """datatrove 0.10.1's tokenize step (ParquetReader → DocumentTokenizer with the same
    tokenizer and EOS, no shuffling, as llmforge's job does not shuffle) on one pinned core:
    one local worker, a task per Parquet file; runs in a subprocess."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    pipeline = [
        ParquetReader(str(corpus / "data"), text_key="text", id_key="id"),
        DocumentTokenizer(
            str(out),
            tokenizer_name_or_path=str(tokenizer),
            eos_token=EOS_TOKEN,
            shuffle_documents=False,
        ),
    ]
    executor = LocalPipelineExecutor(
        pipeline, tasks=PARQUET_FILES, workers=1, logging_dir=str(out / "logs")
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    executor.run()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    texts = pq.read_table(corpus / "data", columns=["text"]).column("text").to_pylist()
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "mb_per_s": round(nbytes / 1e6 / seconds, 3),
        "mb_per_cpu_s": round(nbytes / 1e6 / cpu, 3),
    }


def _subprocess(args: list[str]) -> dict[str, float]:
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_one_core(kind: str, corpus: Path, tokenizer: Path) -> dict[str, float]:
    return _subprocess(["--one-core", kind, "--corpus", str(corpus), "--tokenizer", str(tokenizer)])


def _tree_cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) of this process and every process under it: the
    driver and the local Ray cluster it started (raylet, GCS, workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


def run_job(corpus: Path, tokenizer: Path, out: Path, workers: int) -> dict[str, Any]:
    from contracts.specs import TokenizeSpec
    from ray_jobs.tokenize_corpus import run

    spec = TokenizeSpec(
        input=str(corpus), output=str(out), tokenizer=str(tokenizer), workers=workers
    )
    cpu_started = _tree_cpu_seconds()
    stats = run(spec)["stats"]
    cpu = _tree_cpu_seconds() - cpu_started
    nbytes = sum(s["bytes"] for s in stats["splits"].values())
    return {
        "encoder": stats["encoder"],
        "encode_stage_mb_per_s": stats["encode_mb_per_s"],
        "end_to_end_mb_per_s": round(nbytes / 1e6 / stats["seconds"], 3),
        "seconds": stats["seconds"],
        "cpu_seconds": round(cpu, 3),
        "end_to_end_mb_per_cpu_s": round(nbytes / 1e6 / cpu, 3),
    }


def bytes_per_token(tok: Any, texts: list[str]) -> float:
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    return round(sum(len(t.encode("utf-8")) for t in texts) / tokens, 4)


def train_tokenizer(sample: list[str], val: list[str], tokenizer: Path) -> dict[str, Any]:
    """Train the 8k tokenizer every side uses (kept at `tokenizer`)."""
    started = time.perf_counter()
    tok = train_bpe(sample, vocab_size=8192)
    figures: dict[str, Any] = {"train_seconds_8k": round(time.perf_counter() - started, 3)}
    save_tokenizer(tok, tokenizer)
    figures["bytes_per_token_val"] = bytes_per_token(tok, val)
    return figures


def train_figures(sample: list[str], val: list[str]) -> dict[str, Any]:
    """Train 32k; compare 8k with tokenizers' own GPT-2 BPE and the llama3 split (run after
    the encoding figures, which matter more, are in)."""
    from tokenizers import ByteLevelBPETokenizer

    started = time.perf_counter()
    train_bpe(sample, vocab_size=32768)
    figures: dict[str, Any] = {"train_seconds_32k": round(time.perf_counter() - started, 3)}
    reference = ByteLevelBPETokenizer()
    started = time.perf_counter()
    reference.train_from_iterator(sample, vocab_size=8192, special_tokens=[EOS_TOKEN])
    figures["reference_train_seconds_8k"] = round(time.perf_counter() - started, 3)
    figures["reference_bytes_per_token_val"] = bytes_per_token(reference, val)
    llama3 = train_bpe(sample, vocab_size=8192, pretokenizer="llama3")
    figures["llama3_bytes_per_token_val"] = bytes_per_token(llama3, val)
    return figures


def _progress(name: str, figures: Any) -> Any:
    print(f"{name}: {figures} (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--mb", type=float, default=None, help="cap the corpus at this many MB (default: all)"
    )
    parser.add_argument("--sample-mb", type=float, default=4.0, help="tokenizer training sample")
    parser.add_argument("--one-core", choices=["tokenizers", "llmforge"])
    parser.add_argument("--datatrove", type=Path, help="(internal) run datatrove's step here")
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--tokenizer", type=Path)
    args = parser.parse_args()
    if args.one_core:
        print(json.dumps(one_core(args.one_core, args.corpus, args.tokenizer)))
        return
    if args.datatrove:
        print(json.dumps(datatrove_job(args.corpus, args.tokenizer, args.datatrove)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        print(json.dumps(measure(Path(tmp), args.mb, args.sample_mb)))


def measure(work: Path, megabytes: float | None, sample_mb: float) -> dict[str, Any]:
    docs = build_corpus(work / "corpus", megabytes)
    keyed = [(f"doc-{i}", d) for i, d in enumerate(docs)]
    val = [d for k, d in keyed if split_of(k, VAL_FRACTION) == "val"]
    train = [d for k, d in keyed if split_of(k, VAL_FRACTION) == "train"]
    step = max(1, round(sum(map(len, train)) / (sample_mb * 1e6)))
    tokenizer = work / "tokenizer.json"
    result: dict[str, Any] = {"corpus_mb": round(sum(len(d.encode()) for d in docs) / 1e6, 2)}
    result["documents"] = len(docs)
    _progress("corpus", result)
    result.update(_progress("tokenizer", train_tokenizer(train[::step], val, tokenizer)))
    one = {
        k: _progress(k, run_one_core(k, work / "corpus", tokenizer))
        for k in ("tokenizers", "llmforge")
    }
    corpus_args = ["--corpus", str(work / "corpus"), "--tokenizer", str(tokenizer)]
    peer = _subprocess(["--datatrove", str(work / "datatrove"), *corpus_args])
    _progress("datatrove", peer)
    init_ray()  # started before timing, so neither job pays for it
    jobs = {
        w: _progress(f"job_{w}_workers", run_job(work / "corpus", tokenizer, work / f"out-{w}", w))
        for w in (1, 2)
    }
    result.update(_progress("training", train_figures(train[::step], val)))
    base = one["tokenizers"]["mb_per_s"]
    base_cpu = one["tokenizers"]["mb_per_cpu_s"]
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
        tokenizers_one_core_seconds=one["tokenizers"]["seconds"],
        tokenizers_one_core_cpu_seconds=one["tokenizers"]["cpu_seconds"],
        llmforge_encode_one_core_cpu_seconds=one["llmforge"]["cpu_seconds"],
        datatrove_tokenize=peer,
        # datatrove's step on one pinned core (one thread) against the job with one worker
        speedup_vs_datatrove_tokenize=round(peer["seconds"] / jobs[1]["seconds"], 3),
        cpu_speedup_vs_datatrove_tokenize=round(peer["cpu_seconds"] / jobs[1]["cpu_seconds"], 3),
        # the whole job's CPU seconds (driver and Ray processes) against tokenizers' on one core
        per_cpu_second_end_to_end_vs_tokenizers=round(
            jobs[1]["end_to_end_mb_per_cpu_s"] / base_cpu, 3
        ),
        load_average_1m=round(os.getloadavg()[0], 2),
    )
    return result


if __name__ == "__main__":
    main()
