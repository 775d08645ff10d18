"""Hyperparameter search with Ray Tune and ASHA around the train job's training.

Each trial is a Ray Train run, launched from a Tune function trainable through the train job's
own launcher and worker (``ray_jobs.launcher``, ``ray_jobs.train.worker``): ``workers`` DDP
workers, on GPUs or CPUs, at the spec's precision. The workers report ``val_loss`` at every
evaluation to Ray Train, and ``TuneReportCallback`` passes rank 0's on to Ray Tune, where ASHA
(asynchronous successive halving) stops the trials that trail their rung. Every trial starts
from the same seed (the same initial weights and data order), so differences between trials
come from the sampled hyperparameters alone.

Resources: the trainable itself only waits on its Train run, so it reserves no CPU (a little
memory, as Tune needs some resource per trial); a trial's CPUs and GPUs are its workers'. Unless
the spec caps it, as many trials run at once as the cluster's CPUs (and GPUs) hold, so trials
that could not get their workers do not sit idle in between.

Each trial writes under ``<output>/trials/<trial id>`` what a train job writes to its output
(metrics.jsonl, train_summary.json, and a checkpoint at its last step); its metrics reach the
control plane tagged with the trial id (``trials/<trial id>/val_loss``, ``ray_jobs.reporting``).
The checkpoint of the best trial that ran to the end is the result's ``best_checkpoint``, which
the control plane registers as a model. A trial ASHA stops is not a candidate: its Train run
ends with the trainable's actor, a few steps later (whose metrics reach the control plane too),
usually before its last step.
Tune's own run folder is ``<output>/ray``. Data and output are local paths or ``s3://`` URIs alike.

The result (also ``tune_results.json`` in the output) is the trial table sorted by best
val_loss, ``best_config`` and ``best_checkpoint``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from contracts.specs import TuneSpec
from llm import storage
from llm.model.config import ModelConfig
from llm.train.checkpoint.location import latest_uri
from llm.train.config import TrainConfig, check_config
from ray_jobs import entrypoint
from ray_jobs.cluster import init_ray
from ray_jobs.entrypoint import JobError
from ray_jobs.launcher import Launch, launch
from ray_jobs.train import worker
from ray_jobs.training_io import model_on_shards, open_output, open_shards

METRIC, MODE = "val_loss", "min"
# Seconds Tune waits for a stopped trial's trainable to end before killing it (Ray's default is
# 600). A trial ASHA stops keeps training until then, and its Train run can block for good on
# a report nobody reads any more (TuneReportCallback's queue to the stopped trainable), holding
# its workers' CPUs so that no other trial can start; killing the trainable ends its Train run
# (the controller and workers are its children) and frees them.
STOPPED_TRIAL_GRACE_S = "10"
# The loop's cosine schedule decays to min_lr; a fixed floor would sit above small sampled lrs.
MIN_LR_RATIO = 0.1
# What the trainable reserves: it only waits on its Train run, whose workers reserve the CPUs.
# Tune needs some resource in a trial's first bundle, and any CPU there, however small, would
# leave a cluster of N CPUs unable to start a trial of N workers.
TRAINABLE_RESOURCES: dict[str, float] = {"cpu": 0, "memory": 64 * 2**20}


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
        precision=spec.precision,
        seed=spec.seed,
        # Tune needs val_loss only: no log records in between
        log_every=spec.eval_every,
        eval_every=spec.eval_every,
        eval_batches=spec.eval_batches,
        # ASHA stops trials and never resumes them, so no checkpoint is needed before the last
        # step; the last one is the trial's model (the best trial's is kept)
        checkpoint_every=spec.max_steps,
        keep_last=1,
    )
    return cfg, model


def trial_launch(spec: TuneSpec, output: str, trial: str) -> Launch:
    """How one trial's Ray Train run is launched."""
    return Launch(
        kind=f"tune-{trial}",
        output=output,
        workers=spec.workers,
        use_gpu=spec.use_gpu,
        # a restarted trial would start over and report its steps to Tune a second time
        max_failures=0,
        cpus_per_worker=spec.cpus_per_worker,
    )


def _trial(params: dict[str, Any], *, setup: dict[str, Any]) -> None:
    spec: TuneSpec = setup["spec"]
    cfg, model = trial_configs(spec, setup["model"], params)
    trial = tune.get_context().get_trial_id()
    out = trial_output(setup["output"], trial)
    config = {
        "cfg": cfg,
        "model": model,
        "shards": setup["shards"],
        "output": out,
        "debug": None,
        "mixture": None,  # trials read the data unmixed
        "trial": trial,
    }
    launch(worker, config, trial_launch(spec, out, trial), callbacks=[TuneReportCallback()])


def trial_output(output: str, trial: str) -> str:
    return storage.join(output, "trials", trial)


def trials_at_once(spec: TuneSpec, cluster: dict[str, float]) -> int:
    """How many trials the cluster's resources hold at once (at least one: a cluster that
    grows when asked may start it)."""
    fits = cluster.get("CPU", 0.0) // (spec.workers * spec.cpus_per_worker)
    if spec.use_gpu:
        fits = min(fits, cluster.get("GPU", 0.0) // spec.workers)
    return max(1, int(fits))


def _row(result: tune.Result, max_steps: int) -> dict[str, Any]:
    metrics = result.metrics or {}
    row: dict[str, Any] = {
        "trial_id": metrics.get("trial_id"),
        "config": result.config,
        "best_val_loss": None,
        "final_val_loss": None,
        "steps": 0,
        "stopped_early": False,
        "error": None if result.error is None else str(result.error),
        "workers": metrics.get("world_size"),
        "node": metrics.get("node"),
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


def best_finished(table: list[dict[str, Any]], max_steps: int) -> dict[str, Any] | None:
    """The best-ranked trial that ran every step (one ASHA stopped has no checkpoint), or None."""
    return next(
        (r for r in table if r["error"] is None and r["steps"] == max_steps and r["trial_id"]),
        None,
    )


def last_checkpoint(out: str, trial: str | None) -> str | None:
    """A finished trial's checkpoint (it writes one, at its last step)."""
    if trial is None:
        return None
    return latest_uri(storage.join(trial_output(out, trial), "checkpoints"))


def _tuner(spec: TuneSpec, setup: dict[str, Any], out: str) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(_trial, setup=setup), TRAINABLE_RESOURCES)
    filesystem, path = storage.filesystem(storage.join(out, "ray"))
    scheduler = ASHAScheduler(
        time_attr="step",
        max_t=spec.max_steps,
        grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor,
        # a trial at max_steps ends by itself once its checkpoint is written, not stopped by
        # ASHA as soon as it reports its last step
        stop_last_trials=False,
    )
    return tune.Tuner(
        trainable,
        param_space=search_space(spec),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            scheduler=scheduler,
            # Tune ignores max_concurrent_trials with a variant generator: it takes its own
            search_alg=BasicVariantGenerator(
                random_state=spec.seed,
                max_concurrent=spec.max_concurrent_trials
                or trials_at_once(spec, ray.cluster_resources()),
            ),
            num_samples=spec.num_samples,
            # a stopped trial's actor must end, and its Train run with it; a cached actor would
            # train on to the last step
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{os.environ.get('LLMFORGE_JOB_ID', 'local')}",
            storage_path=path,
            storage_filesystem=filesystem,
            verbose=1,
        ),
    )


def _check_trials(spec: TuneSpec, model: ModelConfig) -> None:
    """What would fail in every trial fails here, before any starts, with the message the API
    shows (the precision the workers' device cannot run, a batch that does not divide)."""
    device = torch.device("cuda" if spec.use_gpu else "cpu")
    # a range's low end and a choice's first value: a point of the space, whatever the space
    first = {name: values[0] for name, values in spec.space.model_dump().items()}
    for batch_size in spec.space.batch_size:
        cfg, _ = trial_configs(spec, model, first | {"batch_size": batch_size})
        try:
            check_config(cfg, seq_len=cfg.seq_len, world_size=spec.workers, device=device)
        except ValueError as e:
            raise JobError(str(e)) from e


def run(spec: TuneSpec) -> dict[str, Any]:
    out = open_output(spec.output)
    shards = open_shards(spec.data)
    model = model_on_shards(spec.model, shards.manifest)
    _check_trials(spec, model)
    setup = {"spec": spec, "model": model, "output": out, "shards": shards}
    os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", STOPPED_TRIAL_GRACE_S)
    init_ray()
    grid = _tuner(spec, setup, out).fit()
    table = results_table([_row(grid[i], spec.max_steps) for i in range(len(grid))])
    best = table[0] if table and table[0]["best_val_loss"] is not None else None
    if best is None:
        errors = "; ".join(str(r["error"]) for r in table if r["error"])
        raise JobError(f"no trial reported {METRIC}: {errors or 'no trial ran'}")
    finished = best_finished(table, spec.max_steps)
    kept = finished["trial_id"] if finished else None
    summary = {
        "metric": METRIC,
        "mode": MODE,
        "best_config": best["config"],
        "best_val_loss": best["best_val_loss"],
        "best_trial": best["trial_id"],
        "best_checkpoint": last_checkpoint(out, kept),
        "best_checkpoint_trial": kept,
        "trials": table,
        "stopped_early": sum(r["stopped_early"] for r in table),
        "failed": sum(r["error"] is not None for r in table),
        "nodes": sorted({r["node"] for r in table if r["node"]}),
    }
    storage.write_text(storage.join(out, "tune_results.json"), json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(TuneSpec, run))
