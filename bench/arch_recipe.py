"""Every architecture and the data recipe through the REST API (issue 16's figures).

Starts the control plane (local Ray head, SQLite, local folders) and submits two pipelines:

1. three curate jobs, one a source of ../shared/data — web (the dolma Common Crawl sample),
   books (Project Gutenberg, in chunks of 20 paragraphs) and news (Reuters-21578) — each
   tagging its documents with its source; one tokenize job over the three (one BPE tokenizer
   with the mask and span-sentinel tokens); then a decoder, an encoder and an encoder-decoder,
   each trained on the same 0.6 / 0.3 / 0.1 mixture of the three with 2 DDP workers, and each
   evaluated on its own objective's validation loss and on BLiMP (log-likelihood for the
   decoder, pseudo-log-likelihood for the encoder, decoder log-likelihood given the encoder's
   empty input for the encoder-decoder);
2. a tune stage (ASHA over learning rate, optimizer, …) and a train stage whose learning rate
   and optimizer are placeholders for the tune stage's best trial.

For each architecture it prints training tokens/s (the median of the loop's own tokens_per_s
log records, so start-up is excluded), the evaluate job's validation loss and BLiMP accuracy;
for each mixed run the requested and realised token shares; and the tune stage's best config
beside the learning rate the train stage ran with, both read back from the API.

Run from the repository root (about 15 minutes on 2 cores; the last line is JSON):
    .venv/bin/python -m bench.arch_recipe [--steps 200] [--blimp-limit 20]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from llm.tokenizer.bpe import EOS_TOKEN, MASK_TOKEN, sentinel_token
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARES = {"web": 0.6, "books": 0.3, "news": 0.1}
ARCHS = ("decoder", "encoder", "encoder_decoder")
MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128}
SPECIALS = [EOS_TOKEN, MASK_TOKEN, *(sentinel_token(i) for i in range(32))]
CHARS_PER_SOURCE = 2_500_000
WORKERS, BATCH_SIZE = 2, 8
WINDOW_TOKENS = WORKERS * BATCH_SIZE * MODEL["block_size"]  # input tokens a step, all ranks
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _records(path: Path) -> Any:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _book_chunks() -> Any:
    for book in _records(DATA / "text/gutenberg_books/gutenberg_books.jsonl.gz"):
        paragraphs = PARAGRAPH_BREAK.split(book["text"].replace("\r\n", "\n"))
        for start in range(0, min(len(paragraphs), 600), 20):
            yield {
                "id": f"{book['id']}-{start}",
                "text": "\n\n".join(paragraphs[start : start + 20]),
            }


def write_sources(folder: Path) -> dict[str, str]:
    """Up to CHARS_PER_SOURCE characters of each source as JSONL.gz; source -> file."""
    streams = {
        "web": _records(next((DATA / "web/cc_dolma_sample").glob("*.jsonl.gz"))),
        "books": _book_chunks(),
        "news": _records(DATA / "text/reuters21578/reuters21578.jsonl.gz"),
    }
    folder.mkdir(parents=True)
    files = {}
    for name, records in streams.items():
        path, chars = folder / f"{name}.jsonl.gz", 0
        with gzip.open(path, "wt", encoding="utf-8") as out:
            for r in records:
                if chars >= CHARS_PER_SOURCE:
                    break
                if r.get("text"):
                    out.write(json.dumps({"id": str(r["id"]), "text": r["text"]}) + "\n")
                    chars += len(r["text"])
        files[name] = str(path)
    return files


def recipe_pipeline(files: dict[str, str], work: Path, steps: int, limit: int) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [
        {
            "name": f"curate_{name}",
            "kind": "curate",
            "spec": {
                "input": path,
                "output": str(work / "curated" / name),
                "source": name,
                "steps": [
                    {"kind": "length"},
                    {"kind": "language", "languages": ["en"]},
                    {"kind": "exact_dedup"},
                ],
            },
        }
        for name, path in files.items()
    ]
    stages.append(
        {
            "name": "tokenize",
            "kind": "tokenize",
            "after": [f"curate_{name}" for name in files],
            "spec": {
                "inputs": {name: f"${{curate_{name}.output}}" for name in files},
                "output": str(work / "tokens"),
                "vocab_size": 4096,
                "val_fraction": 0.05,
                "special_tokens": SPECIALS,
            },
        }
    )
    for arch in ARCHS:
        stages.append(
            {
                "name": f"train_{arch}",
                "kind": "train",
                "after": ["tokenize"],
                "spec": {
                    "data": "${tokenize.output}",
                    "output": str(work / "train" / arch),
                    "model": {**MODEL, "arch": arch},
                    "mixture": {"weights": SHARES},
                    "steps": steps,
                    "workers": WORKERS,
                    "batch_size": BATCH_SIZE,
                    "lr": 3e-3,
                    "warmup_steps": 20,
                    "log_every": 10,
                    "eval_every": steps,
                    "eval_batches": 10,
                    "checkpoint_every": steps,
                },
            }
        )
        stages.append(
            {
                "name": f"eval_{arch}",
                "kind": "evaluate",
                "after": [f"train_{arch}", "tokenize"],
                "spec": {
                    "checkpoint": f"${{train_{arch}.output}}",
                    "data": "${tokenize.output}",
                    "output": str(work / "eval" / arch),
                    "tasks": ["blimp"],
                    "limit": limit,
                    "batch_size": 64,
                    "max_batches": 20,
                    "max_new_tokens": 24,
                },
            }
        )
    return {"name": "arch-recipe", "stages": stages}


def tune_pipeline(tokens: str, work: Path) -> dict[str, Any]:
    return {
        "name": "tune-then-train",
        "stages": [
            {
                "name": "tune",
                "kind": "tune",
                "spec": {
                    "data": tokens,
                    "output": str(work / "tune"),
                    "model": MODEL,
                    "num_samples": 4,
                    "max_steps": 40,
                    "grace_period": 10,
                    "eval_every": 10,
                    "eval_batches": 4,
                },
            },
            {
                "name": "train",
                "kind": "train",
                "after": ["tune"],
                "spec": {
                    "data": tokens,
                    "output": str(work / "tuned-train"),
                    "model": MODEL,
                    "lr": "${tune.result.best_config.lr}",
                    "optimizer": "${tune.result.best_config.optimizer}",
                    "steps": 40,
                    "workers": 2,
                    "eval_every": 40,
                    "checkpoint_every": 40,
                },
            },
        ],
    }


def run_pipeline(client: httpx.Client, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    r = client.post("/api/v1/pipelines", json=body)
    if r.status_code != 201:
        raise SystemExit(f"pipeline rejected: {r.status_code} {r.text}")
    pid, deadline, seen = r.json()["id"], time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        p: dict[str, Any] = client.get(f"/api/v1/pipelines/{pid}").raise_for_status().json()
        for job in p["jobs"]:
            if seen.get(job["stage"]) != job["state"]:
                seen[job["stage"]] = job["state"]
                print(f"  {job['stage']:>22} {job['state']} {job['message'] or ''}", flush=True)
        if p["state"] in ("SUCCEEDED", "FAILED"):
            if p["state"] == "FAILED":
                raise SystemExit(f"pipeline {body['name']} failed: {json.dumps(p)[:4000]}")
            return {job["stage"]: job for job in p["jobs"]}
        time.sleep(2)
    raise SystemExit(f"pipeline {body['name']} did not finish in {timeout_s:.0f}s")


def _records_of(client: httpx.Client, job_id: str, name: str) -> list[dict[str, Any]]:
    body = client.get(f"/api/v1/jobs/{job_id}/metrics", params={"name": name})
    return sorted(body.raise_for_status().json()["records"], key=lambda r: r["step"])


def throughput(client: httpx.Client, job_id: str, window_tokens: int) -> dict[str, float]:
    """The loop's own tokens_per_s (median of its log windows after the first, which holds the
    warm-up); it counts the tokens the loss is taken over, which for an encoder-decoder are the
    decoder's targets only. So also the input windows' tokens a second between the first and
    the last loss record, the same measure for every arch."""
    values = [r["value"] for r in _records_of(client, job_id, "tokens_per_s")]
    losses = _records_of(client, job_id, "loss")
    first, last = losses[0], losses[-1]
    windows_s = (last["step"] - first["step"]) * window_tokens / (last["time"] - first["time"])
    return {
        "tokens_per_s": round(statistics.median(values[1:] or values), 1),
        "window_tokens_per_s": round(windows_s, 1),
    }


def blimp(job: dict[str, Any]) -> tuple[float, str]:
    """BLiMP accuracy (the job's metrics) and how it was scored (its eval.json)."""
    report = json.loads((Path(job["spec"]["output"]) / "eval.json").read_text())
    return job["result"]["metrics"]["blimp/acc"], report["tasks"]["groups"]["blimp"]["scoring"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--blimp-limit", type=int, default=20, help="pairs per paradigm")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmforge-bench-recipe-"))
    home = Path(tempfile.mkdtemp(prefix="llmforge-bench-home-"))
    settings = Settings(
        home=home,
        shared_roots=str(DATA),
        shared_write_roots=str(work),
        api_port=free_port(),
        ray_dashboard_port=free_port(),
        ray_num_cpus=2,
        auth=False,
        team_max_running=1,
    )
    files = write_sources(work / "sources")
    server = BackgroundServer(settings)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            started = time.monotonic()
            jobs = run_pipeline(
                client, recipe_pipeline(files, work, args.steps, args.blimp_limit), 7200
            )
            recipe_s = time.monotonic() - started
            tokenized = jobs["tokenize"]["result"]
            archs: dict[str, Any] = {}
            mixtures: dict[str, Any] = {}
            for arch in ARCHS:
                train, evaluation = jobs[f"train_{arch}"], jobs[f"eval_{arch}"]["result"]
                acc, scoring = blimp(jobs[f"eval_{arch}"])
                archs[arch] = {
                    **throughput(client, train["id"], WINDOW_TOKENS),
                    "train_val_loss": round(train["result"]["last"]["val_loss"], 4),
                    "val_loss": round(evaluation["val_loss"], 4),
                    "objective": evaluation.get("objective"),
                    "blimp_acc": round(acc, 4),
                    "blimp_scoring": scoring,
                }
                mix = train["result"]["mixture"]
                mixtures[arch] = {
                    "requested": mix["requested"],
                    "realised": {k: round(v, 4) for k, v in mix["realised"].items()},
                    "max_abs_diff": round(
                        max(abs(mix["realised"][k] - v) for k, v in SHARES.items()), 4
                    ),
                    "epochs": {k: round(v["epochs"], 3) for k, v in mix["sources"].items()},
                }
                print(arch, json.dumps(archs[arch]), json.dumps(mixtures[arch]), flush=True)
            tuned = run_pipeline(
                client, tune_pipeline(jobs["tokenize"]["spec"]["output"], work), 3600
            )
            best = tuned["tune"]["result"]["best_config"]
            ran = client.get(f"/api/v1/jobs/{tuned['train']['id']}").raise_for_status().json()
            # the stored spec holds the training fields flat or in its "train" section
            spec = {**ran["spec"].get("train", {}), **ran["spec"]}
            trained_with = {"lr": spec["lr"], "optimizer": spec["optimizer"]}
            tune_train = {
                "best_config": {"lr": best["lr"], "optimizer": best["optimizer"]},
                "train_spec": trained_with,
                "used_best": trained_with == {"lr": best["lr"], "optimizer": best["optimizer"]},
                "train_state": ran["state"],
            }
            print("tune -> train", json.dumps(tune_train), flush=True)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(
        json.dumps(
            {
                "archs": archs,
                "mixture": mixtures,
                "source_tokens": tokenized.get("stats", {}).get("sources"),
                "tune_train": tune_train,
                "recipe_pipeline_s": round(recipe_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
