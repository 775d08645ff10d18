"""The auth matrix: no key, wrong key, revoked key, each role, other teams, job tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.settings import Settings

CURATE = {"kind": "curate", "spec": {"input": "x", "output": "y"}}


@pytest.fixture()
def app_home(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60
    )
    with TestClient(create_app(settings)) as client:
        key_file = tmp_path / ADMIN_KEY_FILE
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        yield client, {"Authorization": f"Bearer {key_file.read_text().strip()}"}


def _key(
    client: TestClient, admin: dict[str, str], role: str, team: str = "default", name: str = "k"
) -> tuple[str, dict[str, str]]:
    r = client.post("/api/v1/keys", json={"name": name, "role": role, "team": team}, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()["id"], {"X-API-Key": r.json()["key"]}


def test_every_route_but_health_needs_a_key(app_home: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = app_home
    assert client.get("/api/v1/health/live").status_code == 200
    for method, path in [
        ("GET", "/api/v1/jobs"),
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/pipelines/x"),
        ("GET", "/api/v1/keys"),
        ("POST", "/api/v1/plan"),
    ]:
        r = client.request(method, path, json={})
        assert r.status_code == 401, (method, path, r.status_code)
    wrong = client.get("/api/v1/jobs", headers={"Authorization": "Bearer lf_nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]


def test_roles(app_home: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = app_home
    _, reader = _key(client, admin, "read_only")
    _, member = _key(client, admin, "member")
    assert client.get("/api/v1/jobs", headers=reader).status_code == 200
    assert client.post("/api/v1/jobs", json=CURATE, headers=reader).status_code == 403
    assert client.post("/api/v1/jobs", json=CURATE, headers=member).status_code == 201
    assert client.post("/api/v1/keys", json={"name": "x"}, headers=member).status_code == 403
    assert client.get("/api/v1/keys", headers=admin).status_code == 200


def test_revoked_key_is_refused(app_home: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = app_home
    key_id, member = _key(client, admin, "member")
    assert client.get("/api/v1/jobs", headers=member).status_code == 200
    assert client.delete(f"/api/v1/keys/{key_id}", headers=admin).json()["revoked_at"]
    assert client.get("/api/v1/jobs", headers=member).status_code == 401


def test_teams_see_their_own_jobs_and_only_admins_cancel_others(
    app_home: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = app_home
    _, alice = _key(client, admin, "member", team="red", name="alice")
    _, bob = _key(client, admin, "member", team="red", name="bob")
    _, carol = _key(client, admin, "member", team="blue", name="carol")
    job = client.post("/api/v1/jobs", json=CURATE, headers=alice).json()
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=bob).status_code == 200
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=carol).status_code == 404
    assert [j["id"] for j in client.get("/api/v1/jobs", headers=carol).json()["data"]] == []
    assert client.get("/api/v1/jobs", headers=admin).json()["count"] == 1
    assert client.post(f"/api/v1/jobs/{job['id']}/retry", headers=bob).status_code == 403
    assert client.post(f"/api/v1/jobs/{job['id']}/retry", headers=alice).status_code == 200


def test_job_token_cannot_write_another_jobs_metrics(
    app_home: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = app_home
    first = client.post("/api/v1/jobs", json=CURATE, headers=admin).json()
    second = client.post("/api/v1/jobs", json=CURATE, headers=admin).json()
    record = {"records": [{"step": 1, "name": "loss", "value": 1.0, "time": 0.0}]}
    # An API key is not a job token, even an admin's.
    r = client.post(f"/api/v1/jobs/{second['id']}/metrics", json=record, headers=admin)
    assert r.status_code == 401
    assert first["id"] != second["id"]
