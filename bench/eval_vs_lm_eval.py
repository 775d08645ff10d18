"""llmforge's evaluation harness against lm-evaluation-harness, item for item, on one CPU.

A small GPT-2-style llmforge model is trained on Project Gutenberg text from ../shared/data
(or reused from --work-dir), exported to the Hugging Face format, and evaluated twice on every
request type: (a) by llmforge's harness on the llmforge checkpoint, (b) by ``lm_eval --model
hf`` on the exported folder, with local custom task YAMLs that render the same prompts:

- multiple choice, 0-shot: the first --items items of HellaSwag and ARC-Easy; and MMLU-style
  lettered ARC-Easy (choices "A".."E", a description, --shots examples from a dev split taken
  in order, lm-eval's first_n sampler);
- loglikelihood (LAMBADA-style): the last word of paragraphs of Austen's Persuasion
  (../shared/data/text/gutenberg_nltk), lm-eval's lambada templates; is-greedy accuracy;
- one context per choice (WinoGrande-style partial scoring): sentences of the same book with
  one word blanked, the true word against a word drawn from the book; lm_eval runs its own
  winogrande doc_to_text / doc_to_choice / doc_to_target functions, llmforge Jinja templates;
- generation with filters: greedy answers to ARC-Easy questions, filtered by lm-eval's GSM8K
  filters (strict "#### N" and flexible number extraction) and a first-word regex, exact_match
  with ignore_case / ignore_punctuation; 2 repeats with majority vote.

The LAMBADA-style and WinoGrande-style records are built here (seeded) from the book and
written as JSONL that both harnesses read. Printed: per-item agreement per request type
(multiple choice: argmax of acc and of acc_norm; loglikelihood: is-greedy; one context per
choice: the argmax; generation: the completion and every filter's answer), acc and acc_norm of
both and their difference in points, items/s of both and the ratio. Both timings cover
loading the model and the data and scoring (lm_eval: its total_evaluation_time_seconds;
neither counts Python start-up); both use the same batch size and torch thread count. Each
round times lm_eval and llmforge (with and without its prefix sharing) in alternating
order; the speedup is the median of the rounds' ratios, because timings on a shared 2-core
machine swing with other processes.

Run from the repository root: .venv/bin/python -m bench.eval_vs_lm_eval [--items 500]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

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
BOOK = "text/gutenberg_nltk/austen-persuasion.txt"
# task files written for both harnesses: name -> (request type, llmforge fields)
LETTERS = "['A', 'B', 'C', 'D', 'E'][:choices | length]"
MMLU_TEXT = (
    "{{ query.strip() }}\n{% for c in choices %}{{ 'ABCDE'[loop.index0] }}. {{ c }}\n"
    "{% endfor %}Answer:"
)
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about science.\n\n"
LASTWORD_TEXT = "{{ text.split(' ')[:-1] | join(' ') }}"
LASTWORD_TARGET = "{{ ' ' + text.split(' ')[-1] }}"
WINO_TEXT = "{{ {'1': 0, '2': 1}[answer] }}"
WINO_CHOICE = (
    "{{ [sentence[:sentence.index('_')] + option1, sentence[:sentence.index('_')] + option2] }}"
)
WINO_TARGET = "{{ sentence[sentence.index('_') + 1:].strip() }}"
GEN_UNTIL = ["\n\n", "Question:"]
GEN_TOKENS = 24
GEN_REPEATS = 2
EXACT_MATCH = {"metric": "exact_match", "ignore_case": True, "ignore_punctuation": True}
FILTERS = [
    {
        "name": "strict-match",
        "filter": [
            {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
            {"function": "take_first"},
        ],
    },
    {
        "name": "flexible-extract",
        "filter": [
            {
                "function": "regex",
                "group_select": -1,
                "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)",
            },
            {"function": "take_first"},
        ],
    },
    {
        "name": "first-word-maj",
        "filter": [
            {"function": "regex", "regex_pattern": "([A-Za-z]+)"},
            {"function": "majority_vote"},
            {"function": "take_first"},
        ],
    },
]
MODEL = ModelConfig(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=192)
BOOKS = 12  # Gutenberg books of training text (~4 MB)

# lm_eval custom tasks: the prompts of llm/eval/tasks/{hellaswag,arc_easy}.yaml, with lm_eval's
# own HellaSwag preprocess applied to the local copy's fields; WinoGrande-style tasks run
# lm_eval's own winogrande functions
HELLASWAG_UTILS = """from lm_eval.tasks.hellaswag.utils import preprocess
from lm_eval.tasks.winogrande.preprocess_winogrande import (
    doc_to_choice as wino_choice,
    doc_to_target as wino_target,
    doc_to_text as wino_text,
)


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
num_fewshot: 0
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


def _paragraphs() -> list[str]:
    """Paragraphs of the book, whitespace joined, from the first chapter on."""
    text = (DATA / BOOK).read_text(encoding="utf-8", errors="replace")
    text = text[text.index("Chapter 1") :]
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def lastword_records(n: int) -> list[dict[str, Any]]:
    """LAMBADA-style passages: paragraphs of 20 to 120 words without their final punctuation,
    so the target is the last word itself."""
    out = []
    for para in _paragraphs():
        words = para.split(" ")
        if 20 <= len(words) <= 120:
            text = re.sub(r"[^\w]+$", "", para)
            if text and re.search(r"\w$", text):
                out.append({"text": text})
    return out[:n]


def wino_records(n: int) -> list[dict[str, Any]]:
    """WinoGrande-format records: a sentence of 8 to 40 words with one lower-case word blanked
    ("_"); the true word and a word drawn from the book as option1/option2 in random order."""
    rnd = random.Random(0)
    sentences = [
        s
        for para in _paragraphs()
        for s in re.split(r"(?<=[.!?])\s+", para)
        if 8 <= len(s.split(" ")) <= 40 and "_" not in s
    ]
    vocab = sorted({w for s in sentences for w in s.split(" ") if w.isalpha() and w.islower()})
    out = []
    for sentence in sentences:
        words = sentence.split(" ")
        spots = [k for k in range(2, len(words) - 2) if words[k].isalpha() and words[k].islower()]
        if not spots:
            continue
        k = rnd.choice(spots)
        other = rnd.choice([w for w in vocab if w != words[k]])
        answer = rnd.choice("12")
        options = (words[k], other) if answer == "1" else (other, words[k])
        blanked = " ".join([*words[:k], "_", *words[k + 1 :]])
        out.append(
            {"sentence": blanked, "option1": options[0], "option2": options[1], "answer": answer}
        )
        if len(out) == n:
            break
    return out


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _yaml(path: Path, fields: dict[str, Any], functions: dict[str, str] | None = None) -> None:
    text = yaml.safe_dump(fields, sort_keys=False, allow_unicode=True)
    text += "".join(f"{k}: !function {v}\n" for k, v in (functions or {}).items())
    path.write_text(text)


def _lm_eval_data(name: str, test: Path, dev: Path | None = None) -> dict[str, Any]:
    files = {"test": str(test), **({"dev": str(dev)} if dev else {})}
    return {
        "task": f"bench_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        **({"fewshot_split": "dev"} if dev else {}),
    }


def extra_tasks(work: Path, n_items: int, shots: int) -> dict[str, Path]:
    """The data and both harnesses' task files of the MMLU-style, LAMBADA-style,
    WinoGrande-style and generation tasks; llmforge's task files by name."""
    tasks, ours = work / "lm_eval_tasks", work / "llmforge_tasks"
    ours.mkdir(parents=True, exist_ok=True)
    with open(DATA / TASKS["arc_easy"]) as f:
        arc = [json.loads(line) for line in f]
    test = _jsonl(tasks / "arc_test.jsonl", arc[:n_items])
    dev = _jsonl(tasks / "arc_dev.jsonl", arc[-shots:])  # never among the evaluated items
    lastword = _jsonl(tasks / "lastword.jsonl", lastword_records(n_items))
    wino = _jsonl(tasks / "wino.jsonl", wino_records(n_items))
    gen = _jsonl(tasks / "arc_gen.jsonl", arc[: n_items // 2])
    mmlu = {
        "output_type": "multiple_choice",
        "description": MMLU_DESCRIPTION,
        "doc_to_text": MMLU_TEXT,
        "doc_to_choice": "{{ " + LETTERS + " }}",
        "doc_to_target": "{{ gold }}",
        "num_fewshot": shots,
        "fewshot_config": {"sampler": "first_n"},
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    lastword_task = {
        "output_type": "loglikelihood",
        "doc_to_text": LASTWORD_TEXT,
        "doc_to_target": LASTWORD_TARGET,
        "num_fewshot": 0,
        "metric_list": [{"metric": "perplexity"}, {"metric": "acc"}],
    }
    wino_task = {
        "output_type": "multiple_choice",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc"}],
    }
    gen_task = {
        "output_type": "generate_until",
        "doc_to_text": "{{ query }}\nAnswer:",
        "doc_to_target": "{{ choices[gold] }}",
        "num_fewshot": 0,
        "repeats": GEN_REPEATS,
        "metric_list": [EXACT_MATCH],
        "filter_list": FILTERS,
    }
    gen_kwargs = {"until": GEN_UNTIL, "do_sample": False, "max_gen_toks": GEN_TOKENS}
    _yaml(tasks / "bench_mmlu_arc.yaml", {**_lm_eval_data("mmlu_arc", test, dev), **mmlu})
    _yaml(tasks / "bench_lastword.yaml", {**_lm_eval_data("lastword", lastword), **lastword_task})
    _yaml(
        tasks / "bench_wino.yaml",
        {**_lm_eval_data("wino", wino), **wino_task},
        {
            "doc_to_text": "utils.wino_text",
            "doc_to_choice": "utils.wino_choice",
            "doc_to_target": "utils.wino_target",
        },
    )
    _yaml(
        tasks / "bench_gen.yaml",
        {**_lm_eval_data("gen", gen), **gen_task, "generation_kwargs": gen_kwargs},
    )
    wino_ours = {
        **wino_task,
        "doc_to_text": WINO_TEXT,
        "doc_to_choice": WINO_CHOICE,
        "doc_to_target": WINO_TARGET,
    }
    gen_ours = {
        **gen_task,
        "generation": {"until": GEN_UNTIL, "max_gen_toks": GEN_TOKENS, "temperature": 0.0},
    }
    files = {}
    for name, data, fields in (
        ("mmlu_arc", test, {**mmlu, "fewshot_data": str(dev)}),
        ("lastword", lastword, lastword_task),
        ("wino", wino, wino_ours),
        ("gen", gen, gen_ours),
    ):
        files[name] = ours / f"{name}.yaml"
        _yaml(files[name], {"task": name, "data": str(data), **fields})
    return files


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


MC_TASKS = ("hellaswag", "arc_easy", "mmlu_arc")
ALL_TASKS = (*MC_TASKS, "lastword", "wino", "gen")


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
        ",".join(f"bench_{t}" for t in ALL_TASKS),
        "--device",
        "cpu",
        "--batch_size",
        str(batch_size),
        "--log_samples",
        "--output_path",
        str(out / "lm_eval_out"),
    ]
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    results_file = max((out / "lm_eval_out").rglob("results_*.json"), key=os.path.getmtime)
    results = json.loads(results_file.read_text())
    samples: dict[str, dict[Any, dict[str, Any]]] = {}
    for task in ALL_TASKS:
        found = max(results_file.parent.glob(f"samples_bench_{task}_*.jsonl"), key=os.path.getmtime)
        rows = [json.loads(line) for line in found.read_text().splitlines()]
        # one row per item and filter (generation); "none" for the others
        samples[task] = {(r["doc_id"], r["filter"]): r for r in rows}
    return {
        "results": results["results"],
        "samples": samples,
        "wall": wall,
        "seconds": float(results["total_evaluation_time_seconds"]),
    }


def run_ours(
    checkpoint: Path,
    tokenizer: Path,
    n_items: int,
    batch_size: int,
    share_prefix: bool,
    files: dict[str, Path],
) -> dict[str, Any]:
    started = time.perf_counter()
    model = load_eval_model(checkpoint, tokenizer)
    result = evaluate_tasks(
        model,
        tasks=[*TASKS, *(files[t] for t in ALL_TASKS if t in files)],
        limit=n_items,
        batch_size=batch_size,
        log_samples=True,
        share_prefix=share_prefix,
    )
    result["seconds"] = time.perf_counter() - started
    return result


def _lls(sample: dict[str, Any]) -> list[float]:
    return [float(resp[0]) for resp in sample["filtered_resps"]]


def _their_preds(sample: dict[str, Any], choices: list[str]) -> tuple[int, int]:
    lls = _lls(sample)
    norm = [ll / len(c) for ll, c in zip(lls, choices, strict=True)]
    return lls.index(max(lls)), norm.index(max(norm))


def _acc_diffs(ours: dict[str, Any], theirs: dict[str, Any], task: str) -> list[float]:
    diffs = []
    mine = ours["results"][task]["metrics"]
    for metric, value in mine.items():
        key = f"{metric},none" if "," not in metric else metric
        other = theirs["results"][f"bench_{task}"].get(key)
        if value["value"] is None or other is None or "perplexity" in metric:
            continue
        diffs.append(abs(value["value"] - other) * 100)
        print(
            f"{task:10s} {metric:30s} llmforge {value['value'] * 100:6.2f}  lm_eval "
            f"{other * 100:6.2f}  diff {abs(value['value'] - other) * 100:.2f} points"
        )
    return diffs


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Per-item agreement per request type, and the largest metric difference in points."""
    counts = {kind: [0, 0] for kind in ("mc", "loglikelihood", "multi_context", "generate")}
    diffs: list[float] = []
    max_ll_diff = 0.0
    for task in ALL_TASKS:
        samples = ours["results"][task]["samples"]
        other = theirs["samples"][task]
        for n, sample in enumerate(samples):
            if task in MC_TASKS:
                their = other[(n, "none")]
                pred, pred_norm = _their_preds(their, sample["choices"])
                same = pred == sample["pred"] and pred_norm == sample["pred_norm"]
                kind, lls = "mc", list(zip(_lls(their), sample["loglikelihoods"], strict=True))
            elif task == "wino":
                their = other[(n, "none")]
                theirs_lls = _lls(their)
                same = theirs_lls.index(max(theirs_lls)) == sample["pred"]
                kind, lls = (
                    "multi_context",
                    list(zip(theirs_lls, sample["loglikelihoods"], strict=True)),
                )
            elif task == "lastword":
                their = other[(n, "none")]
                resp = their["filtered_resps"]
                ll, greedy = (resp[0] if isinstance(resp[0], list) else resp)[:2]
                # lm_eval's sample log may hold the pair as strings ("-3.2", "False"); the
                # item agrees when is-greedy agrees and the log-likelihoods within 1e-3
                same = (str(greedy) == "True") == sample["is_greedy"]
                same = same and abs(float(ll) - sample["loglikelihood"]) <= 1e-3
                kind, lls = "loglikelihood", [(float(ll), sample["loglikelihood"])]
            else:
                their_raw = other[(n, FILTERS[0]["name"])]["resps"][0]
                same = their_raw == sample["responses"] and all(
                    other[(n, f["name"])]["filtered_resps"][0] == sample["filtered"][f["name"]]
                    for f in FILTERS
                )
                kind, lls = "generate", []
            counts[kind][0] += int(same)
            counts[kind][1] += 1
            for a, b in lls:
                max_ll_diff = max(max_ll_diff, abs(a - b))
        diffs += _acc_diffs(ours, theirs, task)
    for kind, (agree, total) in counts.items():
        print(f"per-item agreement, {kind}: {agree}/{total}")
    print(f"largest log-likelihood difference {max_ll_diff:.2e}")
    ppl = ours["results"]["lastword"]["metrics"]["perplexity"]["value"]
    their_ppl = theirs["results"]["bench_lastword"]["perplexity,none"]
    print(f"lastword perplexity llmforge {ppl:.4f} lm_eval {their_ppl:.4f}")
    greedy = sum(s["is_greedy"] for s in ours["results"]["lastword"]["samples"])
    print(f"lastword items whose word greedy decoding gives (llmforge): {greedy}")

    def rate(kind: str) -> float:
        return counts[kind][0] / counts[kind][1]

    return {
        "item_agreement": rate("mc"),
        "item_agreement_loglikelihood": rate("loglikelihood"),
        "item_agreement_multi_context": rate("multi_context"),
        "item_agreement_generate": rate("generate"),
        "acc_diff_points": max(diffs),
    }


def measure_round(
    args: argparse.Namespace,
    checkpoint: Path,
    tokenizer: Path,
    hf_dir: Path,
    eos: int,
    order: int,
    files: dict[str, Path],
) -> dict[str, dict[str, Any]]:
    """One timing of each: lm_eval, llmforge with and without prefix sharing; the
    order alternates between rounds so neither side always runs first."""
    tasks = args.work_dir / "lm_eval_tasks"
    runs = {
        "lm_eval": lambda: run_lm_eval(hf_dir, tasks, args.work_dir, args.batch_size, eos),
        "ours": lambda: run_ours(checkpoint, tokenizer, args.items, args.batch_size, True, files),
        "plain": lambda: run_ours(checkpoint, tokenizer, args.items, args.batch_size, False, files),
    }
    names = list(runs) if order % 2 == 0 else list(reversed(runs))
    out = {name: runs[name]() for name in names}
    n_items = sum(r["n"] for r in out["ours"]["results"].values())
    rates = {name: n_items / out[name]["seconds"] for name in runs}
    print(
        f"round {order + 1}: {n_items} items, items/s llmforge {rates['ours']:.1f} (without "
        f"prefix sharing {rates['plain']:.1f}), lm_eval hf {rates['lm_eval']:.1f} "
        f"(its whole command took {out['lm_eval']['wall']:.1f} s with Python start-up)"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=500, help="first N items of each task")
    parser.add_argument(
        "--extra-items", type=int, default=200, help="items of each task beyond HellaSwag/ARC"
    )
    parser.add_argument("--shots", type=int, default=2, help="few-shot of the MMLU-style task")
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
    files = extra_tasks(args.work_dir, args.extra_items, args.shots)
    # the same thread count on both sides; one thread keeps timings steady on a shared CPU
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    rounds = [measure_round(args, checkpoint, tokenizer, hf_dir, eos, 0, files)]
    figures = compare(rounds[0]["ours"], rounds[0]["lm_eval"])  # printed before more rounds
    rounds += [
        measure_round(args, checkpoint, tokenizer, hf_dir, eos, i, files)
        for i in range(1, args.rounds)
    ]
    speedups = [r["lm_eval"]["seconds"] / r["ours"]["seconds"] for r in rounds]
    cache_gain = [r["plain"]["seconds"] / r["ours"]["seconds"] for r in rounds]
    print(
        f"speedup over lm_eval per round {[round(x, 2) for x in speedups]}; prefix "
        f"sharing alone per round {[round(x, 2) for x in cache_gain]}"
    )
    figures["speedup_vs_lm_eval"] = statistics.median(speedups)
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
