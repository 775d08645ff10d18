"""Data mixtures through the REST API, with no Ray job run: a mixture that does not fit its
data is a 422 naming the field before the job is stored (weights that do not sum to 1, a
source the data's manifest lacks, a repetition cap the sources cannot fill), and a tokenize
job takes several named inputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from contracts.specs import TokenizeSpec, TrainSpec
from services.api.app import create_app
from services.ray_head import free_port
from services.settings import Settings
from services.store.models import DEFAULT_TEAM
from tests.llm.test_mixture import make_folder

TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 7}


@pytest.fixture()
def area(tmp_path: Path) -> Path:
    """The default team's area, holding token shards of books, news and web."""
    settings = Settings(home=tmp_path)
    folder = Path(settings.team_area(DEFAULT_TEAM)) / "mixed-shards"
    folder.mkdir(parents=True)
    make_folder(folder)
    return folder.parent


@pytest.fixture()
def client(tmp_path: Path, area: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as c:
        yield c


def train(mixture: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body = {"data": "mixed-shards", "model": TINY, "steps": 10, "batch_size": 4, "workers": 1}
    return {"kind": "train", "spec": {**body, **spec, "mixture": mixture}}


def error(response: Any) -> tuple[list[Any], str]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    return detail["loc"], detail["msg"]


def test_weights_that_do_not_sum_to_one_are_named(client: TestClient) -> None:
    r = client.post("/api/v1/jobs", json=train({"weights": {"web": 0.6, "books": 0.3}}))
    loc, msg = error(r)
    assert loc == ["body", "spec", "mixture", "weights"]
    assert "the weights must sum to 1, got 0.9" in msg


def test_a_source_the_data_lacks_is_named(client: TestClient) -> None:
    r = client.post("/api/v1/jobs", json=train({"weights": {"web": 0.6, "poems": 0.4}}))
    loc, msg = error(r)
    assert loc == ["body", "spec", "mixture", "weights", "poems"]
    assert "source 'poems' is not in the data; its sources are ['books', 'news', 'web']" in msg
    assert client.get("/api/v1/jobs").json()["count"] == 0  # nothing stored, nothing ran


def test_a_cap_the_sources_cannot_fill_is_named(client: TestClient) -> None:
    # 2000 steps x 4 windows of 8 tokens = 8000 windows; the sources hold 342
    mixture = {"temperature": 2.0, "max_epochs": 3}
    loc, msg = error(client.post("/api/v1/jobs", json=train(mixture, steps=2000)))
    assert loc == ["body", "spec", "mixture", "max_epochs"]
    assert "the run reads 8000 windows, but its sources hold 342" in msg


def test_one_way_of_giving_shares(client: TestClient) -> None:
    both = {"weights": {"web": 1.0}, "temperature": 1.0}
    loc, msg = error(client.post("/api/v1/jobs", json=train(both)))
    assert loc == ["body", "spec", "mixture"] and "not weights and temperature" in msg
    loc, _ = error(client.post("/api/v1/jobs", json=train({"weights": {"web": -0.5}})))
    assert loc == ["body", "spec", "mixture", "weights", "web"]


def test_a_mixture_that_fits_is_accepted_and_kept(client: TestClient) -> None:
    mixture = {"weights": {"web": 0.6, "books": 0.3, "news": 0.1}, "max_epochs": 50}
    r = client.post("/api/v1/jobs", json=train(mixture))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["mixture"] == {**mixture, "temperature": None, "epochs": None}


def test_a_mixture_on_data_not_there_yet_is_left_to_the_job(client: TestClient) -> None:
    r = client.post("/api/v1/jobs", json=train({"epochs": {"web": 1}}, data="not-yet"))
    assert r.status_code == 201, r.text


def test_tokenize_takes_named_inputs(client: TestClient, area: Path) -> None:
    inputs = {"web": "curated/web", "books": str(area / "curated/books")}
    r = client.post("/api/v1/jobs", json={"kind": "tokenize", "spec": {"inputs": inputs}})
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["input"] is None
    # relative inputs are anchored in the team's area like any other path
    assert spec["inputs"] == {"web": str(area / "curated/web"), "books": inputs["books"]}
    bad = {"inputs": {"web": "/etc/passwd-corpus"}}
    r = client.post("/api/v1/jobs", json={"kind": "tokenize", "spec": bad})
    assert r.status_code == 403
    assert r.json()["detail"][0]["loc"] == ["body", "spec", "inputs", "web"]
    r = client.post("/api/v1/jobs", json={"kind": "tokenize", "spec": {"inputs": {"a b": "x"}}})
    assert error(r)[0] == ["body", "spec", "inputs", "a b", "[key]"]


def test_tokenize_takes_input_or_inputs() -> None:
    with pytest.raises(ValidationError, match=r"give input .* or inputs"):
        TokenizeSpec.model_validate({"input": "a", "inputs": {"web": "b"}, "output": "o"})
    with pytest.raises(ValidationError, match="input\n  Field required"):
        TokenizeSpec.model_validate({"output": "o"})


def test_the_spec_plans_on_the_manifest(area: Path) -> None:
    from llm.tokenizer.shards import read_manifest

    spec = TrainSpec.model_validate(train({"temperature": 1.0})["spec"] | {"output": "o"})
    spec = spec.model_copy(update={"data": str(area / "mixed-shards")})
    plan = spec.mixture_plan(read_manifest(spec.data))
    assert plan is not None and plan.run_windows == 10 * 4 * 7 // 7
    assert plan.windows == {"books": 81, "news": 11, "web": 250}
    assert sum(plan.shares.values()) == pytest.approx(1)
