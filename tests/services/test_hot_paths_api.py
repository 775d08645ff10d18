"""The API's hot paths (list, get, metrics query, metrics ingest) on SQLite and on PostgreSQL.

They read in autocommit sessions, answer the metrics query without a model per point, and ingest
with one COPY on PostgreSQL (``services.store.crud.add_metrics``): the answers must be the same
on both stores, byte for byte where a client could tell."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.ray_head import free_port
from services.scheduler import issue_token
from services.settings import Settings
from services.store import crud
from services.store.models import JobState


@pytest.fixture()
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path,
        database_url=database_url,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        auth=False,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _running_job(client: TestClient) -> tuple[str, str]:
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        job = crud.create_job(s, kind="train", spec={"data": "d", "output": "o"})
        crud.set_state(s, job=job, state=JobState.running)
        token = issue_token(job)
        s.commit()
        return job.id, token


def _ingest(client: TestClient, job_id: str, token: str, records: list[dict[str, Any]]) -> Any:
    return client.post(
        f"/api/v1/jobs/{job_id}/metrics",
        json={"records": records},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_ingested_points_come_back_in_step_order_filtered_by_name_and_steps(
    client: TestClient,
) -> None:
    job_id, token = _running_job(client)
    records = [
        {"step": s, "name": n, "value": s / 4, "time": 1e9 + s}
        for s in reversed(range(300))
        for n in ("loss", "lr")
    ]
    r = _ingest(client, job_id, token, records)
    assert r.status_code == 202 and r.json() == {"accepted": 600, "skipped": 0}
    url = f"/api/v1/jobs/{job_id}/metrics"
    r = client.get(url, params={"name": "loss", "min_step": 100, "max_step": 199})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["job_id"] == job_id
    assert [p["step"] for p in body["records"]] == list(range(100, 200))
    assert body["records"][0] == {"step": 100, "name": "loss", "value": 25.0, "time": 1e9 + 100}
    assert len(client.get(url).json()["records"]) == 600
    # Same points twice (a job resending a batch) are both kept, in the order they came.
    _ingest(client, job_id, token, [{"step": 7, "name": "üñí", "value": 1.5, "time": 0.0}])
    _ingest(client, job_id, token, [{"step": 7, "name": "üñí", "value": 2.5, "time": 0.0}])
    again = client.get(url, params={"name": "üñí"})
    assert [p["value"] for p in again.json()["records"]] == [1.5, 2.5]
    assert "üñí" in again.content.decode("utf-8")


def test_ingest_refuses_a_wrong_token_and_an_unknown_job_and_stores_nothing(
    client: TestClient,
) -> None:
    job_id, token = _running_job(client)
    point = [{"step": 1, "name": "loss", "value": 1.0, "time": 0.0}]
    assert _ingest(client, job_id, "wrong", point).status_code == 401
    assert _ingest(client, "ffffffffffff", token, point).status_code == 404
    bad = _ingest(client, job_id, token, [{"step": -1, "name": "loss", "value": 1, "time": 0}])
    assert bad.status_code == 422
    assert client.get(f"/api/v1/jobs/{job_id}/metrics").json()["records"] == []
    assert client.get("/api/v1/jobs/ffffffffffff/metrics").status_code == 404


def test_non_finite_points_are_counted_and_kept_aside(client: TestClient) -> None:
    job_id, token = _running_job(client)
    body = json.dumps(
        {
            "records": [
                {"step": 1, "name": "loss", "value": 2.5, "time": 1.0},
                {"step": 2, "name": "loss", "value": float("nan"), "time": 2.0},
            ]
        }
    )
    r = client.post(
        f"/api/v1/jobs/{job_id}/metrics",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert r.json() == {
        "accepted": 1,
        "skipped": 1,
        "skipped_reason": "value or time is NaN or infinite",
    }


def test_list_pages_newest_first_by_state_and_get_answers_one(client: TestClient) -> None:
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        made = [
            crud.create_job(
                s,
                kind="curate",
                spec={"input": "i", "output": f"o{i}"},
                state=JobState.queued if i % 2 else JobState.pending,
            ).id
            for i in range(7)
        ]
        s.commit()
    queued = [j for i, j in enumerate(made) if i % 2]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"state": "QUEUED", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["data"]]
        assert all(j["queue_position"] is not None for j in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(queued) and len(seen) == len(set(seen))
    one = client.get(f"/api/v1/jobs/{queued[0]}").json()
    assert one["id"] == queued[0] and one["state"] == "QUEUED" and one["queue_position"] >= 1
    assert client.get("/api/v1/jobs/ffffffffffff").status_code == 404
    bad = client.get("/api/v1/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422


def test_several_api_workers_need_postgresql_and_a_ray_cluster(tmp_path: Path) -> None:
    pg = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ray = "http://127.0.0.1:8265"
    with pytest.raises(ValueError, match="LLMFORGE_API_WORKERS > 1 needs PostgreSQL"):
        Settings(home=tmp_path, api_workers=2, ray_address=ray)  # SQLite
    with pytest.raises(ValueError, match="RAY_ADDRESS"):
        Settings(home=tmp_path, api_workers=2, database_url=pg)  # a local head each
    assert Settings(home=tmp_path, api_workers=2, database_url=pg, ray_address=ray).api_workers == 2
