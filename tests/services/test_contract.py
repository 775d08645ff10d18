"""The REST API's published contract, checked directly: one error body (``detail`` and a stable
``code``) on every error, each operation's statuses documented, RFC 3339 timestamps, the
``Allow`` header of a 405, and the job log's content types (schemathesis checks the rest:
test_schemathesis.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.errors import CODES
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.settings import Settings

Client = tuple[TestClient, dict[str, str]]


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[Client]:
    settings = Settings(
        home=tmp_path,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        max_request_bytes=1000,
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / ADMIN_KEY_FILE).read_text().strip()}"}
        yield client, admin


def _error(r: Any, status: int) -> Any:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"detail", "code"} and body["code"] == CODES[status]
    return body["detail"]


def test_every_error_has_one_body_with_a_stable_code(api: Client) -> None:
    client, admin = api
    assert "API key" in _error(client.get("/api/v1/jobs"), 401)
    assert "not found" in _error(client.get("/api/v1/jobs/nope", headers=admin), 404)
    [issue] = _error(client.get("/api/v1/jobs", params={"limit": 0}, headers=admin), 422)
    assert issue["loc"] == ["query", "limit"] and issue["msg"]
    assert "over 1000 bytes" in _error(
        client.post("/api/v1/ratings", content=b"x" * 2000, headers=admin), 413
    )
    assert _error(client.get("/no/such/path"), 404)
    limit = "/api/v1/teams/red/limit"
    assert (
        "not true or false"
        in _error(client.put(limit, json={"max_running": False}, headers=admin), 422)[0]["msg"]
    )
    assert client.put(limit, json={"max_running": 3.0}, headers=admin).json()["max_running"] == 3
    r = client.patch("/api/v1/teams/red/limit", headers=admin)
    _error(r, 405)
    assert r.headers["allow"] == "PUT, DELETE"  # every route of the path, not only the first


def test_every_operation_documents_its_errors_with_the_error_body(api: Client) -> None:
    client, _ = api
    document = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            label = f"{method.upper()} {path}"
            if operation.get("security"):
                assert {"401", "403", "429"} <= set(responses), label
            if "{" in path:
                assert "404" in responses, label
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= set(responses), label
            for status, response in responses.items():
                if status[0] == "4":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, label
    logs = document["paths"]["/api/v1/jobs/{job_id}/logs"]["get"]["responses"]["200"]["content"]
    assert set(logs) == {"application/json", "application/x-ndjson"}
    lines = logs["application/x-ndjson"]["schema"]["oneOf"]
    assert lines == [{"$ref": f"#/components/schemas/{m}"} for m in ("LogLine", "LogEnd")]


def test_create_operations_link_to_what_they_made(api: Client) -> None:
    """Links from each create operation to the operations on the id it answers (what
    schemathesis's stateful phase and generated clients follow), each to a real operation
    whose one path parameter is that id."""
    client, _ = api
    document = client.get("/openapi.json").json()
    operations = {
        o["operationId"]: (m, p) for p, ops in document["paths"].items() for m, o in ops.items()
    }
    created = document["paths"]["/api/v1/jobs"]["post"]["responses"]["201"]["links"]
    assert {operations[link["operationId"]] for link in created.values()} >= {
        ("get", "/api/v1/jobs/{job_id}"),
        ("post", "/api/v1/jobs/{job_id}/cancel"),
        ("post", "/api/v1/jobs/{job_id}/retry"),
    }
    linked = set()
    for path, ops in document["paths"].items():
        for method, operation in ops.items():
            for link in operation["responses"].get("201", {}).get("links", {}).values():
                [(param, expression)] = link["parameters"].items()
                target = operations[link["operationId"]]
                assert expression == "$response.body#/id" and f"{{{param}}}" in target[1]
                linked.add((method, path))
    assert linked == {
        ("post", f"/api/v1/{p}")
        for p in ("jobs", "pipelines", "datasets", "models", "prompts", "ratings", "keys")
    } | {("post", "/api/v1/ratings/campaigns")}


def test_timestamps_are_rfc3339_utc_both_ways(api: Client, tmp_path: Path) -> None:
    client, admin = api
    corpus = tmp_path / "artifacts" / "teams" / "default" / "corpus"  # the admin's team's area
    corpus.mkdir(parents=True)
    body = {"name": "web", "kind": "raw", "uri": str(corpus)}
    created = client.post("/api/v1/datasets", json=body, headers=admin).json()["created_at"]
    assert created.endswith("Z")
    assert abs((datetime.fromisoformat(created) - datetime.now(UTC)).total_seconds()) < 60
    expiry = {"name": "k", "expires_at": "2099-01-01T02:00:00+02:00"}
    r = client.post(
        "/api/v1/keys", json={**expiry, "expires_at": "2099-01-01T00:00:00"}, headers=admin
    )
    assert "offset" in _error(r, 422)[0]["msg"]  # a local time means nothing to a server
    r = client.post(
        "/api/v1/keys", json={**expiry, "expires_at": "2030-01-01T00:00:00+02:00"}, headers=admin
    )
    assert r.status_code == 201 and r.json()["expires_at"] == "2029-12-31T22:00:00Z"


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("0", "relative path"),
        ("data/x", "relative path"),
        ("/a/../b", "'..'"),
        ("http://host/x", "s3://"),
        ("s3://ab/x", "bucket"),
        ("/a/b\u2024c", "look"),
    ],
)
def test_registry_uris_follow_the_spec_uri_rules(api: Client, uri: str, says: str) -> None:
    client, admin = api
    body = {"name": "d", "kind": "raw", "uri": uri}
    [issue] = _error(client.post("/api/v1/datasets", json=body, headers=admin), 422)
    assert issue["loc"] == ["body", "uri"] and says in issue["msg"], issue
