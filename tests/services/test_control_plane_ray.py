"""The queue, job tokens and the registry against a real local Ray cluster (the session's shared
control plane from tests/conftest.py, which runs without API keys: every job is the default
team's)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.ray_client import RayJobs
from services.scheduler import JOB_TOKEN_PREFIX
from services.server import BackgroundServer

pytestmark = [pytest.mark.ray]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}


def _wait(client: httpx.Client, path: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(path).raise_for_status().json()
        if body["state"] in TERMINAL:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{path} did not end in {timeout_s}s: {body}")


@pytest.fixture()
def api(control_plane: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=control_plane.url, timeout=60) as client:
        yield client


def _ray(control_plane: BackgroundServer) -> RayJobs:
    return control_plane.app.state.ray


def _short_job(client: httpx.Client, tmp_path: Path, name: str) -> dict[str, Any]:
    """A real Ray job that ends within seconds (its input does not exist)."""
    spec = {"input": str(tmp_path / "missing"), "output": str(tmp_path / name)}
    r = client.post("/api/v1/jobs", json={"kind": "curate", "spec": spec, "name": name})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_a_teams_third_job_waits_for_a_free_slot_on_ray(
    api: httpx.Client, control_plane: BackgroundServer, tmp_path: Path
) -> None:
    assert api.put("/api/v1/teams/default/limit", json={"max_running": 2}).status_code == 200
    try:
        jobs = [_short_job(api, tmp_path, f"q{i}") for i in range(3)]
        assert [j["state"] for j in jobs[:2]] == ["PENDING", "PENDING"]
        assert jobs[2]["state"] == "QUEUED" and jobs[2]["queue_position"] == 1
        ended = [_wait(api, f"/api/v1/jobs/{j['id']}") for j in jobs]
    finally:
        api.delete("/api/v1/teams/default/limit")
    assert all(j["state"] == "FAILED" and "missing" in j["message"] for j in ended)
    info = [_ray(control_plane).client.get_job_info(j["ray_submission_id"]) for j in ended]
    # Ray started the third job only after one of the first two had ended.
    assert info[2].start_time >= min(info[0].end_time, info[1].end_time)


def test_ray_job_env_holds_only_its_token_which_dies_with_the_job(
    api: httpx.Client, control_plane: BackgroundServer, tmp_path: Path
) -> None:
    job = _short_job(api, tmp_path, "token")
    env = _ray(control_plane).client.get_job_info(job["ray_submission_id"]).runtime_env["env_vars"]
    assert set(env) <= {
        "LLMFORGE_API_URL",
        "LLMFORGE_JOB_ID",
        "LLMFORGE_JOB_TOKEN",
        "LLMFORGE_READ_ROOTS",  # the storage roots the job checks its spec against
        "LLMFORGE_WRITE_ROOTS",
        "LLMFORGE_DATA_ROOT",  # the evaluation data, which every team reads
        "LLMFORGE_S3_ENDPOINT_URL",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
    }
    token = env["LLMFORGE_JOB_TOKEN"]
    assert token.startswith(JOB_TOKEN_PREFIX) and env["LLMFORGE_JOB_ID"] == job["id"]
    assert _wait(api, f"/api/v1/jobs/{job['id']}")["state"] == "FAILED"
    record = {"records": [{"step": 0, "name": "x", "value": 1.0, "time": 0.0}]}
    r = api.post(
        f"/api/v1/jobs/{job['id']}/metrics",
        json=record,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 401
