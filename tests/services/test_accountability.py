"""Accountability: the audit log, request ids, key expiry and rotation, per-key rate limits.

A real control plane (TestClient, keys on) on SQLite and on PostgreSQL (the ``database_url``
fixture of conftest.py); Ray is an address where nothing listens, so jobs stay in the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE, create_key
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings
from services.store.models import DEFAULT_TEAM, ApiKey, Role, utcnow

Client = tuple[TestClient, dict[str, str]]
CURATE = {"kind": "curate", "spec": {"input": "x", "output": "y"}}


def _settings(home: Path, **kw: Any) -> Settings:
    return Settings(
        home=home, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=3600, **kw
    )


@pytest.fixture()
def app_db(tmp_path: Path, database_url: str) -> Iterator[Client]:
    with TestClient(create_app(_settings(tmp_path, database_url=database_url))) as client:
        key = (tmp_path / ADMIN_KEY_FILE).read_text().strip()
        yield client, {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def app_sqlite(tmp_path: Path) -> Iterator[Client]:
    with TestClient(create_app(_settings(tmp_path, rate_limit_per_min=2))) as client:
        key = (tmp_path / ADMIN_KEY_FILE).read_text().strip()
        yield client, {"Authorization": f"Bearer {key}"}


def _key(client: TestClient, admin: dict[str, str], **body: Any) -> tuple[str, dict[str, str]]:
    body = {"name": "k", "role": "member", **body}
    r = client.post("/api/v1/keys", json=body, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()["id"], {"X-API-Key": r.json()["key"]}


def _set_key(client: TestClient, key_id: str, **values: Any) -> None:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        key = session.get(ApiKey, key_id)
        assert key is not None
        for name, value in values.items():
            setattr(key, name, value)
        session.commit()


def test_the_audit_log_records_who_did_what(app_db: Client) -> None:
    client, admin = app_db
    admin_id = client.get("/api/v1/keys", headers=admin).json()[0]["id"]
    alice_id, alice = _key(client, admin, name="alice", team="red")
    reader_id, reader = _key(client, admin, name="rita", role="read_only", team="red")
    # a paused queue keeps the job QUEUED (Ray is not there): cancel and retry both apply
    assert client.put("/api/v1/teams/red/limit", json={"max_running": 0}, headers=admin).is_success
    job = client.post("/api/v1/jobs", json=CURATE, headers={**alice, "X-Request-ID": "req-1"})
    assert job.status_code == 201 and job.headers["x-request-id"] == "req-1"
    job_id = job.json()["id"]
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=alice).status_code == 200
    assert client.post(f"/api/v1/jobs/{job_id}/retry", headers=alice).status_code == 200
    pipeline = {"name": "p", "stages": [{"name": "c", "kind": "curate", "spec": CURATE["spec"]}]}
    assert client.post("/api/v1/pipelines", json=pipeline, headers=alice).status_code == 201
    assert client.put("/api/v1/teams/red/limit", json={"max_running": 2}, headers=admin).is_success
    assert client.delete("/api/v1/teams/red/limit", headers=admin).is_success
    corpus = Path(client.app.state.scheduler.settings.team_area("red")) / "d"  # type: ignore[attr-defined]
    corpus.mkdir(parents=True)
    dataset = client.post(
        "/api/v1/datasets", json={"name": "d", "kind": "raw", "uri": str(corpus)}, headers=alice
    ).json()
    assert client.delete(f"/api/v1/datasets/{dataset['id']}", headers=admin).is_success
    assert client.delete(f"/api/v1/keys/{reader_id}", headers=admin).is_success
    # reads are not audited
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).is_success
    assert client.post("/api/v1/keys", json={"name": "x"}, headers=alice).status_code == 403

    # only admins read it
    assert client.get("/api/v1/audit", headers=alice).status_code == 403
    assert client.get("/api/v1/audit", headers=reader).status_code == 401  # revoked
    reader2_id, reader2 = _key(client, admin, name="r2", role="read_only", team="red")
    assert client.get("/api/v1/audit", headers=reader2).status_code == 403
    assert client.get("/api/v1/audit").status_code == 401

    r = client.get("/api/v1/audit", params={"limit": 1000}, headers=admin)
    assert r.status_code == 200, r.text
    logged = list(reversed(r.json()["data"]))
    # the requests refused before any route ran are recorded too (and change nothing)
    refused = [
        (e["action"], e["key_id"], e["status_code"]) for e in logged if ".refused" in e["action"]
    ]
    assert refused == [
        ("access.refused", alice_id, 403),  # POST /keys
        ("access.refused", alice_id, 403),  # GET /audit
        ("auth.refused", None, 401),  # the revoked key is no valid key
        ("access.refused", reader2_id, 403),
        ("auth.refused", None, 401),  # no key
    ]
    events = [e for e in logged if ".refused" not in e["action"]]
    assert [(e["action"], e["key_id"]) for e in events] == [
        ("key.create", admin_id),
        ("key.create", admin_id),
        ("team.limit.set", admin_id),
        ("job.submit", alice_id),
        ("job.cancel", alice_id),
        ("job.retry", alice_id),
        ("pipeline.create", alice_id),
        ("team.limit.set", admin_id),
        ("team.limit.clear", admin_id),
        ("dataset.delete", admin_id),
        ("key.revoke", admin_id),
        ("key.create", admin_id),
    ]
    submit = events[3]
    assert submit["team"] == "red" and submit["role"] == "member"
    assert submit["request_id"] == "req-1" and submit["status_code"] == 201
    assert submit["resource_type"] == "job" and submit["resource_id"] == job_id
    assert submit["details"]["kind"] == "curate"
    assert datetime.fromisoformat(submit["time"]).utcoffset() == timedelta(0)
    assert events[2]["details"] == {"max_running": 0, "previous": None}
    assert events[7]["details"] == {"max_running": 2, "previous": 0}
    assert all(len(e["request_id"]) >= 1 for e in events)
    assert "lf_" not in r.text  # no raw key anywhere in the log

    def actions(**params: Any) -> list[str]:
        got = client.get("/api/v1/audit", params=params, headers=admin)
        assert got.status_code == 200, got.text
        return [e["action"] for e in got.json()["data"]]

    assert actions(action="job.cancel") == ["job.cancel"]
    assert actions(key_id=alice_id) == [
        *["access.refused"] * 2,
        *["pipeline.create", "job.retry", "job.cancel", "job.submit"],
    ]
    assert actions(team="red", resource_type="job") == ["job.retry", "job.cancel", "job.submit"]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert actions(since=later) == []
    assert len(actions(until=later)) == 17
    first = client.get("/api/v1/audit", params={"limit": 4}, headers=admin).json()
    second = client.get(
        "/api/v1/audit", params={"limit": 4, "cursor": first["next_cursor"]}, headers=admin
    ).json()
    ids = [e["id"] for e in first["data"] + second["data"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 8
    assert client.get("/api/v1/audit", params={"cursor": "x"}, headers=admin).status_code == 422


def test_refused_attempts_are_recorded(app_db: Client) -> None:
    client, admin = app_db
    alice_id, alice = _key(client, admin, name="alice", team="red")
    bob_id, bob = _key(client, admin, name="bob", team="red")
    carol_id, carol = _key(client, admin, name="carol", team="blue")
    assert client.put("/api/v1/teams/red/limit", json={"max_running": 0}, headers=admin).is_success
    job_id = client.post("/api/v1/jobs", json=CURATE, headers=alice).json()["id"]
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bob).status_code == 403
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=carol).status_code == 404
    assert client.post(f"/api/v1/keys/{alice_id}/rotate", headers=bob).status_code == 403
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()["state"] == "QUEUED"
    r = client.get("/api/v1/audit", params={"resource_id": job_id}, headers=admin)
    got = [(e["action"], e["key_id"], e["status_code"]) for e in reversed(r.json()["data"])]
    assert got == [
        ("job.submit", alice_id, 201),
        ("job.cancel", bob_id, 403),
        ("job.cancel", carol_id, 404),
    ]
    assert "belongs to another user" in r.json()["data"][1]["details"]["refused"]
    r = client.get("/api/v1/audit", params={"action": "key.rotate"}, headers=admin)
    assert [(e["key_id"], e["resource_id"], e["status_code"]) for e in r.json()["data"]] == [
        (bob_id, alice_id, 403)
    ]


def test_request_ids_are_honoured_when_safe(app_sqlite: Client) -> None:
    client, _ = app_sqlite
    assert (
        client.get("/api/v1/health/live", headers={"X-Request-ID": "abc.1:2-3"}).headers[
            "x-request-id"
        ]
        == "abc.1:2-3"
    )
    for bad in ("a b", "x" * 65, "<script>", "../x"):
        got = client.get("/api/v1/health/live", headers={"X-Request-ID": bad})
        assert got.headers["x-request-id"] != bad and len(got.headers["x-request-id"]) == 32
    assert len(client.get("/api/v1/jobs").headers["x-request-id"]) == 32  # a 401 too


def test_an_expired_key_is_refused_saying_so(app_db: Client) -> None:
    client, admin = app_db
    key_id, member = _key(client, admin, expires_in_days=1)
    listed = {k["id"]: k for k in client.get("/api/v1/keys", headers=admin).json()}
    expires = datetime.fromisoformat(listed[key_id]["expires_at"])
    assert timedelta(hours=23) < expires - utcnow() <= timedelta(days=1)
    assert client.get("/api/v1/jobs", headers=member).status_code == 200
    _set_key(client, key_id, expires_at=utcnow() - timedelta(seconds=1))
    r = client.get("/api/v1/jobs", headers=member)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    # expires_at at creation: in the future, and not with expires_in_days
    soon = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    _, _ = _key(client, admin, expires_at=soon)
    past = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    body = {"name": "x", "expires_at": past}
    assert client.post("/api/v1/keys", json=body, headers=admin).status_code == 422
    body = {"name": "x", "expires_at": soon, "expires_in_days": 3}
    assert client.post("/api/v1/keys", json=body, headers=admin).status_code == 422


def test_rotation_replaces_the_key(app_db: Client) -> None:
    client, admin = app_db
    alice_id, alice = _key(client, admin, name="alice", team="red", expires_in_days=30)
    bob_id, bob = _key(client, admin, name="bob", team="red")
    assert client.post(f"/api/v1/keys/{bob_id}/rotate", headers=alice).status_code == 403
    r = client.post(f"/api/v1/keys/{alice_id}/rotate", headers=alice)
    assert r.status_code == 201, r.text
    new = r.json()
    assert (new["name"], new["role"], new["team"]) == ("alice", "member", "red")
    assert new["id"] != alice_id and new["previous"]["id"] == alice_id
    assert new["expires_at"] is not None  # the same lifetime from now
    assert client.get("/api/v1/jobs", headers=alice).status_code == 401
    fresh = {"X-API-Key": new["key"]}
    assert client.get("/api/v1/jobs", headers=fresh).status_code == 200
    assert client.post(f"/api/v1/keys/{alice_id}/rotate", headers=admin).status_code == 409

    # with a grace period the old key works until it ends; an admin rotates anyone's key
    r = client.post(f"/api/v1/keys/{bob_id}/rotate", json={"grace_seconds": 600}, headers=admin)
    assert r.status_code == 201
    assert client.get("/api/v1/jobs", headers=bob).status_code == 200
    assert client.get("/api/v1/jobs", headers={"X-API-Key": r.json()["key"]}).status_code == 200
    _set_key(client, bob_id, revoked_at=utcnow() - timedelta(seconds=1))
    assert client.get("/api/v1/jobs", headers=bob).status_code == 401
    audit = client.get("/api/v1/audit", params={"action": "key.rotate"}, headers=admin).json()
    assert [
        (e["resource_id"], e["status_code"], e["details"].get("new_key_id")) for e in audit["data"]
    ] == [
        (bob_id, 201, r.json()["id"]),
        (alice_id, 409, None),  # rotated already
        (alice_id, 201, new["id"]),
        (bob_id, 403, None),  # alice may not rotate bob's key
    ]


def test_rate_limit_per_key(app_sqlite: Client) -> None:
    """LLMFORGE_RATE_LIMIT_PER_MIN=2 here: a burst of 2, then 429 with Retry-After."""
    client, admin = app_sqlite
    _, limited = _key(client, admin)
    _, free = _key(client, admin, rate_limit_per_min=0)  # the admin's 2 requests are spent
    r = client.get("/api/v1/jobs", headers=admin)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 30 and "rate limit" in r.json()["detail"]
    assert client.get("/api/v1/jobs", headers=limited).status_code == 200
    assert client.get("/api/v1/jobs", headers=limited).status_code == 200
    assert client.get("/api/v1/jobs", headers=limited).status_code == 429
    assert all(client.get("/api/v1/jobs", headers=free).status_code == 200 for _ in range(10))
    assert all(client.get("/api/v1/health/live").status_code == 200 for _ in range(10))
    assert client.get("/metrics").status_code == 200


def test_cli_keys_and_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    data = tmp_path / "data"  # the jobs' storage root: beside the home, never holding it
    settings = _settings(tmp_path / "home", api_port=free_port(), shared_write_roots=str(data))
    server = BackgroundServer(settings)
    server.start()
    try:
        monkeypatch.setenv("LLMFORGE_API_URL", server.url)
        monkeypatch.setenv("LLMFORGE_HOME", str(settings.home))
        assert (
            main(["keys", "create", "--name", "a", "--team", "red", "--expires-in-days", "7"]) == 0
        )
        created = json.loads(capsys.readouterr().out)
        assert created["expires_at"] and created["team"] == "red"
        assert main(["keys", "rotate", created["id"], "--grace-seconds", "60"]) == 0
        rotated = json.loads(capsys.readouterr().out)
        assert rotated["previous"]["id"] == created["id"] and rotated["key"] != created["key"]
        assert main(["audit", "--action", "key.rotate"]) == 0
        events = json.loads(capsys.readouterr().out)["data"]
        assert [e["resource_id"] for e in events] == [created["id"]]
        assert main(["audit", "--team", "nobody"]) == 0
        assert json.loads(capsys.readouterr().out)["count"] == 0

        # downloads: a job's output file, resumed, and a dataset's file
        out = data / "out"
        out.mkdir(parents=True)
        (out / "stats.json").write_text('{"kept": 3}' * 1000)
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"input": str(data), "output": str(out)}))
        assert main(["submit", "curate", str(spec)]) == 0
        job_id = json.loads(capsys.readouterr().out)["id"]
        target = tmp_path / "got.json"
        target.write_text('{"kept": 3}')
        assert main(["download", job_id, "stats.json", "-o", str(target), "--resume"]) == 0
        assert target.read_text() == '{"kept": 3}' * 1000
        assert main(["download", job_id, "../home/admin.key", "-o", str(tmp_path / "k")]) == 1
        assert not (tmp_path / "k").exists()
        dataset = {"name": "d", "kind": "raw", "uri": str(out)}
        r = httpx.post(
            f"{server.url}/api/v1/datasets",
            json=dataset,
            headers={"X-API-Key": (settings.home / ADMIN_KEY_FILE).read_text().strip()},
        )
        assert r.status_code == 201, r.text
        copy = tmp_path / "copy.json"
        assert main(["datasets", "download", r.json()["id"], "stats.json", "-o", str(copy)]) == 0
        assert copy.read_text() == '{"kept": 3}' * 1000
    finally:
        server.stop()


def test_requests_refused_before_any_route_are_recorded(app_sqlite: Client) -> None:
    """No key, an expired key, a role too low and a rate limit: each refusal is an audit row
    (who, when, which request, why), and a flood of them is a few rows, not a flood."""
    client, _ = app_sqlite
    admin = _unlimited_admin(client)  # the fixture's own admin key may make 2 requests a minute
    _, reader = _key(client, admin, role="read_only", rate_limit_per_min=0)
    _, member = _key(client, admin, rate_limit_per_min=0)
    expired_id, expired = _key(client, admin, rate_limit_per_min=0)
    limited_id, limited = _key(client, admin, rate_limit_per_min=1)
    _set_key(client, expired_id, expires_at=utcnow() - timedelta(seconds=1))
    assert client.get("/api/v1/jobs").status_code == 401
    assert client.get("/api/v1/jobs", headers=expired).status_code == 401
    assert client.post("/api/v1/jobs", json=CURATE, headers=reader).status_code == 403
    assert client.get("/api/v1/keys", headers=member).status_code == 403
    assert client.get("/api/v1/jobs", headers=limited).status_code == 200
    assert client.get("/api/v1/jobs", headers=limited).status_code == 429
    flood = [client.get("/api/v1/jobs", headers={"X-API-Key": f"lf_guess{i}"}) for i in range(40)]
    assert {r.status_code for r in flood} == {401}

    def audit(action: str) -> list[dict[str, Any]]:
        r = client.get("/api/v1/audit", params={"action": action, "limit": 100}, headers=admin)
        assert r.status_code == 200, r.text
        return list(reversed(r.json()["data"]))  # oldest first

    rows = audit("auth.refused")
    got = [(e["key_id"], e["status_code"], e["details"]["reason"]) for e in rows]
    assert got[:2] == [(None, 401, "no valid API key"), (expired_id, 401, "the key expired")]
    assert len([r for r in got if r[0] is None]) == 10  # the first 10 a minute per client
    assert all(e["resource_id"] == "GET /api/v1/jobs" and e["request_id"] for e in rows)
    assert rows[0]["details"]["client"] == "testclient"
    assert [(e["resource_id"], e["status_code"], e["role"]) for e in audit("access.refused")] == [
        ("POST /api/v1/jobs", 403, "read_only"),
        ("GET /api/v1/keys", 403, "member"),
    ]
    assert [(e["key_id"], e["status_code"]) for e in audit("rate_limit.refused")] == [
        (limited_id, 429)
    ]


def _unlimited_admin(client: TestClient) -> dict[str, str]:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        _, raw = create_key(
            session, name="auditor", role=Role.admin, team=DEFAULT_TEAM, rate_limit_per_min=0
        )
        session.commit()
    return {"X-API-Key": raw}


def test_the_audit_throttle_keeps_a_burst_then_says_how_many_it_left_out() -> None:
    from services.api.ratelimit import AuditThrottle

    throttle = AuditThrottle(burst=3, window_s=0.2)
    assert [throttle.admit("a", "x") for _ in range(5)] == [0, 0, 0, None, None]
    assert throttle.admit("a", "y") == 0 and throttle.admit("b", "x") == 0  # per caller, action
    time.sleep(0.25)
    assert throttle.admit("a", "x") == 2  # a new window: the first row says 2 were left out
    assert throttle.admit("a", "x") == 0


def test_rotating_the_bootstrap_key_rewrites_admin_key(app_db: Client, tmp_path: Path) -> None:
    """The local CLI reads LLMFORGE_HOME/admin.key: rotating that key puts the new one there
    (mode 0600), so the CLI goes on working and the old key stops."""
    client, admin = app_db
    key_file = tmp_path / ADMIN_KEY_FILE
    old = key_file.read_text().strip()
    me = client.get("/api/v1/keys", headers=admin).json()
    boot = next(k for k in me if k["name"] == "bootstrap admin")
    r = client.post(f"/api/v1/keys/{boot['id']}/rotate", headers=admin)
    assert r.status_code == 201, r.text
    assert key_file.read_text().strip() == r.json()["key"] != old
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(f".{ADMIN_KEY_FILE}*"))  # no staged file left behind
    assert client.get("/api/v1/jobs", headers=admin).status_code == 401
    fresh = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    audit = client.get("/api/v1/audit", params={"action": "key.rotate"}, headers=fresh).json()
    assert audit["data"][0]["details"]["bootstrap_file_rewritten"] is True
    # another key's rotation leaves the file alone
    other_id, _ = _key(client, fresh, name="other")
    assert client.post(f"/api/v1/keys/{other_id}/rotate", headers=fresh).status_code == 201
    assert key_file.read_text().strip() == fresh["Authorization"].removeprefix("Bearer ")
