"""A Ray Tune job with ASHA through the REST API: three tiny trials, each a Ray Train run, ranked
by val_loss; their curves reach the control plane and the best trial's model is registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.jobs import JOB_TYPES, JobKind
from llm.train.checkpoint import MODEL_FILE, step_dir
from ray_jobs.reporting import split_trial_metric
from services.server import BackgroundServer
from tests.integration.test_train_job import TINY_MODEL, tiny_shards, wait_for_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TRIALS, MAX_STEPS, GRACE_PERIOD, EVAL_EVERY = 3, 20, 5, 5
WORKERS = 2  # each trial's DDP workers: one trial at a time fills the test cluster's 2 CPUs
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
        "eval_every": EVAL_EVERY,
        "eval_batches": 2,
        "workers": WORKERS,
        "precision": "bf16",
        # half a CPU a worker: a trial fits on the shared 2-CPU test cluster even beside
        # another job's worker
        "cpus_per_worker": 0.5,
        # more trials than the CPUs hold: the waiting ones' trainables and Train controllers
        # start (they reserve no CPU) and take the CPUs as they free up
        "max_concurrent_trials": TRIALS,
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
        tune_id = ended["tune"]["id"]
        metrics = client.get(f"/api/v1/jobs/{tune_id}/metrics").raise_for_status().json()
        models = client.get("/api/v1/models", params={"job_id": tune_id}).raise_for_status()
        ended["tune"] |= {"metrics": metrics["records"], "models": models.json()["data"]}
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
        assert job["state"] == "SUCCEEDED", job["message"]
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
    two), so the test checks what holds either way."""
    result = tuned[0]["result"]
    trials = result["trials"]
    # rungs at GRACE_PERIOD x reduction_factor**k below MAX_STEPS: 5 and 10 steps
    rungs = {GRACE_PERIOD, 2 * GRACE_PERIOD}
    for trial in trials:
        assert trial["stopped_early"] == (trial["steps"] < MAX_STEPS)
        assert trial["steps"] in rungs | {MAX_STEPS}
    assert result["stopped_early"] == sum(t["stopped_early"] for t in trials)
    # the first trial to reach a rung has nothing to trail, so at least one runs to the end
    assert result["stopped_early"] < TRIALS


def test_each_trial_is_a_ray_train_run(tuned: tuple[dict[str, Any], Path]) -> None:
    """Rank 0 of each trial's Train run reports its world size; the trial's folder holds what
    a train job's output holds."""
    job, out = tuned
    for trial in job["result"]["trials"]:
        assert trial["workers"] == WORKERS and trial["node"]
        folder = out / "trials" / trial["trial_id"]
        assert (folder / "metrics.jsonl").is_file() and (folder / "ray").is_dir()


def test_every_trials_curve_reaches_the_control_plane(tuned: tuple[dict[str, Any], Path]) -> None:
    job = tuned[0]
    curves: dict[tuple[str | None, str], list[int]] = {}
    for record in job["metrics"]:
        trial, name = split_trial_metric(record["name"])
        curves.setdefault((trial, name), []).append(record["step"])
    for trial in job["result"]["trials"]:
        # the evaluations Tune saw, then any a stopped trial made before its workers ended
        steps = sorted(curves[(trial["trial_id"], "val_loss")])
        assert steps == list(range(EVAL_EVERY, steps[-1] + 1, EVAL_EVERY)), trial
        assert trial["steps"] <= steps[-1] <= MAX_STEPS
        assert set(steps) <= set(curves[(trial["trial_id"], "loss")])
    # every record is a trial's: the tune job itself trains nothing
    assert {trial for trial, _ in curves} == {t["trial_id"] for t in job["result"]["trials"]}


def test_the_best_finished_trials_model_is_registered(tuned: tuple[dict[str, Any], Path]) -> None:
    job, out = tuned
    result = job["result"]
    trials = {t["trial_id"]: t for t in result["trials"]}
    kept = result["best_checkpoint_trial"]
    # the first finished trial in the ranking (usually the best: ASHA stopped the others early)
    finished = [t["trial_id"] for t in result["trials"] if t["steps"] == MAX_STEPS]
    assert kept == finished[0] and result["best_trial"] == result["trials"][0]["trial_id"]
    folder = out / "trials" / kept
    assert result["best_checkpoint"] == str(step_dir(folder / "checkpoints", MAX_STEPS))
    assert Path(result["best_checkpoint"], MODEL_FILE).is_file()

    [model] = job["models"]
    assert (model["kind"], model["uri"]) == ("checkpoint", str(folder))
    stats = model["stats"]
    assert stats["checkpoint"] == result["best_checkpoint"]
    assert stats["config"] == trials[kept]["config"] and stats["steps"] == MAX_STEPS
    assert stats["val_loss"] == trials[kept]["final_val_loss"]
