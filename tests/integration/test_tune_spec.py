"""The tune job's pieces that need no cluster: the spec's per-trial training settings, how many
trials fit at once, which trial's model is kept, and how trial metrics are named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from contracts.reporting import ENV_API_URL
from contracts.specs import TuneSpec
from llm.model.config import ModelConfig
from ray_jobs.launcher import Launch, worker_resources
from ray_jobs.reporting import (
    METRICS_FILE,
    MetricsReporter,
    split_trial_metric,
    trial_metric_name,
)
from ray_jobs.tune import best_finished, trial_configs, trial_launch, trials_at_once

BASE = {"data": "d", "output": "o"}
PARAMS = {"lr": 0.01, "batch_size": 4, "weight_decay": 0.0, "dropout": 0.1,
          "warmup_steps": 0, "beta2": 0.95, "optimizer": "adamw"}  # fmt: skip


def test_trials_train_as_the_spec_says() -> None:
    spec = TuneSpec.model_validate({**BASE, "workers": 2, "precision": "bf16", "max_steps": 40})
    assert (spec.workers, spec.use_gpu, spec.cpus_per_worker) == (2, False, 1)
    cfg, model = trial_configs(spec, ModelConfig(vocab_size=300), PARAMS)
    assert (cfg.precision, cfg.steps, cfg.checkpoint_every, cfg.lr) == ("bf16", 40, 40, 0.01)
    assert model.dropout == 0.1
    launch = trial_launch(spec, "o/trials/t_1", "t_1")
    assert (launch.workers, launch.use_gpu, launch.max_failures) == (2, False, 0)
    assert worker_resources(launch) == {"CPU": 1}
    defaults = TuneSpec.model_validate(BASE)
    assert (defaults.workers, defaults.precision) == (1, "fp32")


def test_fp16_without_gpus_and_the_old_cpu_field_are_refused_naming_what_to_change() -> None:
    with pytest.raises(ValidationError, match="precision 'fp16' needs use_gpu"):
        TuneSpec.model_validate({**BASE, "precision": "fp16"})
    assert TuneSpec.model_validate({**BASE, "precision": "fp16", "use_gpu": True}).use_gpu
    with pytest.raises(ValidationError, match="cpus_per_trial was replaced by cpus_per_worker"):
        TuneSpec.model_validate({**BASE, "cpus_per_trial": 2})
    with pytest.raises(ValidationError) as info:
        TuneSpec.model_validate({**BASE, "workers": 0})
    assert [e["loc"] for e in info.value.errors()] == [("workers",)]


def test_worker_resources() -> None:
    job = Launch(kind="train", output="o", workers=2, use_gpu=True, max_failures=0)
    assert worker_resources(job) is None  # Ray Train's default: a GPU and no CPU
    assert worker_resources(Launch("train", "o", 2, False, 0)) == {"CPU": 1}
    gpus = Launch("tune", "o", 2, True, 0, cpus_per_worker=4)
    assert worker_resources(gpus) == {"CPU": 4, "GPU": 1}


@pytest.mark.parametrize(
    ("settings", "cluster", "expected"),
    [
        ({}, {"CPU": 2.0}, 2),
        ({"workers": 2}, {"CPU": 2.0}, 1),
        ({"workers": 2, "cpus_per_worker": 0.5}, {"CPU": 4.0}, 4),
        ({"workers": 4}, {"CPU": 2.0}, 1),  # too small now; one may start once it grows
        ({"use_gpu": True, "workers": 2}, {"CPU": 16.0, "GPU": 4.0}, 2),
        ({"use_gpu": True}, {"CPU": 16.0}, 1),
    ],
)
def test_trials_at_once(settings: dict[str, Any], cluster: dict[str, float], expected: int) -> None:
    assert trials_at_once(TuneSpec.model_validate({**BASE, **settings}), cluster) == expected


def _row(trial_id: str, steps: int, error: str | None = None) -> dict[str, Any]:
    return {"trial_id": trial_id, "steps": steps, "error": error}


def test_the_kept_model_is_the_best_trial_that_ran_every_step() -> None:
    ranked = [_row("a", 10), _row("b", 30, "worker died"), _row("c", 30), _row("d", 30)]
    assert best_finished(ranked, 30) == _row("c", 30)
    assert best_finished([_row("a", 10)], 30) is None


def test_trial_metric_names() -> None:
    assert trial_metric_name("ab12c_00003", "val_loss") == "trials/ab12c_00003/val_loss"
    assert trial_metric_name(None, "val_loss") == "val_loss"
    assert split_trial_metric("trials/ab12c_00003/val_loss") == ("ab12c_00003", "val_loss")
    assert split_trial_metric("val_loss") == (None, "val_loss")
    assert split_trial_metric("trials/x") == (None, "trials/x")


def test_a_trials_reporter_tags_what_it_sends_not_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_API_URL, raising=False)
    reporter = MetricsReporter(tmp_path, publish_to_ray=False, trial="ab12c_00003")
    reporter.log(5, {"val_loss": 4.5})  # no control plane here: the record waits to be sent
    [line] = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert json.loads(line)["name"] == "val_loss"
    assert [r["name"] for r in reporter._pending] == ["trials/ab12c_00003/val_loss"]
