"""Hyperparameter search with Ray Tune and ASHA around ``llm.train.pretrain.train``.

Each trial is one short single-process training run inside a Tune function trainable (Tune
schedules and stops trials itself, so the TorchTrainer launcher of the train and finetune jobs,
built for one long multi-worker run with restarts, has no part here); it
reports ``val_loss`` at every evaluation, and ASHA (asynchronous successive halving) stops the
trials that trail their rung. Every trial starts from the same seed (the same initial weights
and data order), so differences between trials come from the sampled hyperparameters alone.

The result (also ``tune_results.json`` in the output) is the trial table sorted by best
val_loss, and ``best_config``. Data and output are local paths or ``s3://`` URIs alike: each
trial reads the token shards from its node's scratch cache and writes under
``<output>/trials/<trial id>``; Tune's own run folder is ``<output>/ray``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from contracts.specs import TuneSpec
from llm import storage
from llm.model.config import ModelConfig
from llm.train.pretrain import TrainConfig, train
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray, node_id
from ray_jobs.entrypoint import JobError
from ray_jobs.training_io import local_shards, model_on_shards, open_output, open_shards

METRIC, MODE = "val_loss", "min"
# The loop's cosine schedule decays to min_lr; a fixed floor would sit above small sampled lrs.
MIN_LR_RATIO = 0.1


def search_space(spec: TuneSpec) -> dict[str, Any]:
    space = spec.space
    return {
        "lr": tune.loguniform(*space.lr),
        "batch_size": tune.choice(space.batch_size),
        "weight_decay": tune.uniform(*space.weight_decay),
        "dropout": tune.uniform(*space.dropout),
        "warmup_steps": tune.choice(space.warmup_steps),
        "beta2": tune.choice(space.beta2),
        "optimizer": tune.choice(space.optimizer),
    }


def trial_configs(
    spec: TuneSpec, model: ModelConfig, params: dict[str, Any]
) -> tuple[TrainConfig, ModelConfig]:
    """The trainer's configs for one trial: the spec's fixed settings plus the sampled
    ``params``; model is the spec's, on the token shards' vocabulary."""
    model = replace(model, dropout=params["dropout"])
    cfg = TrainConfig(
        steps=spec.max_steps,
        batch_size=params["batch_size"],
        seq_len=spec.seq_len or model.block_size,
        lr=params["lr"],
        min_lr=params["lr"] * MIN_LR_RATIO,
        warmup_steps=params["warmup_steps"],
        weight_decay=params["weight_decay"],
        beta2=params["beta2"],
        optimizer=params["optimizer"],
        seed=spec.seed,
        # Tune needs val_loss only: no log records in between
        log_every=spec.eval_every,
        eval_every=spec.eval_every,
        eval_batches=spec.eval_batches,
        # ASHA stops trials and never resumes them, so no checkpoint is needed before the last step
        checkpoint_every=spec.max_steps,
    )
    return cfg, model


def _trial(params: dict[str, Any], *, setup: dict[str, Any]) -> None:
    cfg, model = trial_configs(setup["spec"], setup["model"], params)
    out = storage.join(setup["output"], "trials", tune.get_context().get_trial_id())
    data, verified = local_shards(setup["shards"])
    node = node_id()

    def on_log(step: int, metrics: dict[str, float]) -> None:
        if METRIC in metrics:
            report = {"step": step, METRIC: metrics[METRIC], "loss": metrics["loss"]}
            tune.report({**report, "node": node})

    train(cfg, model, data, out, on_log=on_log, verify_shards=not verified)


def _row(result: tune.Result, max_steps: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "trial_id": (result.metrics or {}).get("trial_id"),
        "config": result.config,
        "best_val_loss": None,
        "final_val_loss": None,
        "steps": 0,
        "stopped_early": False,
        "error": None if result.error is None else str(result.error),
        "node": (result.metrics or {}).get("node"),
    }
    history = result.metrics_dataframe
    if history is None or METRIC not in history.columns or history.empty:
        return row
    steps = int(history["step"].max())
    return {
        **row,
        "best_val_loss": float(history[METRIC].min()),
        "final_val_loss": float(history[METRIC].iloc[-1]),
        "steps": steps,
        "stopped_early": result.error is None and steps < max_steps,
    }


def results_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials sorted by best val_loss; failed or unreported trials last."""
    return sorted(
        rows,
        key=lambda r: math.inf if r["best_val_loss"] is None else r["best_val_loss"],
    )


def _tuner(spec: TuneSpec, setup: dict[str, Any], out: str) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(_trial, setup=setup), {"cpu": spec.cpus_per_trial}
    )
    filesystem, path = storage.filesystem(storage.join(out, "ray"))
    scheduler = ASHAScheduler(
        time_attr="step",
        max_t=spec.max_steps,
        grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor,
    )
    return tune.Tuner(
        trainable,
        param_space=search_space(spec),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=spec.seed),
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{os.environ.get('LLMFORGE_JOB_ID', 'local')}",
            storage_path=path,
            storage_filesystem=filesystem,
            verbose=1,
        ),
    )


def run(spec: TuneSpec) -> dict[str, Any]:
    out = open_output(spec.output)
    shards = open_shards(spec.data)
    setup = {
        "spec": spec,
        "model": model_on_shards(spec.model, shards.manifest),
        "output": out,
        "shards": shards,
    }
    init_ray()
    grid = _tuner(spec, setup, out).fit()
    table = results_table([_row(grid[i], spec.max_steps) for i in range(len(grid))])
    best = table[0] if table and table[0]["best_val_loss"] is not None else None
    if best is None:
        errors = "; ".join(str(r["error"]) for r in table if r["error"])
        raise JobError(f"no trial reported {METRIC}: {errors or 'no trial ran'}")
    summary = {
        "metric": METRIC,
        "mode": MODE,
        "best_config": best["config"],
        "best_val_loss": best["best_val_loss"],
        "trials": table,
        "stopped_early": sum(r["stopped_early"] for r in table),
        "failed": sum(r["error"] is not None for r in table),
        "nodes": sorted({r["node"] for r in table if r["node"]}),
    }
    storage.write_text(storage.join(out, "tune_results.json"), json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(TuneSpec, run))
