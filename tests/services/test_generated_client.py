"""A client generated from the OpenAPI document by openapi-python-client (as users of other
languages' generators would) round-trips jobs, pipelines, datasets, models and ratings against
a live control plane: every answer parses into the generated models, and an error into the
generated ErrorBody. The client is generated afresh from the document each run, so a change
that breaks generated clients fails here."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from services.api.app import create_app
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings

PACKAGE = "llmforge_generated_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    folder = tmp_path_factory.mktemp("client")
    document = folder / "openapi.json"
    document.write_text(
        json.dumps(create_app(Settings(ray_address="http://127.0.0.1:1")).openapi())
    )
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", str(document),
         "--meta", "none", "--output-path", str(folder / PACKAGE)],
        check=True, capture_output=True, text=True,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]


@pytest.fixture()
def client(generated: ModuleType, tmp_path: Path) -> Iterator[Any]:
    server = BackgroundServer(
        Settings(
            home=tmp_path / "home",
            api_port=free_port(),
            ray_address=f"http://127.0.0.1:{free_port()}",
            poll_interval_s=3600,
        )
    )
    server.start()
    key = server.headers["Authorization"].split()[-1]
    with generated.AuthenticatedClient(
        base_url=server.url, token=key, raise_on_unexpected_status=True
    ) as made:
        yield made
    server.stop()


def _op(tag: str, name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")


def _model(name: str) -> Any:
    return getattr(importlib.import_module(f"{PACKAGE}.models"), name)


def test_a_generated_client_round_trips_the_core_resources(client: Any, tmp_path: Path) -> None:
    spec = {"input": "in", "output": "curated"}
    body = _model("JobCreate").from_dict({"kind": "curate", "spec": spec})
    job = _op("jobs", "submit_job_api_v1_jobs_post").sync(client=client, body=body)
    assert isinstance(job, _model("JobPublic")) and job.created_at.tzinfo is not None
    got = _op("jobs", "get_job_api_v1_jobs_job_id_get").sync(job.id, client=client)
    assert got.id == job.id
    missing = _op("jobs", "get_job_api_v1_jobs_job_id_get").sync("nope", client=client)
    assert isinstance(missing, _model("ErrorBody")) and missing.code == "not_found"

    stages = [{"name": "c", "kind": "curate", "spec": {**spec, "output": "p"}}]
    body = _model("PipelineCreate").from_dict({"name": "p", "stages": stages})
    pipeline = _op("pipelines", "create_pipeline_api_v1_pipelines_post").sync(
        client=client, body=body
    )
    again = _op("pipelines", "get_pipeline_api_v1_pipelines_pipeline_id_get").sync(
        pipeline.id, client=client
    )
    assert again.jobs[0].stage == "c"

    area = tmp_path / "home" / "artifacts" / "teams" / "default"  # the admin's team's area
    (area / "corpus").mkdir(parents=True)
    (area / "m").mkdir()
    raw = {"name": "web", "kind": "raw", "uri": str(area / "corpus")}
    dataset = _op("datasets", "register_dataset_api_v1_datasets_post").sync(
        client=client, body=_model("DatasetCreate").from_dict(raw)
    )
    refused = _op("datasets", "register_dataset_api_v1_datasets_post").sync(
        client=client, body=_model("DatasetCreate").from_dict({**raw, "uri": "0"})
    )
    assert refused.code == "validation_error"
    exported = {"name": "m", "kind": "exported", "uri": str(area / "m"), "parent_id": dataset.id}
    model = _op("models", "register_model_api_v1_models_post").sync(
        client=client, body=_model("ModelCreate").from_dict(exported)
    )
    chain = _op("models", "model_lineage_api_v1_models_artifact_id_lineage_get").sync(
        model.id, client=client
    )
    assert [a.id for a in chain.chain] == [model.id, dataset.id]
    listed = _op("datasets", "list_datasets_api_v1_datasets_get").sync(client=client)
    assert listed.count == 1 and listed.data[0].created_at.tzinfo is not None

    rating = {"prompt": "p", "model_a": "a", "model_b": "b", "completion_a": "x",
              "completion_b": "y", "winner": "a"}  # fmt: skip
    made = _op("ratings", "create_rating_api_v1_ratings_post").sync(
        client=client, body=_model("RatingCreate").from_dict(rating)
    )
    ratings = _op("ratings", "list_ratings_api_v1_ratings_get").sync(client=client)
    assert [r.id for r in ratings.data] == [made.id]
