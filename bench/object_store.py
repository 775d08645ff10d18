"""Object storage must not be the bottleneck: curate, tokenize and train with input and output on
an S3 server over HTTP against the same jobs on local disk, in one run.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python -m bench.object_store [--docs 6000]

The S3 server is moto's (``python -m moto.server`` on loopback, in a process of its own): a real
HTTP endpoint, though a slower one than MinIO or S3, so the ratios are a lower bound. The corpus is
real text from ../shared/data (Gutenberg chunks, the dolma Common Crawl sample, US speeches) in
8 gzipped JSONL files, uploaded once. Each job runs in this process on one local Ray, through
its own ``run(spec)`` exactly as its entrypoint calls it: curate (length, Gopher quality,
exact and MinHash dedup), tokenize (a 4k BPE trained on a sample, then encoding), train (a small
GPT for a fixed number of steps, 2 DDP workers, checkpoints every 10 steps). Local and S3 runs
alternate, ``--repeats`` times each, and the fastest of each is kept.

A ratio is local seconds / S3 seconds: 1.0 means no cost, the goal is >= 0.8. Last line:
``{"curate_s3_vs_local": …, "tokenize_s3_vs_local": …, "train_s3_vs_local": …}``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import load_corpus
from llm import storage
from tests.s3 import s3_server

BUCKET = "llmforge-bench"
FILES = 8
STEPS = [
    {"kind": "length"},
    {"kind": "gopher_quality"},
    {"kind": "exact_dedup"},
    {"kind": "minhash_dedup"},
]
MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 128}


def write_corpus(folder: Path, docs: int) -> int:
    corpus = load_corpus(docs)
    folder.mkdir(parents=True)
    for k in range(FILES):
        with gzip.open(folder / f"part-{k:02d}.jsonl.gz", "wt", encoding="utf-8") as f:
            for i in range(k, len(corpus), FILES):
                source, text = corpus[i]
                f.write(json.dumps({"id": f"{source}-{i}", "text": text}) + "\n")
    return len(corpus)


def timed(job: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = job()
    return time.perf_counter() - started, result


def run_jobs(corpus: str, root: str, tag: str, train_steps: int) -> dict[str, Any]:
    """curate → tokenize → train under ``root``; each job's seconds and result."""
    from contracts.curate import CurateSpec
    from contracts.specs import TokenizeSpec, TrainSpec
    from ray_jobs.curate.job import run as curate
    from ray_jobs.tokenize_corpus import run as tokenize
    from ray_jobs.train import run as train

    out = {name: storage.join(root, tag, name) for name in ("curated", "tokens", "train")}
    curate_spec = CurateSpec.model_validate(
        {"input": corpus, "output": out["curated"], "steps": STEPS}
    )
    tokenize_spec = TokenizeSpec.model_validate(
        {"input": out["curated"], "output": out["tokens"], "vocab_size": 4096}
    )
    train_spec = TrainSpec.model_validate(
        {
            "data": out["tokens"],
            "output": out["train"],
            "steps": train_steps,
            "workers": 2,
            "batch_size": 8,
            "log_every": 10,
            "eval_every": train_steps,
            "checkpoint_every": 10,
            "model": MODEL,
        }
    )
    seconds = {}
    seconds["curate"], curated = timed(lambda: curate(curate_spec))
    seconds["tokenize"], tokens = timed(lambda: tokenize(tokenize_spec))
    seconds["train"], trained = timed(lambda: train(train_spec))
    return {
        "seconds": seconds,
        "kept": curated["stats"]["kept"]["documents"],
        "tokens": tokens["stats"]["splits"],
        "final_loss": trained["final_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=6000)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmforge-bench-s3-"))
    docs = write_corpus(work / "corpus", args.docs)
    mb = sum(p.stat().st_size for p in (work / "corpus").iterdir()) / 1e6
    with s3_server(BUCKET) as s3:
        os.environ.update(s3.env)  # before Ray starts: its workers inherit the S3 settings
        os.environ["LLMFORGE_SCRATCH"] = str(work / "scratch")
        from ray_jobs.cluster import init_ray

        init_ray()
        s3_corpus = f"s3://{BUCKET}/corpus"
        storage.upload(work / "corpus", s3_corpus)
        runs: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
        for r in range(args.repeats):
            for where, corpus, root in (
                ("local", str(work / "corpus"), str(work / "out")),
                ("s3", s3_corpus, f"s3://{BUCKET}/out"),
            ):
                result = run_jobs(corpus, root, f"run{r}", args.train_steps)
                runs[where].append(result)
                print(where, r, json.dumps(result), flush=True)
        import ray

        ray.shutdown()  # before the summary, so no late Ray log line follows the JSON
    local, s3 = runs["local"], runs["s3"]
    # the same jobs on the same data: the same results wherever the files live
    assert {r["kept"] for r in local + s3} == {local[0]["kept"]}, "kept counts differ"
    assert all(r["tokens"] == local[0]["tokens"] for r in local + s3), "token counts differ"
    best = {
        where: {
            job: min(r["seconds"][job] for r in results) for job in ("curate", "tokenize", "train")
        }
        for where, results in runs.items()
    }
    print(f"corpus: {docs} documents, {mb:.1f} MB gzipped JSONL in {FILES} files")
    for job in ("curate", "tokenize", "train"):
        print(f"{job:>9}: local {best['local'][job]:6.1f}s   s3 {best['s3'][job]:6.1f}s")
    print(
        json.dumps(
            {
                f"{job}_s3_vs_local": round(best["local"][job] / best["s3"][job], 3)
                for job in ("curate", "tokenize", "train")
            }
        )
    )


if __name__ == "__main__":
    main()
