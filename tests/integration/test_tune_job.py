"""A Ray Tune job with ASHA through the REST API: four tiny trials, ranked by val_loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.jobs import JOB_TYPES, JobKind
from services.server import BackgroundServer
from tests.integration.test_train_job import TINY_MODEL, tiny_shards, wait_for_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TRIALS, MAX_STEPS, GRACE_PERIOD = 4, 30, 10
SPACE = {
    "lr": [1e-4, 3e-2],
    "batch_size": [4, 8],
    "weight_decay": [0.0, 0.1],
    "dropout": [0.0, 0.1],
    "warmup_steps": [0, 5],
    "beta2": [0.95, 0.99],
    "optimizer": ["adamw", "adafactor", "sgd"],
}


@pytest.fixture(scope="module")
def pipeline(
    control_plane: BackgroundServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, dict[str, Any]], Path]:
    """A tune stage, then a train stage that takes the best trial's learning rate and
    optimizer from the tune stage's result."""
    work = tmp_path_factory.mktemp("tune-job")
    shards = str(tiny_shards(work / "shards"))
    tune = {
        "data": shards,
        "output": str(work / "out"),
        "model": TINY_MODEL,
        "space": SPACE,
        "num_samples": TRIALS,
        "max_steps": MAX_STEPS,
        "grace_period": GRACE_PERIOD,
        "eval_every": 5,
        "eval_batches": 2,
    }
    train = {
        "data": shards,
        "output": str(work / "train"),
        "model": TINY_MODEL,
        "lr": "${tune.result.best_config.lr}",
        "optimizer": "${tune.result.best_config.optimizer}",
        "steps": 5,
        "warmup_steps": 0,
        "workers": 1,
        "eval_every": 5,
        "eval_batches": 1,
        "checkpoint_every": 5,
    }
    body = {
        "name": "tune-then-train",
        "stages": [
            {"name": "tune", "kind": "tune", "spec": tune},
            {"name": "train", "kind": "train", "after": ["tune"], "spec": train},
        ],
    }
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        r = client.post("/api/v1/pipelines", json=body)
        assert r.status_code == 201, r.text
        jobs = {j["stage"]: j["id"] for j in r.json()["jobs"]}
        ended = {stage: wait_for_job(client, job_id) for stage, job_id in jobs.items()}
    return ended, work / "out"


@pytest.fixture(scope="module")
def tuned(pipeline: tuple[dict[str, dict[str, Any]], Path]) -> tuple[dict[str, Any], Path]:
    return pipeline[0]["tune"], pipeline[1]


def test_the_training_stage_trains_with_the_best_trials_config(
    pipeline: tuple[dict[str, dict[str, Any]], Path],
) -> None:
    tune, train = pipeline[0]["tune"], pipeline[0]["train"]
    assert train["state"] == "SUCCEEDED", train["message"]
    best = tune["result"]["best_config"]
    assert train["spec"]["lr"] == best["lr"] and isinstance(train["spec"]["lr"], float)
    assert train["spec"]["optimizer"] == best["optimizer"]
    assert train["result"]["steps"] == 5


def test_the_results_are_what_contracts_declare(
    pipeline: tuple[dict[str, dict[str, Any]], Path],
) -> None:
    """What ${stage.result.…} placeholders are checked against is what the jobs report."""
    for job in pipeline[0].values():
        JOB_TYPES[JobKind(job["kind"])].result.model_validate(job["result"])


def test_every_trial_ran_and_they_are_ranked(tuned: tuple[dict[str, Any], Path]) -> None:
    job, out = tuned
    assert job["state"] == "SUCCEEDED", job["message"]
    result = job["result"]
    assert result == json.loads((out / "tune_results.json").read_text())
    trials = result["trials"]
    assert len(trials) == TRIALS and result["failed"] == 0
    losses = [t["best_val_loss"] for t in trials]
    assert losses == sorted(losses) and len(set(losses)) == TRIALS
    assert result["best_config"] == trials[0]["config"]
    assert result["best_val_loss"] == losses[0]
    assert (result["metric"], result["mode"]) == ("val_loss", "min")


def test_configs_come_from_the_search_space(tuned: tuple[dict[str, Any], Path]) -> None:
    for trial in tuned[0]["result"]["trials"]:
        config = trial["config"]
        assert set(config) == set(SPACE)
        for name in ("lr", "weight_decay", "dropout"):
            low, high = SPACE[name]
            assert low <= config[name] <= high
        for name in ("batch_size", "warmup_steps", "beta2", "optimizer"):
            assert config[name] in SPACE[name]


def test_asha_stops_only_after_the_grace_period(tuned: tuple[dict[str, Any], Path]) -> None:
    """How many trials ASHA stops depends on the order they reach each rung (here none to
    three), so the test checks what holds either way."""
    result = tuned[0]["result"]
    trials = result["trials"]
    # rungs at GRACE_PERIOD x reduction_factor**k below MAX_STEPS: 10 and 20 steps
    rungs = {GRACE_PERIOD, 2 * GRACE_PERIOD}
    for trial in trials:
        assert trial["stopped_early"] == (trial["steps"] < MAX_STEPS)
        assert trial["steps"] in rungs | {MAX_STEPS}
    assert result["stopped_early"] == sum(t["stopped_early"] for t in trials)
    # the first trial to reach a rung has nothing to trail, so at least one runs to the end
    assert result["stopped_early"] < TRIALS
