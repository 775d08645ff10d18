"""REST behaviour that needs no Ray job to run: validation, 404s, auth on metric ingestion.

The app is pointed at a Ray address where nothing listens, so a submission fails visibly.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from anyio import to_thread
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.ray_head import free_port
from services.scheduler import issue_token
from services.settings import Settings
from services.store import crud
from services.store.models import Job, JobState


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _locs(response: object) -> list[list[object]]:
    return [e["loc"] for e in response.json()["detail"]]  # type: ignore[attr-defined]


def test_unknown_job_kind_is_422_naming_kind(client: TestClient) -> None:
    r = client.post("/api/v1/jobs", json={"kind": "bake", "spec": {}})
    assert r.status_code == 422
    assert ["body", "kind"] in _locs(r)


def test_unknown_spec_field_is_422_naming_the_field(client: TestClient) -> None:
    r = client.post(
        "/api/v1/jobs",
        json={"kind": "curate", "spec": {"input": "x", "output": "y", "imput": "typo"}},
    )
    assert r.status_code == 422
    assert ["body", "spec", "imput"] in _locs(r)
    assert "curate spec" in r.json()["detail"][0]["msg"]


def test_wrong_type_inside_nested_spec_is_422_with_path(client: TestClient) -> None:
    r = client.post(
        "/api/v1/jobs",
        json={
            "kind": "train",
            "spec": {"data": "d", "output": "o", "model": {"n_embd": 100, "n_head": 3}},
        },
    )
    assert r.status_code == 422
    assert any(
        loc[:4] == ["body", "spec", "model"] or loc[:3] == ["body", "spec", "model"]
        for loc in _locs(r)
    )
    assert "divisible" in r.text


def test_missing_required_spec_field_is_422(client: TestClient) -> None:
    r = client.post("/api/v1/jobs", json={"kind": "tokenize", "spec": {"output": "y"}})
    assert r.status_code == 422
    assert ["body", "spec", "input"] in _locs(r)


def test_unknown_curate_step_is_422(client: TestClient) -> None:
    r = client.post(
        "/api/v1/jobs",
        json={
            "kind": "curate",
            "spec": {"input": "x", "output": "y", "steps": [{"kind": "magic"}]},
        },
    )
    assert r.status_code == 422
    assert _locs(r)[0][:4] == ["body", "spec", "steps", 0]


def test_pipeline_with_unknown_parent_is_422(client: TestClient) -> None:
    body = {
        "name": "p",
        "stages": [
            {"name": "a", "kind": "curate", "spec": {"input": "x", "output": "y"}},
            {
                "name": "b",
                "kind": "tokenize",
                "after": ["nope"],
                "spec": {"input": "${a.output}", "output": "z"},
            },
        ],
    }
    r = client.post("/api/v1/pipelines", json=body)
    assert r.status_code == 422
    assert ["body", "stages", 1, "after"] in _locs(r)


def test_pipeline_placeholder_must_name_a_parent(client: TestClient) -> None:
    body = {
        "name": "p",
        "stages": [
            {"name": "a", "kind": "curate", "spec": {"input": "x", "output": "y"}},
            {"name": "b", "kind": "tokenize", "spec": {"input": "${a.output}", "output": "z"}},
        ],
    }
    r = client.post("/api/v1/pipelines", json=body)
    assert r.status_code == 422
    assert ["body", "stages", 1, "spec"] in _locs(r)


def test_a_placeholder_that_resolves_to_a_bad_path_fails_the_stage(client: TestClient) -> None:
    """A parent's plain text (a prompt) is not checked as a path; used as one, it is."""
    parent = {"checkpoint": "m", "output": "o", "tasks": ["arc_easy"], "prompt": "../../etc"}
    body = {
        "name": "p",
        "stages": [
            {"name": "a", "kind": "evaluate", "spec": parent},
            {
                "name": "b",
                "kind": "curate",
                "after": ["a"],
                "spec": {**CURATE["spec"], "output": "${a.prompt}"},
            },
        ],
    }
    created = client.post("/api/v1/pipelines", json=body)
    assert created.status_code == 201, created.text
    jobs = {j["stage"]: j for j in created.json()["jobs"]}
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        crud.set_state(session, job=session.get(Job, jobs["a"]["id"]), state=JobState.succeeded)
        session.commit()
    client.app.state.scheduler.tick()  # type: ignore[attr-defined]
    child = client.get(f"/api/v1/jobs/{jobs['b']['id']}").json()
    assert child["state"] == "FAILED" and child["ray_submission_id"] is None
    assert "spec.output" in child["message"] and "'..' is not allowed" in child["message"]


def test_unknown_job_and_pipeline_are_404(client: TestClient) -> None:
    assert client.get("/api/v1/jobs/ffffffffffff").status_code == 404
    assert client.get("/api/v1/jobs/ffffffffffff/metrics").status_code == 404
    assert client.get("/api/v1/pipelines/ffffffffffff").status_code == 404


def test_submission_to_unreachable_ray_fails_visibly(client: TestClient) -> None:
    r = client.post("/api/v1/jobs", json={"kind": "curate", "spec": {"input": "x", "output": "y"}})
    assert r.status_code == 201
    job = r.json()
    assert job["state"] == "FAILED"
    assert job["message"].startswith("submit failed")
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "FAILED"


def test_metrics_ingest_needs_the_jobs_token(client: TestClient) -> None:
    job = client.post(
        "/api/v1/jobs", json={"kind": "curate", "spec": {"input": "x", "output": "y"}}
    ).json()
    record = {"step": 1, "name": "loss", "value": 1.0, "time": 0.0}
    url = f"/api/v1/jobs/{job['id']}/metrics"
    assert client.post(url, json={"records": [record]}).status_code == 401
    r = client.post(url, json={"records": [record]}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_cancel_of_ended_job_is_409(client: TestClient) -> None:
    job = client.post(
        "/api/v1/jobs", json={"kind": "curate", "spec": {"input": "x", "output": "y"}}
    ).json()
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 409


def test_health(client: TestClient) -> None:
    """Ray is down here (nothing listens at its address): reported, but readiness is the store's,
    so the API stays in its Service and reads go on."""
    assert client.get("/api/v1/health/live").json() == {"status": "ok"}
    ready = client.get("/api/v1/health/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["store"] == "ok" and checks["ray"].startswith("unreachable at http://127.0.0.1:")
    assert checks["scheduler"] == "leader"  # the only process on its store
    assert client.get("/api/v1/jobs").status_code == 200


def test_prometheus_metrics_count_jobs_by_state(client: TestClient) -> None:
    client.post("/api/v1/jobs", json={"kind": "curate", "spec": {"input": "x", "output": "y"}})
    body = client.get("/metrics").text
    assert 'llmforge_jobs{kind="curate",state="FAILED"} 1.0' in body
    assert "llmforge_http_request_seconds_bucket" in body


CURATE = {"kind": "curate", "spec": {"input": "x", "output": "y"}}


def test_idempotency_key_returns_the_first_job(client: TestClient) -> None:
    headers = {"Idempotency-Key": "abc-1"}
    first = client.post("/api/v1/jobs", json=CURATE, headers=headers)
    again = client.post("/api/v1/jobs", json=CURATE, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = {"kind": "curate", "spec": {"input": "x", "output": "z"}}
    assert client.post("/api/v1/jobs", json=other, headers=headers).status_code == 409
    assert client.get("/api/v1/jobs").json()["count"] == 1


def test_cursor_pagination_walks_every_job_once(client: TestClient) -> None:
    ids = {client.post("/api/v1/jobs", json=CURATE).json()["id"] for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    bad = client.get("/api/v1/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and ["query", "cursor"] in _locs(bad)


def test_retry_resubmits_an_ended_job_and_refuses_a_running_one(client: TestClient) -> None:
    job = client.post("/api/v1/jobs", json=CURATE).json()
    retried = client.post(f"/api/v1/jobs/{job['id']}/retry").json()
    assert retried["attempts"] == 1 and retried["state"] == "FAILED"
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        row = session.get(Job, job["id"])
        row.state = "RUNNING"
        session.commit()
    assert client.post(f"/api/v1/jobs/{job['id']}/retry").status_code == 409


def test_failed_job_is_retried_automatically_after_backoff(client: TestClient) -> None:
    job = client.post("/api/v1/jobs", json={**CURATE, "max_retries": 1}).json()
    assert job["attempts"] == 0 and job["state"] == "FAILED"
    time.sleep(2.1)
    client.app.state.scheduler.tick()  # type: ignore[attr-defined]
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["attempts"] == 1
    time.sleep(4.1)
    client.app.state.scheduler.tick()  # type: ignore[attr-defined]
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["attempts"] == 1  # no more retries


@pytest.mark.parametrize(
    ("path", "rule"), [("/data/../etc/passwd", "'..'"), ("http://example.com/x", "file://")]
)
def test_spec_paths_reject_escapes_and_unknown_schemes(
    client: TestClient, path: str, rule: str
) -> None:
    r = client.post("/api/v1/jobs", json={"kind": "curate", "spec": {"input": path, "output": "y"}})
    assert r.status_code == 422
    assert ["body", "spec", "input"] in _locs(r) and rule in r.text


def test_oversized_request_is_413_before_the_route(client: TestClient) -> None:
    limit = client.app.state.settings.max_request_bytes  # type: ignore[attr-defined]
    body = {"kind": "curate", "spec": {"input": "x" * (limit + 1), "output": "y"}}
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    assert client.get("/api/v1/jobs").json()["count"] == 0


def test_non_finite_metric_values_are_counted_and_named_not_stored(client: TestClient) -> None:
    """A diverged loss arrives as NaN: the batch is not refused (the job would resend it for
    ever), its finite points are stored, and the answer says what was skipped and why."""
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        job = crud.create_job(s, kind="train", spec={}, state=JobState.running)
        token = issue_token(job)
        s.commit()
        job_id = job.id
    records = [
        {"step": 1, "name": "loss", "value": 2.5, "time": 1.0},
        {"step": 2, "name": "loss", "value": float("nan"), "time": 2.0},
        {"step": 3, "name": "loss", "value": float("inf"), "time": 3.0},
    ]
    body = json.dumps({"records": records})  # Python's json writes NaN and Infinity
    r = client.post(
        f"/api/v1/jobs/{job_id}/metrics",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert r.status_code == 202
    assert r.json() == {
        "accepted": 1,
        "skipped": 2,
        "skipped_reason": "value or time is NaN or infinite",
    }
    stored = client.get(f"/api/v1/jobs/{job_id}/metrics").json()["records"]
    assert [(m["step"], m["value"]) for m in stored] == [(1, 2.5)]


def test_nan_or_infinity_in_a_spec_is_422_naming_the_field(client: TestClient) -> None:
    body = json.dumps({"kind": "train", "spec": {"data": "d", "output": "o", "lr": float("inf")}})
    r = client.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and ["body", "spec", "lr"] in _locs(r)
    stats = json.dumps(
        {"name": "d", "kind": "raw", "uri": "/d", "stats": {"x": [1.0, float("nan")]}}
    )
    r = client.post("/api/v1/datasets", content=stats, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and ["body", "stats", "x", 1] in _locs(r)
    assert client.get("/api/v1/jobs").json()["count"] == 0


# --- placeholders that read a parent's result ------------------------------------------------

TUNE_RESULT = {
    "metric": "val_loss",
    "mode": "min",
    "best_config": {
        "lr": 0.0042,
        "batch_size": 8,
        "weight_decay": 0.05,
        "dropout": 0.1,
        "warmup_steps": 10,
        "beta2": 0.95,
        "optimizer": "adamw",
    },
    "best_val_loss": 3.2,
    "trials": [],
    "stopped_early": 0,
    "failed": 0,
    "nodes": [],
}


def _tune_then_train(train_spec: dict[str, object]) -> dict[str, object]:
    return {
        "name": "tune-then-train",
        "stages": [
            {"name": "tune", "kind": "tune", "spec": {"data": "shards", "output": "t"}},
            {"name": "train", "kind": "train", "after": ["tune"], "spec": train_spec},
        ],
    }


def test_a_stage_takes_its_learning_rate_from_a_tuning_stages_result(client: TestClient) -> None:
    """${tune.result.best_config.lr}: checked against what a tune job reports when the
    pipeline is created, and replaced by the value itself (a number) when the stage is ready."""
    spec = {
        "data": "shards",
        "output": "out",
        "lr": "${tune.result.best_config.lr}",
        "batch_size": "${tune.result.best_config.batch_size}",
        "seed": 3,
        "model": {"dropout": "${tune.result.best_config.dropout}"},
        "warmup_steps": "${tune.result.best_config.warmup_steps}",
        # checked by the training section as a whole, not field by field
        "optimizer": "${tune.result.best_config.optimizer}",
    }
    created = client.post("/api/v1/pipelines", json=_tune_then_train(spec))
    assert created.status_code == 201, created.text
    jobs = {j["stage"]: j for j in created.json()["jobs"]}
    assert jobs["train"]["spec"]["lr"] == "${tune.result.best_config.lr}"  # kept for later
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        tune = session.get(Job, jobs["tune"]["id"])
        crud.set_state(session, job=tune, state=JobState.succeeded)
        tune.result = TUNE_RESULT
        session.commit()
    client.app.state.scheduler.tick()  # type: ignore[attr-defined]
    train = client.get(f"/api/v1/jobs/{jobs['train']['id']}").json()
    assert train["spec"]["lr"] == 0.0042 and train["spec"]["batch_size"] == 8
    assert train["spec"]["model"]["dropout"] == 0.1 and train["spec"]["warmup_steps"] == 10
    assert train["spec"]["seed"] == 3 and train["spec"]["optimizer"] == "adamw"
    assert train["ray_submission_id"] is None  # Ray is not there: it failed on submit only
    assert train["message"].startswith("submit failed")


@pytest.mark.parametrize(
    ("placeholder", "says"),
    [
        ("${tune.result.best_config.learning_rate}", "result.best_config has no field"),
        (
            "${tune.result.best}",
            "result has no field 'best'; it has: best_checkpoint, best_checkpoint_trial, "
            "best_config",
        ),
        ("${tune.learning_rate}", "has no spec field 'learning_rate'"),
    ],
)
def test_a_placeholder_naming_what_the_parent_lacks_is_422(
    client: TestClient, placeholder: str, says: str
) -> None:
    spec = {"data": "shards", "output": "out", "lr": placeholder}
    r = client.post("/api/v1/pipelines", json=_tune_then_train(spec))
    assert r.status_code == 422 and says in r.text, r.text
    assert ["body", "stages", 1, "spec"] in _locs(r)
    assert client.get("/api/v1/jobs").json()["data"] == []  # nothing was created


def test_a_result_value_the_parent_did_not_report_fails_the_stage(client: TestClient) -> None:
    spec = {"data": "shards", "output": "out", "lr": "${tune.result.best_config.lr}"}
    created = client.post("/api/v1/pipelines", json=_tune_then_train(spec))
    jobs = {j["stage"]: j for j in created.json()["jobs"]}
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        tune = session.get(Job, jobs["tune"]["id"])
        crud.set_state(session, job=tune, state=JobState.succeeded)
        tune.result = {**TUNE_RESULT, "best_config": {"batch_size": 8}}
        session.commit()
    client.app.state.scheduler.tick()  # type: ignore[attr-defined]
    train = client.get(f"/api/v1/jobs/{jobs['train']['id']}").json()
    assert train["state"] == "FAILED" and train["ray_submission_id"] is None
    assert "tune.result.best_config has no 'lr'" in train["message"]


def test_placeholders_keep_the_values_type_and_nest() -> None:
    from services.scheduler import PlaceholderError, resolve_placeholders

    parents = {"a": {"output": "/o", "model": {"n_layer": 4}}}
    results = {"a": {"best": {"lr": 0.1, "layers": [2, 3]}, "name": "x"}}
    spec = {
        "lr": "${a.result.best.lr}",
        "n": "${a.result.best.layers.1}",
        "layers": "${a.model.n_layer}",
        "text": "run ${a.result.name} at ${a.result.best.lr} into ${a.output}",
        "all": ["${a.result.best}"],
    }
    assert resolve_placeholders(spec, parents, results) == {
        "lr": 0.1,
        "n": 3,
        "layers": 4,
        "text": "run x at 0.1 into /o",
        "all": [{"lr": 0.1, "layers": [2, 3]}],
    }
    with pytest.raises(PlaceholderError, match=r"a\.result\.best has no 'lr2'"):
        resolve_placeholders({"x": "${a.result.best.lr2}"}, parents, results)
    with pytest.raises(PlaceholderError, match="has no result"):
        resolve_placeholders({"x": "${a.result.best}"}, parents, {"a": None})


def test_a_running_app_keeps_its_start_up_objects_out_of_the_collectors_walks(
    tmp_path: Path,
) -> None:
    """The start-up's objects are frozen while the app runs (a full collection had taken
    ~100 ms, the p99 of every route under load), and unfrozen when it stops; blocking work
    gets the threads the settings give."""
    settings = Settings(
        home=tmp_path,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        auth=False,
        api_threads=3,
    )

    async def threads() -> float:
        return to_thread.current_default_thread_limiter().total_tokens

    with TestClient(create_app(settings)) as c:
        assert gc.get_freeze_count() > 50_000
        assert c.portal is not None and c.portal.call(threads) == 3  # the app's own event loop
        assert c.get("/api/v1/jobs").status_code == 200
    assert gc.get_freeze_count() == 0
