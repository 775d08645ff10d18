"""Evaluate a trained checkpoint: validation loss and perplexity, and a sampled completion.

The work runs as one Ray task (so on a cluster it lands on a worker, not the head); results go to
``eval.json`` beside the job's output and to the control plane as metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ray

from llm.generate import generate
from llm.tokenizer.bpe import eos_id, load_tokenizer
from llm.train.checkpoint import latest_checkpoint, load_model
from llm.train.data import TokenShards
from llm.train.loop import evaluate_loss
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray
from ray_jobs.entrypoint import JobError, local_path
from ray_jobs.reporting import MetricsReporter
from ray_jobs.specs import EvaluateSpec


def resolve_checkpoint(uri: str) -> Path:
    """A checkpoint folder itself, or the latest one under a train job's output."""
    path = local_path(uri).resolve()
    if (path / "config.json").is_file():
        return path
    latest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if latest is None:
        raise JobError(f"no checkpoint found at {uri}")
    return latest


def _evaluate(spec: EvaluateSpec, checkpoint: str, data: str) -> dict[str, Any]:
    started = time.time()
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
    result: dict[str, Any] = dict(metrics)
    result.update(
        prompt=spec.prompt,
        completion=tok.decode(new_ids),
        checkpoint=checkpoint,
        seconds=round(time.time() - started, 3),
    )
    return result


def run(spec: EvaluateSpec) -> dict[str, Any]:
    checkpoint = resolve_checkpoint(spec.checkpoint)
    data = local_path(spec.data).resolve()
    if not (data / "manifest.json").is_file():
        raise JobError(f"token shards not found: {spec.data} has no manifest.json")
    out = local_path(spec.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    init_ray()
    task = ray.remote(num_cpus=1)(_evaluate)
    result: dict[str, Any] = ray.get(task.remote(spec, str(checkpoint), str(data)))
    (out / "eval.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    MetricsReporter(out).log(0, {"val_loss": result["val_loss"], "val_ppl": result["val_ppl"]})
    return result


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(EvaluateSpec, run))
