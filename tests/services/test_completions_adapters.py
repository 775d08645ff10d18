"""A LoRA adapter served by name end to end: a tiny trained base and a tiny LoRA fine-tune of
it, registered (the adapter under its base); the completions routes serve the adapter, by id or
name, as its base with the adapter applied (the same greedy text as the merged weights); a
request naming another base is a 422 that says whose adapter it is. A streamed completion
holds no store connection while it streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from llm.model.lora import merged
from llm.train.checkpoint import load_model, save_checkpoint
from services.api.app import create_app
from services.ray_head import free_port
from services.settings import Settings
from tests.services.tiny_model import tiny_checkpoint, tiny_lora
from tests.services.tiny_models import seeded_checkpoint

PROMPT = "The king said"


@dataclass
class Api:
    client: TestClient
    ids: dict[str, str]  # name -> registry id


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("adapters")
    models = tmp / "models"  # a shared root: every team reads it
    base = tiny_checkpoint(models / "base")
    other = seeded_checkpoint(models / "other", seed=3)
    adapter = tiny_lora(base, models / "lora")
    merged_path = save_checkpoint(
        models / "merged", model=merged(load_model(adapter)), config=load_model(base).config,
        optimizer=None, trainer_state={"step": 1},
    )  # fmt: skip
    (merged_path / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    settings = Settings(
        home=tmp / "home", ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60,
        rate_limit_per_min=0, auth=False, shared_roots=str(models),
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        ids: dict[str, str] = {}
        for name, kind, uri, parent in (
            ("base", "checkpoint", base, None),
            ("other", "checkpoint", other, None),
            ("merged", "checkpoint", merged_path, None),
            ("sea-lora", "adapter", models / "lora", "base"),
        ):
            body = {"name": name, "kind": kind, "uri": str(uri)}
            if parent:
                body["parent_id"] = ids[parent]
            r = client.post("/api/v1/models", json=body)
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]
        yield Api(client, ids)


GREEDY = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}


def _text(api: Api, model: str, **extra: Any) -> str:
    r = api.client.post(f"/api/v1/models/{model}/completions", json=GREEDY | extra)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def test_an_adapter_completes_as_its_merged_weights_by_id_or_name(api: Api) -> None:
    tuned = _text(api, api.ids["sea-lora"])
    assert tuned == _text(api, api.ids["merged"])
    assert tuned != _text(api, api.ids["base"])  # the adapter is applied, not left out
    assert _text(api, "sea-lora", base="base") == tuned  # by names, its base named
    r = api.client.post("/v1/completions", json=GREEDY | {"model": "sea-lora"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == tuned
    chat = {"model": "sea-lora", "messages": [{"role": "user", "content": "hi"}]}
    r = api.client.post("/v1/chat/completions", json=chat | {"max_tokens": 3, "base": "base"})
    assert r.status_code == 200, r.text


def test_an_adapter_asked_for_on_another_base_is_422(api: Api) -> None:
    r = api.client.post(
        "/v1/completions", json=GREEDY | {"model": "sea-lora", "base": api.ids["other"]}
    )
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "base"]
    assert f"was made on the base model {api.ids['base']}, not on {api.ids['other']}" in r.text
    chat = {"model": "sea-lora", "base": "other", "messages": [{"role": "user", "content": "x"}]}
    assert api.client.post("/v1/chat/completions", json=chat).status_code == 422
    r = api.client.post(
        f"/api/v1/models/{api.ids['base']}/completions", json=GREEDY | {"base": "x"}
    )
    assert r.status_code == 422 and "not a LoRA adapter" in r.text
    r = api.client.post("/v1/completions", json=GREEDY | {"model": "sea-lora", "base": "nope"})
    assert r.status_code == 422 and "base model nope not found" in r.text
    assert api.client.post("/v1/completions", json=GREEDY | {"model": "nope"}).status_code == 404


def test_a_stream_holds_no_store_connection(api: Api) -> None:
    engine: Engine = api.client.app.state.sessions.kw["bind"]  # type: ignore[attr-defined]
    body = {"prompt": PROMPT, "max_tokens": 8, "stream": True, "ignore_eos": True}
    url = f"/api/v1/models/{api.ids['base']}/completions"
    with api.client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        assert json.loads(first.removeprefix("data: "))["choices"]
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert [line for line in lines if line][-1] == "data: [DONE]"
