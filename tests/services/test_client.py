"""The CLI's typed client (services/cli/api.py) is written on the OpenAPI document: its models
are the document's schemas, and it round-trips jobs, pipelines, datasets, models and ratings
against a live control plane, with errors as the document's ErrorBody."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from services.api.app import create_app
from services.api.errors import ErrorBody
from services.cli import api as typed
from services.cli import main
from services.cli.api import Api, ApiError
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings


def _document() -> dict[str, Any]:
    return create_app(Settings(ray_address="http://127.0.0.1:1")).openapi()


def test_the_clients_models_are_the_documents_schemas() -> None:
    components = _document()["components"]["schemas"]
    models = [
        v
        for v in vars(typed).values()
        if isinstance(v, type) and issubclass(v, BaseModel) and v is not BaseModel
    ]
    assert len(models) >= 10
    for model in models:
        mode = "validation" if model is ErrorBody else "serialization"
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
        for name, nested in schema.pop("$defs", {}).items():
            assert _plain(components[name]) == _plain(nested), name
        assert _plain(components[model.__name__]) == _plain(schema), model.__name__


def _plain(schema: Any) -> Any:
    """FastAPI leaves ``default: null`` out of the document; nothing else may differ."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if (k, v) != ("default", None)}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[Api]:
    server = BackgroundServer(
        Settings(
            home=tmp_path / "home",
            api_port=free_port(),
            ray_address=f"http://127.0.0.1:{free_port()}",
            poll_interval_s=3600,
        )
    )
    server.start()
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as http:
        yield Api(http)
    server.stop()


def test_core_resources_round_trip(api: Api, tmp_path: Path) -> None:
    spec = {"input": "in", "output": "curated"}  # in the team's area
    job = api.submit_job({"kind": "curate", "spec": spec, "name": "c"})
    assert api.job(job.id).id == job.id and job.created_at.tzinfo is not None
    with pytest.raises(ApiError) as refused:
        api.job("nope")
    assert refused.value.status == 404 and refused.value.error.code == "not_found"
    stages = [{"name": "c", "kind": "curate", "spec": {**spec, "output": "p"}}]
    pipeline = api.run_pipeline({"name": "p", "stages": stages})
    assert api.pipeline(pipeline.id).jobs[0].stage == "c"

    area = tmp_path / "home" / "artifacts" / "teams" / "default"  # the admin's team's area
    (area / "w").mkdir(parents=True)
    (area / "m").mkdir()
    corpus = api.register("datasets", {"name": "web", "kind": "raw", "uri": str(area / "w")})
    model = api.register(
        "models", {"name": "m", "kind": "exported", "uri": str(area / "m"), "parent_id": corpus.id}
    )
    assert [a.id for a in api.lineage("models", model.id).chain] == [model.id, corpus.id]
    assert api.artifacts("datasets", kind="raw").count == 1
    with pytest.raises(ApiError) as refused:
        api.delete_artifact("datasets", corpus.id)  # the model is made from it
    assert refused.value.error.code == "conflict"
    assert api.delete_artifact("models", model.id).id == model.id
    with pytest.raises(ApiError) as refused:
        api.register("datasets", {"name": "x", "kind": "raw", "uri": "0"})
    assert refused.value.status == 422 and refused.value.error.code == "validation_error"

    rating = {"prompt": "p", "model_a": "a", "model_b": "b", "completion_a": "x",
              "completion_b": "y", "winner": "a"}  # fmt: skip
    made = api.add_rating(rating)
    assert api.ratings().data[0].id == made.id
    assert api.leaderboard(rounds=0).models[0].model == "a"


def test_the_cli_speaks_through_the_typed_client(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMFORGE_API_URL", str(api.http.base_url))
    monkeypatch.setenv("LLMFORGE_API_KEY", api.http.headers["Authorization"].split()[-1])
    spec = tmp_path / "curate.json"
    spec.write_text(json.dumps({"input": "in", "output": "out"}))
    assert main(["submit", "curate", str(spec)]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["kind"] == "curate" and job["created_at"].endswith("Z")
    assert main(["status", job["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job["id"]
    assert main(["status", "nope"]) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "not_found"
    assert main(["datasets", "list", "--kind", "raw"]) == 0
    assert json.loads(capsys.readouterr().out) == {"data": [], "count": 0, "next_cursor": None}
