"""Pretrain the Transformer under Ray Train: DDP or FSDP2 over gloo on CPUs, nccl on GPUs.

The training itself is ``llm.train.pretrain``; this module puts the spec's model on the token
shards' vocabulary, checks what can fail before any worker starts, and runs the workers through
the shared launcher (``ray_jobs.launcher``), which reports metrics from rank 0 to the control
plane and to Ray Train. Data and output are local paths or ``s3://`` URIs alike: the shards are
streamed into each node's scratch (``ray_jobs.training_io``), checkpoints are written to and
resumed from ``<output>/checkpoints`` (``llm.train.checkpoint.location``), and the driver reads
only what rank 0 wrote to the output. A restarted worker group (``FailureConfig``), on any
nodes, resumes from the last checkpoint. The spec's ``debug`` section injects a failure for
fault-tolerance tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from contracts.specs import DebugOptions, TrainSpec
from llm import storage
from llm.model.config import ModelConfig
from llm.train.checkpoint import CONFIG_FILE, STATE_FILE
from llm.train.checkpoint.location import latest_uri, scratch_of
from llm.train.config import TrainConfig, check_config
from llm.train.mixture import MixtureError, MixturePlan
from llm.train.pretrain import train
from ray_jobs import entrypoint
from ray_jobs.entrypoint import JobError
from ray_jobs.fault_injection import fail_once, pause_once
from ray_jobs.launcher import Launch, WorkerReporting, launch, metric_by_step, read_summary
from ray_jobs.training_io import (
    Shards,
    local_shards,
    model_on_shards,
    open_output,
    open_shards,
    rank_nodes,
    shards_cache,
)

SUMMARY_FILE = "train_summary.json"


def worker(config: dict[str, Any]) -> None:
    """One rank of a train job, or of a tune job's trial (config["trial"], its id)."""
    output: str = config["output"]
    shards: Shards = config["shards"]
    data, verified = local_shards(shards)
    reporting = WorkerReporting(output, trial=config.get("trial"), steps=config["cfg"].steps)
    nodes = rank_nodes()
    debug: DebugOptions | None = config["debug"]
    # what a node restarted with an empty disk lacks (debug.wipe_local_checkpoints)
    scratch = [scratch_of(storage.join(output, "checkpoints")), shards_cache(shards.digest)]

    def on_log(step: int, metrics: dict[str, float]) -> None:
        reporting.on_log(step, metrics)
        if debug is not None:
            fail_once(output, step, debug, scratch)
            pause_once(output, step, debug)

    try:
        summary = train(
            config["cfg"],
            config["model"],
            data,
            output,
            on_log=on_log,
            on_checkpoint=reporting.on_checkpoint,
            on_eval=reporting.on_eval,
            verify_shards=not verified,
            mixture=config["mixture"],
        )
    finally:
        reporting.flush()
    if reporting.rank == 0:
        storage.write_json(storage.join(output, SUMMARY_FILE), {**summary, "nodes": nodes})


def _check_resumable(output: str, cfg: TrainConfig, model: ModelConfig) -> None:
    """A checkpoint already at the output is where the workers will resume: one from another
    model or optimizer fails here, before any worker starts, naming what differs."""
    latest = latest_uri(storage.join(output, "checkpoints"))
    if latest is None:
        return
    saved = ModelConfig.from_dict(storage.read_json(storage.join(latest, CONFIG_FILE))).to_dict()
    wanted = model.to_dict()
    differ = sorted(k for k, v in wanted.items() if saved.get(k) != v)
    if differ:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted[k]!r} here" for k in differ)
        raise JobError(
            f"{latest} is a checkpoint of another model ({pairs}); the job would resume from "
            "it. Use a new output folder, or the model settings it was trained with"
        )
    state = storage.read_json(storage.join(latest, STATE_FILE))
    optimizer = state.get("train_config", {}).get("optimizer", "adamw")
    if optimizer != cfg.optimizer:
        raise JobError(
            f"{latest} holds {optimizer!r} optimizer state, but the spec asks for "
            f"{cfg.optimizer!r}; use a new output folder or optimizer {optimizer!r}"
        )


def run(spec: TrainSpec) -> dict[str, Any]:
    output = open_output(spec.output)
    shards = open_shards(spec.data)
    model = model_on_shards(spec.model, shards.manifest)
    cfg = dataclasses.replace(spec.train, seq_len=spec.train.seq_len or model.block_size)
    # A bad combination (fp16 without a GPU, a global batch that does not divide) fails here,
    # before any worker starts, with the message the API shows.
    device = torch.device("cuda" if spec.use_gpu else "cpu")
    check_config(cfg, seq_len=cfg.seq_len, world_size=spec.workers, device=device)
    _check_resumable(output, cfg, model)
    try:
        mixture = spec.mixture_plan(shards.manifest)
    except MixtureError as e:
        raise JobError(f"mixture.{'.'.join(e.loc)}: {e}") from e
    job = Launch(
        kind="train",
        output=output,
        workers=spec.workers,
        use_gpu=spec.use_gpu,
        max_failures=spec.max_failures,
        placement_strategy=spec.placement_strategy,
    )
    worker_config = {
        "cfg": cfg,
        "model": model,
        "shards": shards,
        "output": output,
        "debug": spec.debug,
        "mixture": mixture.shares if mixture else None,
    }
    launch(worker, worker_config, job)
    summary = read_summary(storage.join(output, SUMMARY_FILE))
    history = metric_by_step(output, "loss")
    return {
        "steps": summary["steps"],
        "tokens_seen": summary["tokens_seen"],
        # the run's length as asked: a token or compute budget, and the steps it came to
        "budget": {
            "tokens": spec.tokens,
            "flops": spec.flops,
            "tokens_per_step": spec.tokens_per_step,
            "steps": spec.train.steps,
        },
        "first_loss": history[min(history)] if history else None,
        "final_loss": history[max(history)] if history else None,
        "last": summary["last"],
        "checkpoint": summary["checkpoint"],
        "best_checkpoint": summary.get("best_checkpoint"),
        "parameters": summary["parameters"],
        "nodes": summary["nodes"],
        "mixture": _mixture_report(mixture, summary.get("mixture")),
    }


def _mixture_report(
    plan: MixturePlan | None, usage: dict[str, dict[str, float]] | None
) -> dict[str, Any] | None:
    """Requested and drawn shares, and what each source gave (over every rank): the tokens
    read from it, its epochs, and the train tokens it holds."""
    if plan is None or usage is None:
        return None
    return {
        "requested": plan.requested,
        "target": plan.shares,
        "capped": plan.capped,
        "realised": {name: used["share"] for name, used in usage.items()},
        "sources": {
            name: {
                "tokens": int(used["tokens"]),
                "epochs": used["epochs"],
                "windows": int(used["windows"]),
                "windows_held": plan.windows[name],
            }
            for name, used in usage.items()
        },
    }


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(TrainSpec, run))
