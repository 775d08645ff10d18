"""A train job that loses a worker mid-run, through the REST API on the shared local Ray head.

Rank 0 raises once at step FAIL_AT (the spec's debug section, there for fault-tolerance tests);
Ray Train restarts the worker group, which resumes from the checkpoint at step RESUME_FROM and
finishes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from contracts.specs import TrainSpec
from ray_jobs.fault_injection import FAIL_MARKER
from services.ray_head import LOG_MONITOR_ENV
from services.server import BackgroundServer
from tests.llm.conftest import SHAKESPEARE, build_shard_folder, shakespeare_docs

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STEPS, LOG_EVERY, CHECKPOINT_EVERY = 30, 5, 10
FAIL_AT, RESUME_FROM = 25, 20
TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64}


def wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
    """The job once it succeeded, or ended with no automatic retry left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").raise_for_status().json()
        ended = body["state"] in {"FAILED", "STOPPED", "CANCELLED"}
        if body["state"] == "SUCCEEDED" or (ended and body["attempts"] >= body["max_retries"]):
            return body
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not end in {timeout_s}s: {body}")


def tiny_shards(directory: Path) -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} absent")
    return build_shard_folder(directory, shakespeare_docs(100_000))


def job_body(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    # A retry covers a submission the fresh Ray head refuses ("No available agent to submit
    # job") while its job agent is still starting; the tests check which attempt did the work.
    return {"kind": kind, "spec": spec, "max_retries": 2}


@pytest.fixture(scope="module")
def failed_once(
    control_plane: BackgroundServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("train-job")
    spec = {
        "data": str(tiny_shards(work / "shards")),
        "output": str(work / "out"),
        "steps": STEPS,
        "workers": 2,
        "batch_size": 4,
        "warmup_steps": 5,
        "log_every": LOG_EVERY,
        "eval_every": CHECKPOINT_EVERY,
        "eval_batches": 2,
        "checkpoint_every": CHECKPOINT_EVERY,
        "max_failures": 1,
        "tensorboard": False,
        "model": TINY_MODEL,
        "debug": {"fail_at_step": FAIL_AT},
    }
    job = run_with_env(control_plane, spec, {})
    return job, work / "out"


def run_with_env(
    control_plane: BackgroundServer,
    spec: dict[str, Any],
    extra_env: dict[str, str],
    kind: str = "train",
) -> dict[str, Any]:
    """Submit a job (train by default) whose Ray job gets extra_env (as an operator's cluster
    environment would give it, never through the spec); wait for it; return it with its logs."""
    ray = control_plane.app.state.ray
    submit = ray.submit

    def submit_with_env(*, env: dict[str, str], **kwargs: Any) -> str:
        return submit(env=env | extra_env, **kwargs)  # type: ignore[no-any-return]

    with (
        pytest.MonkeyPatch.context() as patch,
        httpx.Client(base_url=control_plane.url, timeout=30) as client,
    ):
        patch.setattr(ray, "submit", submit_with_env)
        r = client.post("/api/v1/jobs", json=job_body(kind, spec))
        assert r.status_code == 201, r.text
        job = wait_for_job(client, r.json()["id"])
        job["logs"] = client.get(f"/api/v1/jobs/{job['id']}/logs").json()["logs"]
    return job


def _loss_records(url: str, job_id: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/jobs/{job_id}/metrics", params={"name": "loss"}, timeout=30)
    records: list[dict[str, Any]] = body.raise_for_status().json()["records"]
    return records


def test_the_job_survives_the_failure_inside_ray_train(
    failed_once: tuple[dict[str, Any], Path],
) -> None:
    job, out = failed_once
    assert job["state"] == "SUCCEEDED", job["message"]
    # Ray Train recovered it within one Ray job, not a retry by the scheduler: the Ray job that
    # succeeded is the one that saw the failure.
    assert f"injected failure at step {FAIL_AT}" in job["logs"]
    assert json.loads((out / FAIL_MARKER).read_text()) == {
        "step": FAIL_AT,
        "wiped_checkpoints": False,
    }
    assert job["result"]["steps"] == STEPS
    assert job["result"]["checkpoint"].endswith(f"step_{STEPS:08d}")
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    # keep_last=3 by default: all three stay, with best.json naming the best by val loss
    assert checkpoints == [
        "best.json",
        *(f"step_{s:08d}" for s in range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY)),
    ]
    assert job["result"]["best_checkpoint"]["path"] in checkpoints


def test_training_resumed_from_the_checkpoint_before_the_failure(
    failed_once: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    job, _ = failed_once
    records = _loss_records(control_plane.url, job["id"])
    steps = Counter(r["step"] for r in records)
    assert sorted(steps) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    # Only the steps after the last checkpoint, up to the failure, ran (and were reported) twice:
    # the restarted group went on from step RESUME_FROM, not from the start.
    replayed = {s for s, n in steps.items() if n > 1}
    assert replayed == set(range(RESUME_FROM + LOG_EVERY, FAIL_AT + 1, LOG_EVERY))
    assert max(steps.values()) == 2
    # The loader position and RNG come back with the checkpoint, so a replayed step's loss is
    # the one the first attempt saw, and training goes on downhill.
    by_step: dict[int, list[float]] = {}
    for r in sorted(records, key=lambda r: r["time"]):
        by_step.setdefault(r["step"], []).append(r["value"])
    for step in replayed:
        first, again = by_step[step]
        assert again == pytest.approx(first, rel=1e-4), step
    assert by_step[STEPS][-1] < by_step[LOG_EVERY][0]


def test_metrics_reached_the_api_and_the_local_file(
    failed_once: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    job, out = failed_once
    api = _loss_records(control_plane.url, job["id"])
    local = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["value"]) for r in api) == sorted(
        (r["step"], r["value"]) for r in local if r["name"] == "loss"
    )
    assert {"val_loss", "tokens_per_s", "grad_norm"} <= {r["name"] for r in local}


def test_the_fault_hook_lives_in_the_debug_section_only(tmp_path: Path) -> None:
    base = {"data": str(tmp_path), "output": str(tmp_path)}
    with pytest.raises(ValidationError, match="fail_at_step"):
        TrainSpec.model_validate({**base, "fail_at_step": FAIL_AT})
    with pytest.raises(ValidationError, match="fail_at_step"):
        TrainSpec.model_validate({**base, "debug": {"fail_at_step": 0}})
    spec = TrainSpec.model_validate({**base, "debug": {"fail_at_step": FAIL_AT}})
    assert spec.debug is not None and spec.debug.fail_at_step == FAIL_AT
    assert TrainSpec.model_validate(base).debug is None


def head_actors(control_plane: BackgroundServer, class_name: str) -> list[dict[str, Any]]:
    """Every actor of that class the shared head has seen, alive or dead (Ray's state API)."""
    ray = control_plane.app.state.ray
    r = httpx.get(
        f"{ray.dashboard_url}/api/v0/actors",
        params={
            "filter_keys": "class_name",
            "filter_predicates": "=",
            "filter_values": class_name,
            "detail": "true",
        },
        headers=ray.token.header if ray.token else None,
        timeout=30,
    )
    actors: list[dict[str, Any]] = r.raise_for_status().json()["data"]["result"]["result"]
    return actors


def test_a_train_run_starts_only_the_helpers_it_needs(
    failed_once: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    """Ray Train's own helpers of the runs on the shared head: the controller and the
    placement-group cleaner; not the Ray Data shard manager (the workers read token shards
    themselves) nor, on the embedded head (one machine, which no cloud preempts), the
    preemption watcher."""
    assert head_actors(control_plane, "TrainController")
    assert head_actors(control_plane, "PlacementGroupCleaner")
    assert not head_actors(control_plane, "DatasetManager")
    assert not head_actors(control_plane, "PreemptionWatcher")


def test_the_log_monitor_looks_for_new_log_files_once_a_second(
    control_plane: BackgroundServer,
) -> None:
    """The shared head's log monitor (it streams workers' output to their drivers) got the
    settings that make it glob its logs folder once a second instead of on every 0.1 s pass;
    that the output still arrives is what the S3 checkpoint test's log lines show."""
    import psutil

    head = control_plane.app.state.ray_head
    monitors = [
        p
        for p in psutil.Process(head.process.pid).children(recursive=True)
        if any(part.endswith("log_monitor.py") for part in p.cmdline())
    ]
    assert monitors, "the head runs no log monitor"
    for monitor in monitors:
        env = monitor.environ()
        for name, value in LOG_MONITOR_ENV.items():
            assert env.get(name) == value, (name, env.get(name))
