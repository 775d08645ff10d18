"""The one Ray Train launcher of every training-like job (``train``, ``finetune``).

Driver side: ``launch`` sets up TorchTrainer (ScalingConfig, RunConfig with its name, storage
and FailureConfig) around a worker function and runs it; ``read_summary`` and
``metric_by_step`` collect what the workers left in the output folder. Worker side:
``WorkerReporting`` gives the trainer its callbacks, which send rank 0's metrics to the control
plane and report every checkpoint to Ray Train.

After a worker-group restart the steps between the last checkpoint and the failure run again,
and their metrics are sent again: the control plane keeps both records of a replayed step (the
later one, by ``time``, belongs to the run that went on), and their losses match, since the
resumed run restores the loader position and RNG state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from llm.train.checkpoint import Retention
from ray_jobs.cluster import init_ray
from ray_jobs.entrypoint import JobError
from ray_jobs.reporting import MetricsReporter
from ray_jobs.train_storage import report, restore_from_storage, run_storage

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class Launch:
    """Where and how wide a training job runs."""

    kind: str  # names the Ray Train run, with the control plane's job id
    output: Path
    workers: int
    use_gpu: bool
    max_failures: int
    checkpoint_storage: str | None = None  # persist checkpoints there (see train_storage)
    retention: Retention = field(default_factory=Retention)


def launch(worker: Callable[[dict[str, Any]], None], config: dict[str, Any], job: Launch) -> None:
    """Run worker(config) on job.workers Ray Train workers; a failed group restarts from its
    last checkpoint up to job.max_failures times."""
    if job.checkpoint_storage:
        storage = run_storage(job.checkpoint_storage, job.retention)
    else:
        storage = {"storage_path": str(job.output / "ray")}
    init_ray()
    trainer = TorchTrainer(
        worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=job.workers,
            use_gpu=job.use_gpu,
            resources_per_worker=None if job.use_gpu else {"CPU": 1},
        ),
        run_config=RunConfig(
            name=f"{job.kind}-{os.environ.get('LLMFORGE_JOB_ID', 'local')}",
            failure_config=FailureConfig(max_failures=job.max_failures),
            **storage,
        ),
    )
    trainer.fit()


class WorkerReporting:
    """A worker's callbacks for the trainer. A worker group restarted on other nodes first gets
    the latest persisted checkpoint back into its output folder, where the trainer resumes."""

    def __init__(self, output: Path, checkpoint_storage: str | None) -> None:
        self.rank = ray.train.get_context().get_world_rank()
        self.storage = checkpoint_storage
        self.reporter = MetricsReporter(output) if self.rank == 0 else None
        if checkpoint_storage:
            restore_from_storage(output)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if self.reporter is not None:
            self.reporter.log(step, metrics)

    def on_checkpoint(self, step: int, path: Path | None, metrics: dict[str, float]) -> None:
        # every rank must call report; only rank 0 has the path of what was written
        report({"step": step, **metrics}, path, self.storage)


def read_summary(path: Path) -> dict[str, Any]:
    """The summary rank 0 wrote once training finished."""
    if not path.is_file():
        raise JobError(f"training finished without writing {path}")
    summary: dict[str, Any] = json.loads(path.read_text())
    return summary


def metric_by_step(output: Path, name: str) -> dict[int, float]:
    """name's value per step over every attempt (the latest record of a replayed step): after a
    worker-group restart the trainer's own history starts at the resumed step, but the run's
    first loss is still the first attempt's."""
    values: dict[int, float] = {}
    metrics_file = output / METRICS_FILE
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            record = json.loads(line)
            if record["name"] == name:
                values[int(record["step"])] = float(record["value"])
    return values
