"""The whole journey through the REST API on a real local Ray cluster.

curate → tokenize → train (Ray Train, 2 CPU workers, DDP over gloo) → evaluate, on the Common
Crawl sample in ../shared/data; then the outputs are checked against each other.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from llm.tokenizer.shards import read_manifest
from services.demo import pipeline_body
from services.server import BackgroundServer
from services.store import crud
from services.store.models import JobState

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TRAIN_STEPS = 40


def _wait(client: httpx.Client, path: str, done: set[str], timeout_s: float = 600) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(path).raise_for_status().json()
        if body["state"] in done:
            return body
        time.sleep(1)
    raise AssertionError(f"{path} did not reach {done} in {timeout_s}s: {body}")


@pytest.fixture(scope="module")
def pipeline(
    control_plane: BackgroundServer, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("pipeline")
    corpus = shared_data / "web" / "cc_dolma_sample"
    body = pipeline_body(str(corpus), work, steps=TRAIN_STEPS, workers=2)
    body["stages"][1]["spec"]["vocab_size"] = 1024
    body["stages"][2]["spec"].update(
        log_every=5,
        eval_every=20,
        checkpoint_every=20,
        model={"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
    )
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        r = client.post("/api/v1/pipelines", json=body)
        assert r.status_code == 201, r.text
        final = _wait(client, f"/api/v1/pipelines/{r.json()['id']}", {"SUCCEEDED", "FAILED"})
    return final, work


def _jobs(pipeline: tuple[dict[str, Any], Path]) -> dict[str, dict[str, Any]]:
    return {j["stage"]: j for j in pipeline[0]["jobs"]}


def test_pipeline_succeeds_and_every_job_shows_in_ray(
    pipeline: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    final, _ = pipeline
    assert final["state"] == "SUCCEEDED", [(j["stage"], j["message"]) for j in final["jobs"]]
    ray = control_plane.app.state.ray
    submitted = {j.submission_id for j in ray.client.list_jobs()}
    assert {j["ray_submission_id"] for j in final["jobs"]} <= submitted


def test_curate_counts_add_up(pipeline: tuple[dict[str, Any], Path]) -> None:
    _, work = pipeline
    stats = json.loads((work / "curated" / "stats.json").read_text())
    removed = sum(v["documents"] for v in stats["removed"].values())
    assert stats["documents"] == 697 == stats["kept"]["documents"] + removed
    kept = pq.read_table(work / "curated" / "data")
    rejected = pq.read_table(work / "curated" / "rejected")
    assert kept.num_rows == stats["kept"]["documents"]
    assert rejected.num_rows == removed
    assert set(kept.column("id").to_pylist()).isdisjoint(rejected.column("id").to_pylist())
    assert all(rejected.column("reason").to_pylist())
    assert "gopher_quality:short_doc" in stats["removed"]
    assert [s["step"] for s in stats["steps"]] == [
        "length",
        "language",
        "gopher_quality",
        "pii",
        "exact_dedup",
    ]
    assert any(reason.startswith("language:") for reason in stats["removed"])
    assert stats["redacted"]["documents"] > 0 and stats["redacted"]["by_type"]


def test_token_shards_are_consistent(pipeline: tuple[dict[str, Any], Path]) -> None:
    _, work = pipeline
    manifest = read_manifest(work / "tokens", verify=True)
    stats = json.loads((work / "tokens" / "stats.json").read_text())
    kept = pq.read_table(work / "curated" / "data").num_rows
    docs = sum(s["documents"] for s in manifest["splits"].values())
    assert docs == kept
    assert manifest["vocab_size"] == 1024 and manifest["dtype"] == "uint16"
    assert stats["splits"]["val"]["tokens"] == manifest["splits"]["val"]["tokens"] > 0


def test_training_loss_fell_and_metrics_arrived(
    pipeline: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    jobs = _jobs(pipeline)
    train = jobs["train"]
    result = train["result"]
    assert result["steps"] == TRAIN_STEPS
    assert result["final_loss"] < result["first_loss"] - 0.3
    r = httpx.get(
        f"{control_plane.url}/api/v1/jobs/{train['id']}/metrics",
        params={"name": "loss"},
        timeout=30,
    ).json()
    assert [m["step"] for m in r["records"]] == list(range(5, TRAIN_STEPS + 1, 5))
    tps = httpx.get(
        f"{control_plane.url}/api/v1/jobs/{train['id']}/metrics",
        params={"name": "tokens_per_s"},
        timeout=30,
    ).json()["records"]
    assert tps and all(m["value"] > 0 for m in tps)
    checkpoints = sorted(p.name for p in (pipeline[1] / "train" / "checkpoints").iterdir())
    assert checkpoints == ["best.json", "step_00000020", "step_00000040"]


def test_evaluation_reports_perplexity_and_a_sample(
    pipeline: tuple[dict[str, Any], Path],
) -> None:
    ev = _jobs(pipeline)["evaluate"]["result"]
    assert ev["val_ppl"] > 1 and abs(ev["val_loss"] - math.log(ev["val_ppl"])) < 1e-6
    assert isinstance(ev["completion"], str) and ev["checkpoint"].endswith("step_00000040")


def test_missing_input_fails_the_job_naming_the_path(
    control_plane: BackgroundServer, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-corpus"
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        job = client.post(
            "/api/v1/jobs",
            json={
                "kind": "curate",
                "spec": {"input": str(missing), "output": str(tmp_path / "out")},
            },
        ).json()
        final = _wait(client, f"/api/v1/jobs/{job['id']}", {"SUCCEEDED", "FAILED"}, 300)
    assert final["state"] == "FAILED"
    assert str(missing) in final["message"]


def test_a_job_ray_forgot_is_failed_not_left_running(control_plane: BackgroundServer) -> None:
    """The reconciler's view after a Ray restart: the store says RUNNING, Ray has no record."""
    with control_plane.app.state.sessions() as session:
        job = crud.create_job(
            session, kind="curate", spec={"input": "x", "output": "y"}, state=JobState.running
        )
        job.ray_submission_id = "llmforge-never-submitted"
        session.commit()
        job_id = job.id
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        final = _wait(client, f"/api/v1/jobs/{job_id}", {"FAILED"}, 60)
    assert final["message"].startswith("lost:")
