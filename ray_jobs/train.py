"""Train the Transformer under Ray Train's TorchTrainer: DDP over gloo on CPUs, nccl on GPUs.

The loop itself lives in ``llm.train.loop``; this module only builds the model config from the
spec and the token shards, scales it out, and reports metrics from rank 0 to the control plane
and to Ray Train. A restarted worker group (``FailureConfig``) resumes from the last checkpoint.

After such a restart the steps between that checkpoint and the failure run again, and their
metrics are sent again: the control plane keeps both records of a replayed step (the later one,
by ``time``, belongs to the run that went on), and their losses match, since the resumed run
restores the loader position and RNG state.

Fault injection for tests: with ``LLMFORGE_TEST_FAIL_AT_STEP=N`` in the job's environment, rank 0
raises once at the first log step >= N, leaving ``FAIL_MARKER`` in the output folder so that the
restarted group goes on. It is read from the driver's environment only, never from the spec, so
a REST caller cannot set it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from llm.model import ModelConfig
from llm.train.checkpoint import CONFIG_FILE, Retention, latest_checkpoint, read_state
from llm.train.config import check_config
from llm.train.loop import TrainConfig, train
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray
from ray_jobs.entrypoint import JobError, open_shards_and_output
from ray_jobs.reporting import MetricsReporter
from ray_jobs.specs import TrainSpec
from ray_jobs.train_storage import report, restore_from_storage, run_storage

ENV_FAIL_AT_STEP = "LLMFORGE_TEST_FAIL_AT_STEP"
ENV_FAIL_WIPES = "LLMFORGE_TEST_FAIL_WIPES_CHECKPOINTS"
FAIL_MARKER = "injected_failure.json"

# TrainSpec fields handed to the loop's TrainConfig under the same name.
_LOOP_OPTIONS = {
    "optimizer",
    "schedule",
    "decay_fraction",
    "decay_embeddings",
    "beta1",
    "beta2",
    "eps",
    "precision",
    "global_batch_tokens",
    "parallelism",
    "activation_checkpointing",
    "compile",
    "spike_factor",
    "max_consecutive_spikes",
    "peak_flops",
    "tensorboard",
    "keep_last",
    "fsdp_checkpoint",
}


def _configs(spec: TrainSpec, vocab_size: int) -> tuple[TrainConfig, ModelConfig]:
    model = ModelConfig(vocab_size=vocab_size, **spec.model.model_dump())
    cfg = TrainConfig(
        steps=spec.steps,
        batch_size=spec.batch_size,
        seq_len=spec.seq_len or model.block_size,
        lr=spec.lr,
        min_lr=spec.min_lr,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        grad_clip=spec.grad_clip,
        seed=spec.seed,
        log_every=spec.log_every,
        eval_every=spec.eval_every,
        eval_batches=spec.eval_batches,
        checkpoint_every=spec.checkpoint_every,
        **spec.model_dump(include=_LOOP_OPTIONS),
    )
    return cfg, model


def _fail_at_step() -> int | None:
    value = os.environ.get(ENV_FAIL_AT_STEP)
    if not value:
        return None
    try:
        return int(value)
    except ValueError as e:
        raise JobError(f"{ENV_FAIL_AT_STEP} must be a step number, got {value!r}") from e


def _inject_failure_once(out: Path, step: int, wipe: bool) -> None:
    """Raise the first time only: the marker survives the worker group's restart. With wipe,
    first delete the local checkpoints, as if the group restarted on a node with an empty disk."""
    marker = out / FAIL_MARKER
    if marker.exists():
        return
    marker.write_text(json.dumps({"step": step, "wiped_checkpoints": wipe}))
    if wipe:
        shutil.rmtree(out / "checkpoints")
    raise RuntimeError(f"injected failure at step {step} ({ENV_FAIL_AT_STEP})")


def _worker(config: dict[str, Any]) -> None:
    spec = TrainSpec.model_validate(config["spec"])
    out = Path(config["output"])
    cfg, model = _configs(spec, config["vocab_size"])
    rank = ray.train.get_context().get_world_rank()
    reporter = MetricsReporter(out) if rank == 0 else None
    fail_at = config.get("fail_at_step")
    if spec.checkpoint_storage:
        restore_from_storage(out)

    def on_log(step: int, metrics: dict[str, float]) -> None:
        assert reporter is not None
        reporter.log(step, metrics)
        if fail_at is not None and step >= fail_at:
            _inject_failure_once(out, step, wipe=config.get("fail_wipes", False))

    def on_checkpoint(step: int, path: Path | None, metrics: dict[str, float]) -> None:
        # Every rank must call report; only rank 0 has the path of what was written.
        report({"step": step, **metrics}, path, spec.checkpoint_storage)

    summary = train(cfg, model, config["data"], out, on_log=on_log, on_checkpoint=on_checkpoint)
    if rank == 0:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))


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


def _loss_by_step(metrics_file: Path) -> dict[int, float]:
    """Logged loss per step over every attempt: after a worker-group restart the loop's own
    history starts at the resumed step, but the run's first loss is still the first attempt's."""
    losses: dict[int, float] = {}
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            record = json.loads(line)
            if record["name"] == "loss":
                losses[int(record["step"])] = float(record["value"])
    return losses


def run(spec: TrainSpec) -> dict[str, Any]:
    data, manifest, out = open_shards_and_output(spec.data, spec.output)
    # A bad combination (fp16 without a GPU, a global batch that does not divide) fails here,
    # before any worker starts, with the message the API shows.
    cfg, model = _configs(spec, manifest["vocab_size"])
    check_config(
        cfg, world_size=spec.workers, device=torch.device("cuda" if spec.use_gpu else "cpu")
    )
    _check_resumable(out, cfg, model)
    init_ray()
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "spec": spec.model_dump(),
            "output": str(out),
            "data": str(data),
            "vocab_size": manifest["vocab_size"],
            "fail_at_step": _fail_at_step(),
            "fail_wipes": os.environ.get(ENV_FAIL_WIPES) == "1",
        },
        scaling_config=ScalingConfig(
            num_workers=spec.workers,
            use_gpu=spec.use_gpu,
            resources_per_worker=None if spec.use_gpu else {"CPU": 1},
        ),
        run_config=RunConfig(
            name=f"train-{os.environ.get('LLMFORGE_JOB_ID', 'local')}",
            failure_config=FailureConfig(max_failures=spec.max_failures),
            **(
                run_storage(spec.checkpoint_storage, Retention(cfg.keep_last))
                if spec.checkpoint_storage
                else {"storage_path": str(out / "ray")}
            ),
        ),
    )
    trainer.fit()
    summary_path = out / "train_summary.json"
    if not summary_path.is_file():
        raise JobError(f"training finished without writing {summary_path}")
    summary = json.loads(summary_path.read_text())
    history = _loss_by_step(out / "metrics.jsonl")
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
