"""The one Ray Train launcher of every training-like job (``train``, ``finetune``, and each
trial of ``tune``).

Driver side: ``launch`` sets up TorchTrainer (ScalingConfig, RunConfig with its name, storage
and FailureConfig) around a worker function and runs it; ``read_summary`` and
``metric_by_step`` collect what the workers wrote to the output (a path or URI). Worker side:
``WorkerReporting`` gives the trainer its callbacks, which send rank 0's metrics to the control
plane and to the output's metrics.jsonl, and report to Ray Train at every checkpoint (a tune
trial's also at every evaluation, which ``TuneReportCallback`` passes on to Ray Tune).

Checkpoints live at the output itself (``llm.train.checkpoint.location``), never in Ray Train's
storage: a worker group restarted on other nodes resumes from them by itself. Ray Train's own
run folder is under the output too (``<output>/ray``), so it is somewhere every node sees.

After a worker-group restart the steps between the last checkpoint and the failure run again,
and their metrics are sent again: the control plane keeps both records of a replayed step (the
later one, by ``time``, belongs to the run that went on), and their losses match, since the
resumed run restores the loader position and RNG state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import ray.train
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback

from llm import storage
from ray_jobs.cluster import init_ray, node_id
from ray_jobs.entrypoint import JobError
from ray_jobs.reporting import METRICS_FILE, MetricsReporter

Placement = Literal["PACK", "SPREAD", "STRICT_SPREAD"]


@dataclass(frozen=True)
class Launch:
    """Where and how wide a training job runs."""

    kind: str  # names the Ray Train run, with the control plane's job id
    output: str  # a path or URI
    workers: int
    use_gpu: bool
    max_failures: int
    placement_strategy: Placement = "PACK"
    cpus_per_worker: float | None = None  # None: Ray Train's default (1, none beside a GPU)


def worker_resources(job: Launch) -> dict[str, float] | None:
    """What each worker reserves: its CPUs, and one GPU when the job uses GPUs."""
    if job.cpus_per_worker is None:
        return None if job.use_gpu else {"CPU": 1}
    return {"CPU": job.cpus_per_worker} | ({"GPU": 1} if job.use_gpu else {})


class _Trainer(TorchTrainer):
    """TorchTrainer without its Ray Data plumbing when it is given no datasets (our workers read
    token shards themselves): Ray 2.60 starts a DatasetManager actor for every run regardless,
    one more process (about 2 CPU-seconds to import ray.data) in the raylet's start-up queue
    before the workers."""

    def _create_default_callbacks(self) -> list[Any]:
        # Train v2 (Ray 2.60's default) calls this; mypy sees the v1 class
        callbacks: list[Any] = super()._create_default_callbacks()  # type: ignore[misc]
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]


def launch(
    worker: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    job: Launch,
    callbacks: list[Any] | None = None,
) -> None:
    """Run worker(config) on job.workers Ray Train workers; a failed group restarts from its
    last checkpoint up to job.max_failures times. callbacks are Ray Train's (RunConfig)."""
    filesystem, path = storage.filesystem(storage.join(job.output, "ray"))
    init_ray()
    trainer = _Trainer(
        worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=job.workers,
            use_gpu=job.use_gpu,
            resources_per_worker=worker_resources(job),
            placement_strategy=job.placement_strategy,
        ),
        run_config=RunConfig(
            name=f"{job.kind}-{os.environ.get('LLMFORGE_JOB_ID', 'local')}",
            failure_config=FailureConfig(max_failures=job.max_failures),
            storage_path=path,
            storage_filesystem=filesystem,
            callbacks=callbacks,
        ),
    )
    trainer.fit()


class WorkerReporting:
    """A worker's callbacks for the trainer. A tune trial's (``trial``, its id) tags its
    metrics with the trial, and reports each evaluation to Ray Train too: Ray Tune sees the
    trial's val_loss as it trains, which is what ASHA stops trials by."""

    def __init__(self, output: str, *, trial: str | None = None, steps: int = 0) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.trial = trial
        self.steps = steps  # a trial's last step, reported by on_checkpoint
        self.reporter = MetricsReporter(output, trial=trial) if self.rank == 0 else None

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if self.reporter is not None:
            self.reporter.log(step, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        # The last step is reported by on_checkpoint, once its checkpoint is written: Ray Tune
        # may end a trial as soon as it sees its last step.
        if self.trial is not None and step < self.steps:
            ray.train.report(self.tune_metrics(step, metrics))  # every rank must call report

    def tune_metrics(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        """What a trial reports to Ray Tune: the step (ASHA's time), the losses, and the width
        of the run (Ray Tune reads rank 0's)."""
        picked: dict[str, float] = {k: metrics[k] for k in ("val_loss", "loss") if k in metrics}
        return {"step": step, **picked, "world_size": self.world_size, "node": node_id()}

    def on_checkpoint(self, step: int, path: object, metrics: dict[str, float]) -> None:
        # the steps up to a checkpoint are never replayed: their metrics must be durable now
        self.flush()
        report = self.tune_metrics(step, metrics) if self.trial else {"step": step, **metrics}
        ray.train.report(report)  # every rank must call report

    def flush(self) -> None:
        if self.reporter is not None:
            self.reporter.flush()


def read_summary(uri: str) -> dict[str, Any]:
    """The summary rank 0 wrote to the output once training finished."""
    if not storage.is_file(uri):
        raise JobError(f"training finished without writing {uri}")
    summary: dict[str, Any] = storage.read_json(uri)
    return summary


def metric_by_step(output: str, name: str) -> dict[int, float]:
    """name's value per step over every attempt (the latest record of a replayed step): after a
    worker-group restart the trainer's own history starts at the resumed step, but the run's
    first loss is still the first attempt's."""
    values: dict[int, float] = {}
    uri = storage.join(output, METRICS_FILE)
    if storage.is_file(uri):
        for line in storage.read_text(uri).splitlines():
            record = json.loads(line)
            if record["name"] == name:
                values[int(record["step"])] = float(record["value"])
    return values
