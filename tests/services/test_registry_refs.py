"""``registry:<id>`` in a spec's read fields resolves on submit to the entry's URI, scoped to
the caller's team: an evaluate job's model and judges (from a spec and from ``llmforge eval``),
a finetune's base; another team's entry or an unknown one is a 422 naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.cli import main
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings


@dataclass
class Api:
    client: TestClient
    red: dict[str, str]
    blue: dict[str, str]
    shared: Path


def _settings(tmp: Path, **kw: Any) -> Settings:
    shared = tmp / "shared"
    for name in ("base", "judge", "theirs"):
        (shared / name).mkdir(parents=True, exist_ok=True)
    return Settings(
        home=tmp / "home", ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=3600,
        rate_limit_per_min=0, shared_roots=str(shared), **kw,
    )  # fmt: skip


def _key(client: Any, admin: dict[str, str], team: str) -> dict[str, str]:
    r = client.post("/api/v1/keys", json={"name": team, "team": team}, headers=admin)
    return {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[Api]:
    settings = _settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(settings.home / ADMIN_KEY_FILE).read_text().strip()}"}
        yield Api(
            client, _key(client, admin, "red"), _key(client, admin, "blue"), tmp_path / "shared"
        )


def _model(api: Api, who: dict[str, str], name: str, folder: str) -> str:
    body = {"name": name, "kind": "checkpoint", "uri": str(api.shared / folder)}
    r = api.client.post("/api/v1/models", json=body, headers=who)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _submit(api: Api, kind: str, spec: dict[str, Any], who: dict[str, str]) -> Any:
    return api.client.post("/api/v1/jobs", json={"kind": kind, "spec": spec}, headers=who)


def test_an_evaluate_spec_names_its_model_and_judges_by_registry_id(api: Api) -> None:
    base = _model(api, api.red, "base", "base")
    _model(api, api.red, "quality-judge", "judge")
    spec = {"checkpoint": f"registry:{base}", "tasks": ["arc_easy"],
            "judges": [{"model": "registry:quality-judge", "name": "quality"}]}  # fmt: skip
    r = _submit(api, "evaluate", spec, api.red)
    assert r.status_code == 201, r.text
    stored = r.json()["spec"]
    assert stored["checkpoint"] == str(api.shared / "base")
    assert stored["judges"][0]["model"] == str(api.shared / "judge")
    r = _submit(api, "finetune", {"checkpoint": f"registry:{base}", "data": "x.jsonl"}, api.red)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["checkpoint"] == str(api.shared / "base")


def test_a_train_spec_names_its_data_by_registry_name(api: Api) -> None:
    body = {"name": "shards", "kind": "token_shards", "uri": str(api.shared / "base")}
    assert api.client.post("/api/v1/datasets", json=body, headers=api.red).status_code == 201
    r = _submit(api, "train", {"data": "registry:shards"}, api.red)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["data"] == str(api.shared / "base")


def test_another_teams_entry_or_an_unknown_one_is_422_naming_the_field(api: Api) -> None:
    theirs = _model(api, api.blue, "theirs", "theirs")
    spec = {"checkpoint": str(api.shared / "base"), "tasks": ["arc_easy"],
            "judges": [{"model": f"registry:{theirs}"}]}  # fmt: skip
    r = _submit(api, "evaluate", spec, api.red)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "spec", "judges", 0, "model"]
    assert f"no registered model or dataset '{theirs}' that team 'red' may read" in error["msg"]
    assert _submit(api, "evaluate", spec, api.blue).status_code == 201
    r = _submit(api, "evaluate", {**spec, "judges": [], "checkpoint": "registry:nope"}, api.red)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "spec", "checkpoint"]


def test_llmforge_eval_names_a_judge_by_registry_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(tmp_path, api_port=free_port(), auth=False)
    server = BackgroundServer(settings)
    server.start()
    try:
        monkeypatch.setenv("LLMFORGE_API_URL", server.url)
        monkeypatch.setenv("LLMFORGE_HOME", str(settings.home))
        body = {"name": "judge", "kind": "checkpoint", "uri": str(tmp_path / "shared" / "judge")}
        judge = httpx.post(f"{server.url}/api/v1/models", json=body).json()["id"]
        base = str(tmp_path / "shared" / "base")
        argv = ["eval", base, "--tasks", "arc_easy", "--judge", f"registry:{judge}"]
        out = settings.home / "artifacts" / "teams" / "default" / "out"
        assert main([*argv, "--output", str(out)]) == 0
        job = json.loads(capsys.readouterr().out)
        assert job["spec"]["judges"][0]["model"] == body["uri"]
    finally:
        server.stop()
