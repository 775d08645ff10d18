"""The CLI against the real control plane, and resuming a pipeline from its failed stage."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.cli import main
from services.server import BackgroundServer

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _corpus(shared_data: Path, path: Path, docs: int = 80) -> None:
    text = (shared_data / "text" / "tinyshakespeare" / "input.txt").read_text()
    paras = [p for p in text.split("\n\n") if len(p.split()) > 60][:docs]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for i, p in enumerate(paras):
            f.write(json.dumps({"id": f"d{i}", "text": p}) + "\n")


def _pipeline(control_plane: BackgroundServer, pipeline_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        p = httpx.get(f"{control_plane.url}/api/v1/pipelines/{pipeline_id}", timeout=30).json()
        if p["state"] in ("SUCCEEDED", "FAILED"):
            return dict(p)
        time.sleep(1)
    raise AssertionError(f"pipeline {pipeline_id} did not end")


def test_failed_pipeline_resumes_from_its_failed_stage(
    control_plane: BackgroundServer, shared_data: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus" / "part.jsonl.gz"
    body = {
        "name": "resume",
        "stages": [
            {
                "name": "curate",
                "kind": "curate",
                "spec": {
                    "input": str(corpus.parent),
                    "output": str(tmp_path / "curated"),
                    "steps": [{"kind": "length"}],
                },
            },
            {
                "name": "tokenize",
                "kind": "tokenize",
                "after": ["curate"],
                "spec": {
                    "input": "${curate.output}",
                    "output": str(tmp_path / "tokens"),
                    "vocab_size": 300,
                },
            },
        ],
    }
    created = httpx.post(f"{control_plane.url}/api/v1/pipelines", json=body, timeout=30).json()
    failed = _pipeline(control_plane, created["id"])
    states = {j["stage"]: j["state"] for j in failed["jobs"]}
    assert failed["state"] == "FAILED" and states == {"curate": "FAILED", "tokenize": "CANCELLED"}
    _corpus(shared_data, corpus)  # the missing input now exists
    r = httpx.post(f"{control_plane.url}/api/v1/pipelines/{created['id']}/resume", timeout=30)
    assert r.status_code == 200, r.text
    done = _pipeline(control_plane, created["id"])
    assert done["state"] == "SUCCEEDED", [(j["stage"], j["message"]) for j in done["jobs"]]
    curate = next(j for j in done["jobs"] if j["stage"] == "curate")
    assert curate["attempts"] == 1 and curate["ray_submission_id"].endswith("-1")
    again = httpx.post(f"{control_plane.url}/api/v1/pipelines/{created['id']}/resume", timeout=30)
    assert again.status_code == 409


def test_cli_submits_waits_and_reads_logs(
    control_plane: BackgroundServer,
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LLMFORGE_API_URL", control_plane.url)
    corpus = tmp_path / "in.jsonl.gz"
    _corpus(shared_data, corpus, docs=20)
    spec = tmp_path / "curate.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "input": str(corpus),
                "output": str(tmp_path / "out"),
                "steps": [{"kind": "length"}, {"kind": "exact_dedup"}],
            }
        )
    )
    assert main(["submit", "curate", str(spec), "--wait"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "SUCCEEDED" and job["result"]["stats"]["documents"] == 20
    assert main(["status", job["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job["id"]
    assert main(["logs", "--follow", job["id"]]) == 0
    followed = capsys.readouterr()
    assert '"documents": 20' in followed.out and f"job {job['id']}: SUCCEEDED" in followed.err
    assert main(["cancel", job["id"]]) == 1  # it already ended: 409
    assert "already ended" in capsys.readouterr().out


def test_following_a_running_jobs_log_streams_ndjson_lines_then_its_state(
    control_plane: BackgroundServer, shared_data: Path, tmp_path: Path
) -> None:
    """``?follow=true`` on a job Ray is running: application/x-ndjson, each object one line of
    the log in order (offsets 0, 1, …), the same lines the JSON answer has once it ended, and
    a last object with the job's state."""
    corpus = tmp_path / "in.jsonl.gz"
    _corpus(shared_data, corpus, docs=20)
    spec = {"input": str(corpus), "output": str(tmp_path / "out"), "steps": [{"kind": "length"}]}
    api = httpx.Client(base_url=control_plane.url, timeout=30)
    job = api.post("/api/v1/jobs", json={"kind": "curate", "spec": spec}).json()
    deadline = time.monotonic() + 120
    while not api.get(f"/api/v1/jobs/{job['id']}").json()["ray_submission_id"]:
        assert time.monotonic() < deadline, "the job never reached Ray"
        time.sleep(0.2)
    params = {"follow": True}
    with api.stream("GET", f"/api/v1/jobs/{job['id']}/logs", params=params, timeout=300) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        items = [json.loads(line) for line in r.iter_lines() if line]
    *lines, end = items
    assert end == {"status": "SUCCEEDED", "error": None}
    assert [item["offset"] for item in lines] == list(range(len(lines))) and lines
    logged = api.get(f"/api/v1/jobs/{job['id']}/logs").json()["logs"]
    assert [item["line"] for item in lines] == [
        line.removesuffix("\r") for line in logged.removesuffix("\n").split("\n")
    ]
