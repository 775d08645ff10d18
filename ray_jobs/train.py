"""Pretrain the Transformer under Ray Train: DDP or FSDP2 over gloo on CPUs, nccl on GPUs.

The training itself is ``llm.train.pretrain``; this module puts the spec's model on the token
shards' vocabulary, checks what can fail before any worker starts, and runs the workers through
the shared launcher (``ray_jobs.launcher``), which reports metrics from rank 0 to the control
plane and to Ray Train. A restarted worker group (``FailureConfig``) resumes from the last
checkpoint. The spec's ``debug`` section injects a failure for fault-tolerance tests.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from contracts.specs import DebugOptions, TrainSpec
from llm.model.config import ModelConfig
from llm.train.checkpoint import CONFIG_FILE, Retention, latest_checkpoint, read_state
from llm.train.config import TrainConfig, check_config
from llm.train.pretrain import train
from ray_jobs import entrypoint
from ray_jobs.entrypoint import JobError, model_on_shards, open_shards_and_output
from ray_jobs.fault_injection import fail_once
from ray_jobs.launcher import Launch, WorkerReporting, launch, metric_by_step, read_summary

SUMMARY_FILE = "train_summary.json"


def _worker(config: dict[str, Any]) -> None:
    out = Path(config["output"])
    reporting = WorkerReporting(out, config["checkpoint_storage"])
    debug: DebugOptions | None = config["debug"]

    def on_log(step: int, metrics: dict[str, float]) -> None:
        reporting.on_log(step, metrics)
        if debug is not None:
            fail_once(out, step, debug)

    summary = train(
        config["cfg"],
        config["model"],
        config["data"],
        out,
        on_log=on_log,
        on_checkpoint=reporting.on_checkpoint,
    )
    if reporting.rank == 0:
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))


def _check_resumable(out: Path, cfg: TrainConfig, model: ModelConfig) -> None:
    """A checkpoint already in the output folder is where the workers will resume: one from
    another model or optimizer fails here, before any worker starts, naming what differs."""
    latest = latest_checkpoint(out / "checkpoints")
    if latest is None:
        return
    saved, wanted = ModelConfig.load(latest / CONFIG_FILE).to_dict(), model.to_dict()
    differ = sorted(k for k, v in wanted.items() if saved.get(k) != v)
    if differ:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted[k]!r} here" for k in differ)
        raise JobError(
            f"{latest} is a checkpoint of another model ({pairs}); the job would resume from "
            "it. Use a new output folder, or the model settings it was trained with"
        )
    optimizer = read_state(latest).get("train_config", {}).get("optimizer", "adamw")
    if optimizer != cfg.optimizer:
        raise JobError(
            f"{latest} holds {optimizer!r} optimizer state, but the spec asks for "
            f"{cfg.optimizer!r}; use a new output folder or optimizer {optimizer!r}"
        )


def run(spec: TrainSpec) -> dict[str, Any]:
    data, manifest, out = open_shards_and_output(spec.data, spec.output)
    model = model_on_shards(spec.model, manifest)
    cfg = dataclasses.replace(spec.train, seq_len=spec.train.seq_len or model.block_size)
    # A bad combination (fp16 without a GPU, a global batch that does not divide) fails here,
    # before any worker starts, with the message the API shows.
    device = torch.device("cuda" if spec.use_gpu else "cpu")
    check_config(cfg, seq_len=cfg.seq_len, world_size=spec.workers, device=device)
    _check_resumable(out, cfg, model)
    job = Launch(
        kind="train",
        output=out,
        workers=spec.workers,
        use_gpu=spec.use_gpu,
        max_failures=spec.max_failures,
        checkpoint_storage=spec.checkpoint_storage,
        retention=Retention(cfg.keep_last),
    )
    worker_config = {
        "cfg": cfg,
        "model": model,
        "data": str(data),
        "output": str(out),
        "checkpoint_storage": spec.checkpoint_storage,
        "debug": spec.debug,
    }
    launch(_worker, worker_config, job)
    summary = read_summary(out / SUMMARY_FILE)
    history = metric_by_step(out, "loss")
    return {
        "steps": summary["steps"],
        "tokens_seen": summary["tokens_seen"],
        "first_loss": history[min(history)] if history else None,
        "final_loss": history[max(history)] if history else None,
        "last": summary["last"],
        "checkpoint": summary["checkpoint"],
        "best_checkpoint": summary.get("best_checkpoint"),
        "checkpoint_storage": spec.checkpoint_storage,
        "parameters": summary["parameters"],
    }


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(TrainSpec, run))
