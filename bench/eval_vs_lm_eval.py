"""llmforge's evaluation harness against lm-evaluation-harness, item for item, on one CPU.

A small GPT-2-style llmforge model is trained on Project Gutenberg text from ../shared/data
(or reused from --work-dir), exported to the Hugging Face format, and evaluated 0-shot on the
first --items items of HellaSwag and ARC-Easy twice: (a) by llmforge's harness on the llmforge
checkpoint, (b) by ``lm_eval --model hf`` on the exported folder, with local custom task YAMLs
that render the same prompts. Printed: per-item prediction agreement (argmax of acc and of
acc_norm, from lm_eval's --log_samples), acc and acc_norm of both and their difference in
points, items/s of both and the ratio. Both timings cover loading the model and the data and
scoring (lm_eval: its total_evaluation_time_seconds; neither counts Python start-up); both
use the same batch size and torch thread count. Each round times lm_eval and llmforge (with
and without its shared-context cache) in alternating order; the speedup is the median of the
rounds' ratios, because timings on a shared 2-core machine swing with other processes.

Run from the repository root: .venv/bin/python -m bench.eval_vs_lm_eval [--items 500]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench._common import DATA
from llm.eval.lm import load_eval_model
from llm.eval.runner import evaluate_tasks
from llm.model.config import ModelConfig
from llm.model.hf import export_hf
from llm.tokenizer.bpe import eos_id, save_tokenizer, train_bpe
from llm.tokenizer.shards import (
    encode_documents,
    split_of,
    token_dtype,
    write_manifest,
    write_shard,
)
from llm.train.checkpoint import latest_checkpoint, load_model
from llm.train.pretrain import TrainConfig, train

TASKS = {
    "hellaswag": "eval/hellaswag/hellaswag_val.jsonl.gz",
    "arc_easy": "eval/arc/arc_easy_test.jsonl",
}
MODEL = ModelConfig(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=192)
BOOKS = 12  # Gutenberg books of training text (~4 MB)

# lm_eval custom tasks: the prompts of llm/eval/tasks/{hellaswag,arc_easy}.yaml, with lm_eval's
# own HellaSwag preprocess applied to the local copy's fields
HELLASWAG_UTILS = """from lm_eval.tasks.hellaswag.utils import preprocess


def process_docs(dataset):
    def _process(doc):
        return {"query": preprocess(doc["query"]),
                "choices": [preprocess(e) for e in doc["endings"]], "gold": doc["label"]}
    return dataset.map(_process)
"""
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
{extra}doc_to_text: "{text}"
doc_to_target: "{{{{gold}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def _books(n: int) -> list[str]:
    with gzip.open(DATA / "text/gutenberg_books/gutenberg_books.jsonl.gz", "rt") as f:
        return [json.loads(next(f))["text"] for _ in range(n)]


def build_shards(work: Path) -> Path:
    shards = work / "shards"
    if (shards / "manifest.json").is_file():
        return shards
    shards.mkdir(parents=True, exist_ok=True)
    books = _books(BOOKS)
    docs = [p for b in books for p in b.split("\n\n\n") if p.strip()]
    tok = train_bpe(docs, vocab_size=MODEL.vocab_size)
    save_tokenizer(tok, shards / "tokenizer.json")
    eos, dtype = eos_id(tok), token_dtype(tok.get_vocab_size())
    split: dict[str, list[dict]] = {}
    for name in ("train", "val"):
        texts = [d for i, d in enumerate(docs) if split_of(f"doc{i}", 0.02) == name]
        entry = write_shard(shards, f"{name}-0000.bin", encode_documents(tok, texts, eos, dtype))
        split[name] = [{**entry, "documents": len(texts)}]
    write_manifest(
        shards,
        tokenizer_file="tokenizer.json",
        vocab_size=tok.get_vocab_size(),
        dtype=dtype,
        eos_id=eos,
        shards=split,
    )
    return shards


def trained_checkpoint(work: Path, steps: int) -> tuple[Path, Path]:
    shards = build_shards(work)
    found = latest_checkpoint(work / "run" / "checkpoints")
    if found is None:
        cfg = TrainConfig(
            steps=steps,
            batch_size=16,
            seq_len=128,
            lr=3e-3,
            warmup_steps=30,
            log_every=50,
            eval_every=steps,
            checkpoint_every=steps,
        )
        started = time.perf_counter()
        out = train(cfg, MODEL, shards, work / "run")
        print(
            f"trained {steps} steps in {time.perf_counter() - started:.0f} s, "
            f"loss {out['loss_history'][0]:.2f} -> {out['loss_history'][-1]:.2f}"
        )
        found = latest_checkpoint(work / "run" / "checkpoints")
    assert found is not None
    return found, shards / "tokenizer.json"


def lm_eval_tasks(work: Path, n_items: int) -> Path:
    tasks = work / "lm_eval_tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name, rel in TASKS.items():
        opener = gzip.open if rel.endswith(".gz") else open
        with opener(DATA / rel, "rt") as f:
            lines = [next(f) for _ in range(n_items)]
        (tasks / f"{name}.jsonl").write_text("".join(lines))
    (tasks / "utils.py").write_text(HELLASWAG_UTILS)
    hellaswag = TASK_YAML.format(
        name="bench_hellaswag",
        path=tasks / "hellaswag.jsonl",
        extra="process_docs: !function utils.process_docs\n",
        text="{{query}}",
    )
    arc = TASK_YAML.format(
        name="bench_arc_easy", path=tasks / "arc_easy.jsonl", extra="", text="{{query}}\\nAnswer:"
    )
    (tasks / "bench_hellaswag.yaml").write_text(hellaswag)
    (tasks / "bench_arc_easy.yaml").write_text(arc)
    return tasks


def run_lm_eval(hf_dir: Path, tasks: Path, out: Path, batch_size: int, eos: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(out / "hf_datasets"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        # the export's tokenizer_config.json names no EOS or BOS, and lm_eval's hf model decodes
        # its prefix token for every request: name the EOS, which llmforge's harness uses too
        f"pretrained={hf_dir},tokenizer={hf_dir},prefix_token_id={eos}",
        "--include_path",
        str(tasks),
        "--tasks",
        "bench_hellaswag,bench_arc_easy",
        "--device",
        "cpu",
        "--batch_size",
        str(batch_size),
        "--num_fewshot",
        "0",
        "--log_samples",
        "--output_path",
        str(out / "lm_eval_out"),
    ]
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    results_file = max((out / "lm_eval_out").rglob("results_*.json"), key=os.path.getmtime)
    results = json.loads(results_file.read_text())
    samples = {}
    for task in ("hellaswag", "arc_easy"):
        found = max(results_file.parent.glob(f"samples_bench_{task}_*.jsonl"), key=os.path.getmtime)
        rows = [json.loads(line) for line in found.read_text().splitlines()]
        samples[task] = {r["doc_id"]: r for r in rows}
    return {
        "results": results["results"],
        "samples": samples,
        "wall": wall,
        "seconds": float(results["total_evaluation_time_seconds"]),
    }


def run_ours(
    checkpoint: Path, tokenizer: Path, n_items: int, batch_size: int, share_prefix: bool
) -> dict[str, Any]:
    started = time.perf_counter()
    model = load_eval_model(checkpoint, tokenizer)
    result = evaluate_tasks(
        model,
        tasks=list(TASKS),
        num_fewshot=0,
        limit=n_items,
        batch_size=batch_size,
        log_samples=True,
        share_prefix=share_prefix,
    )
    result["seconds"] = time.perf_counter() - started
    return result


def _their_preds(sample: dict[str, Any], choices: list[str]) -> tuple[int, int]:
    lls = [float(resp[0]) for resp in sample["filtered_resps"]]
    norm = [ll / len(c) for ll, c in zip(lls, choices, strict=True)]
    return lls.index(max(lls)), norm.index(max(norm))


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    agree, total, diffs, max_ll_diff = 0, 0, [], 0.0
    for task in TASKS:
        mine = ours["results"][task]
        other = theirs["samples"][task]
        for n, sample in enumerate(mine["samples"]):
            their = other[n]
            pred, pred_norm = _their_preds(their, sample["choices"])
            agree += int(pred == sample["pred"] and pred_norm == sample["pred_norm"])
            total += 1
            lls = [float(r[0]) for r in their["filtered_resps"]]
            max_ll_diff = max(
                max_ll_diff,
                *(abs(a - b) for a, b in zip(lls, sample["loglikelihoods"], strict=True)),
            )
        for metric in ("acc", "acc_norm"):
            a = mine["metrics"][metric]["value"]
            b = theirs["results"][f"bench_{task}"][f"{metric},none"]
            diffs.append(abs(a - b) * 100)
            print(
                f"{task:10s} {metric:9s} llmforge {a * 100:6.2f}  lm_eval {b * 100:6.2f}  "
                f"diff {abs(a - b) * 100:.2f} points"
            )
    print(
        f"per-item prediction agreement {agree}/{total}; "
        f"largest log-likelihood difference {max_ll_diff:.2e}"
    )
    return {"item_agreement": agree / total, "acc_diff_points": max(diffs)}


def measure_round(
    args: argparse.Namespace, checkpoint: Path, tokenizer: Path, hf_dir: Path, eos: int, order: int
) -> dict[str, dict[str, Any]]:
    """One timing of each: lm_eval, llmforge with and without the shared-context cache; the
    order alternates between rounds so neither side always runs first."""
    tasks = args.work_dir / "lm_eval_tasks"
    runs = {
        "lm_eval": lambda: run_lm_eval(hf_dir, tasks, args.work_dir, args.batch_size, eos),
        "ours": lambda: run_ours(checkpoint, tokenizer, args.items, args.batch_size, True),
        "plain": lambda: run_ours(checkpoint, tokenizer, args.items, args.batch_size, False),
    }
    names = list(runs) if order % 2 == 0 else list(reversed(runs))
    out = {name: runs[name]() for name in names}
    rates = {name: 2 * args.items / out[name]["seconds"] for name in runs}
    print(
        f"round {order + 1}: items/s llmforge {rates['ours']:.1f} (without the shared-context "
        f"cache {rates['plain']:.1f}), lm_eval hf {rates['lm_eval']:.1f} (its whole command "
        f"took {out['lm_eval']['wall']:.1f} s with Python start-up)"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=500, help="first N items of each task")
    parser.add_argument("--steps", type=int, default=300, help="training steps (if not reused)")
    parser.add_argument("--batch-size", type=int, default=32, help="both harnesses")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both harnesses")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each; median ratio")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/llmforge_bench_eval"))
    args = parser.parse_args()
    checkpoint, tokenizer = trained_checkpoint(args.work_dir, args.steps)
    eos = json.loads((args.work_dir / "shards/manifest.json").read_text())["eos_id"]
    hf_dir = export_hf(load_model(checkpoint), args.work_dir / "hf_export", tokenizer, eos_id=eos)
    lm_eval_tasks(args.work_dir, args.items)
    # the same thread count on both sides; one thread keeps timings steady on a shared CPU
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    rounds = [
        measure_round(args, checkpoint, tokenizer, hf_dir, eos, i) for i in range(args.rounds)
    ]
    figures = compare(rounds[0]["ours"], rounds[0]["lm_eval"])
    speedups = [r["lm_eval"]["seconds"] / r["ours"]["seconds"] for r in rounds]
    cache_gain = [r["plain"]["seconds"] / r["ours"]["seconds"] for r in rounds]
    print(
        f"speedup over lm_eval per round {[round(x, 2) for x in speedups]}; the shared-context "
        f"cache alone per round {[round(x, 2) for x in cache_gain]}"
    )
    figures["speedup_vs_lm_eval"] = statistics.median(speedups)
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
