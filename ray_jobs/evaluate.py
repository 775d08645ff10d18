"""Evaluate a model: benchmark tasks spread over Ray workers, and/or validation loss on shards.

Tasks (``llm.eval``): each task's items are cut into contiguous shards; a pool of ``workers``
Ray actors, each holding the model once, evaluates the shards and ``llm.eval.runner.merge``
combines them into exactly the result of one unsharded run. With ``data``, one more Ray task
scores the token shards' val split (loss, perplexity) and samples a completion.

Writes ``eval.json`` (per-task metrics with standard errors, normalised leaderboard scores,
malformed-row counts, optional per-item records) and ``leaderboard.md`` beside the job's
output, and sends the main metric of each task to the control plane.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import ray
from ray.util import ActorPool

from contracts.specs import EvaluateSpec
from llm.eval.lm import load_eval_model
from llm.eval.report import leaderboard_markdown
from llm.eval.runner import evaluate_tasks, merge, regroup, shard_slices, task_rows
from llm.eval.task_config import TaskConfig, resolve_tasks
from llm.generate import generate
from llm.tokenizer.bpe import eos_id, load_tokenizer
from llm.train.checkpoint import latest_checkpoint, load_model
from llm.train.data import TokenShards
from llm.train.pretrain import evaluate_loss
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray
from ray_jobs.entrypoint import JobError, local_path
from ray_jobs.reporting import MetricsReporter

# below this many items a task is not split further: each shard pays a batch's padding
MIN_ITEMS_PER_SHARD = 64
MAIN_METRICS = ("acc_norm", "acc", "bits_per_byte", "word_perplexity", "exact_match", "rougeL")


def resolve_checkpoint(uri: str) -> Path:
    """A checkpoint folder itself, or the latest one under a train job's output."""
    path = local_path(uri).resolve()
    if (path / "config.json").is_file():
        return path
    latest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if latest is None:
        raise JobError(f"no checkpoint found at {uri}")
    return latest


def resolve_tokenizer(spec: EvaluateSpec) -> str | None:
    """A tokenizer.json path: the spec's (a file, or a shard folder's), else data's, else None
    (the model folder's own is used)."""
    for uri in (spec.tokenizer, spec.data):
        if uri is None:
            continue
        path = local_path(uri).resolve()
        if path.is_file():
            return str(path)
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise JobError(f"tokenizer not found: {uri} is neither a file nor a shard folder")
        return str(path / json.loads(manifest.read_text())["tokenizer"]["file"])
    return None


class _Evaluator:
    """One worker: loads the model once, then evaluates item shards of tasks."""

    def __init__(self, model: str, tokenizer: str | None, options: dict[str, Any]) -> None:
        self.lm = load_eval_model(model, tokenizer)
        self.options = options

    def run(self, task: TaskConfig, items: slice) -> dict[str, Any]:
        return evaluate_tasks(self.lm, tasks=[task], items=items, **self.options)


Evaluator: Any = ray.remote(num_cpus=1)(_Evaluator)


def run_tasks(spec: EvaluateSpec, model: str, tokenizer: str | None) -> dict[str, Any]:
    try:
        configs, groups = resolve_tasks(list(spec.tasks))
        rows = task_rows(configs, limit=spec.limit, data_root=spec.data_root)
    except (ValueError, FileNotFoundError) as e:  # TaskError is a ValueError
        raise JobError(str(e)) from e
    units = []
    for cfg in configs:
        shards = max(1, min(spec.workers, math.ceil(rows[cfg.task] / MIN_ITEMS_PER_SHARD)))
        units += [(cfg, s) for s in shard_slices(rows[cfg.task], shards)]
    options = {
        "num_fewshot": spec.num_fewshot,
        "limit": spec.limit,
        "batch_size": spec.batch_size,
        "log_samples": spec.log_samples,
        "data_root": spec.data_root,
    }
    actors = [
        Evaluator.remote(model, tokenizer, options) for _ in range(min(spec.workers, len(units)))
    ]
    parts = list(ActorPool(actors).map_unordered(lambda a, u: a.run.remote(*u), units))
    return regroup(merge(parts), groups)


def _main_metric(entry: dict[str, Any]) -> tuple[str, float] | None:
    for name in MAIN_METRICS:
        cell = entry.get("metrics", {}).get(name)
        if cell is not None and cell.get("value") is not None:
            return name, float(cell["value"])
    return None


def task_metrics(result: dict[str, Any]) -> dict[str, float]:
    """One figure per task and group for the control plane: "<task>/<metric>"."""
    out = {}
    for name, entry in [*result["results"].items(), *result["groups"].items()]:
        main = _main_metric(entry)
        if main is not None:
            out[f"{name}/{main[0]}"] = main[1]
    return out


def _val_and_sample(spec: EvaluateSpec, checkpoint: str, data: str) -> dict[str, Any]:
    model = load_model(checkpoint)
    shards = TokenShards(data, "val")
    if shards.vocab_size != model.config.vocab_size:
        raise JobError(
            f"{data}: vocab_size {shards.vocab_size} does not match the checkpoint's "
            f"{model.config.vocab_size} ({checkpoint})"
        )
    metrics = evaluate_loss(
        model,
        shards,
        batch_size=spec.batch_size,
        seq_len=model.config.block_size,
        max_batches=spec.max_batches,
    )
    tok = load_tokenizer(Path(data) / shards.manifest["tokenizer"]["file"])
    prompt_ids = tok.encode(spec.prompt, add_special_tokens=False).ids
    new_ids = generate(
        model,
        prompt_ids,
        spec.max_new_tokens,
        temperature=spec.temperature,
        top_k=spec.top_k,
        eos_id=eos_id(tok),
        seed=spec.seed,
    )
    return {**metrics, "prompt": spec.prompt, "completion": tok.decode(new_ids)}


def _model_path(spec: EvaluateSpec) -> Path:
    path = local_path(spec.checkpoint).resolve()
    if not path.is_dir():
        raise JobError(f"model not found: {spec.checkpoint} is not a folder")
    return path


def run(spec: EvaluateSpec) -> dict[str, Any]:
    started = time.time()
    model = _model_path(spec)
    tokenizer = resolve_tokenizer(spec)
    data = local_path(spec.data).resolve() if spec.data else None
    if data is not None and not (data / "manifest.json").is_file():
        raise JobError(f"token shards not found: {spec.data} has no manifest.json")
    out = local_path(spec.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    init_ray()
    result: dict[str, Any] = {"model": str(model)}
    if data is not None:
        checkpoint = str(resolve_checkpoint(str(model)))
        task: Any = ray.remote(num_cpus=1)(_val_and_sample)
        result |= ray.get(task.remote(spec, checkpoint, str(data)))
        result["checkpoint"] = checkpoint
    metrics: dict[str, float] = {k: result[k] for k in ("val_loss", "val_ppl") if k in result}
    if spec.tasks:
        tasks = run_tasks(spec, str(model), tokenizer)
        result["tasks"] = tasks
        metrics |= task_metrics(tasks)
        (out / "leaderboard.md").write_text(leaderboard_markdown({model.name: tasks}) + "\n")
    result["seconds"] = round(time.time() - started, 3)
    (out / "eval.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    MetricsReporter(out).log(0, metrics)
    summary = {k: v for k, v in result.items() if k != "tasks"}
    if spec.tasks:
        summary["metrics"] = task_metrics(result["tasks"])
    return summary


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(EvaluateSpec, run))
