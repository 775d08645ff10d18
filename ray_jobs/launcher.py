"""The one Ray Train launcher of every training-like job (``train``, ``finetune``).

Driver side: ``launch`` sets up TorchTrainer (ScalingConfig, RunConfig with its name, storage
and FailureConfig) around a worker function and runs it; ``read_summary`` and
``metric_by_step`` collect what the workers wrote to the output (a path or URI). Worker side:
``WorkerReporting`` gives the trainer its callbacks, which send rank 0's metrics to the control
plane and to the output's metrics.jsonl, and report to Ray Train at every checkpoint.

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

from llm import storage
from ray_jobs.cluster import init_ray
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


def launch(worker: Callable[[dict[str, Any]], None], config: dict[str, Any], job: Launch) -> None:
    """Run worker(config) on job.workers Ray Train workers; a failed group restarts from its
    last checkpoint up to job.max_failures times."""
    filesystem, path = storage.filesystem(storage.join(job.output, "ray"))
    init_ray()
    trainer = TorchTrainer(
        worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=job.workers,
            use_gpu=job.use_gpu,
            resources_per_worker=None if job.use_gpu else {"CPU": 1},
            placement_strategy=job.placement_strategy,
        ),
        run_config=RunConfig(
            name=f"{job.kind}-{os.environ.get('LLMFORGE_JOB_ID', 'local')}",
            failure_config=FailureConfig(max_failures=job.max_failures),
            storage_path=path,
            storage_filesystem=filesystem,
        ),
    )
    trainer.fit()


class WorkerReporting:
    """A worker's callbacks for the trainer."""

    def __init__(self, output: str) -> None:
        self.rank = ray.train.get_context().get_world_rank()
        self.reporter = MetricsReporter(output) if self.rank == 0 else None

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if self.reporter is not None:
            self.reporter.log(step, metrics)

    def on_checkpoint(self, step: int, path: object, metrics: dict[str, float]) -> None:
        # the steps up to a checkpoint are never replayed: their metrics must be durable now
        self.flush()
        ray.train.report({"step": step, **metrics})  # every rank must call report

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
