"""The completions routes in process (TestClient, keys on, no Ray): the same text streamed or
not, OpenAI's shapes, team scoping, and the 404 / 422 / 429 answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from llm.model.hf import export_hf
from llm.train.checkpoint import load_model
from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.settings import Settings
from tests.services.tiny_model import CONTEXT, EOS_ID, tiny_checkpoint


@dataclass
class Api:
    client: TestClient
    red: dict[str, str]
    blue: dict[str, str]
    model: str
    exported: str  # the same weights exported to the Hugging Face format

    @property
    def url(self) -> str:
        return f"/api/v1/models/{self.model}/completions"


def _key(client: TestClient, admin: dict[str, str], team: str) -> dict[str, str]:
    r = client.post("/api/v1/keys", json={"name": team, "team": team}, headers=admin)
    return {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("completions")
    ckpt = tiny_checkpoint(tmp / "models" / "ckpt")  # a shared root: every team reads it
    export_hf(load_model(ckpt), tmp / "models" / "hf", ckpt / "tokenizer.json", eos_id=EOS_ID)
    settings = Settings(
        home=tmp / "home",
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        rate_limit_per_min=0,
        serve_max_batch=8,
        shared_roots=str(tmp / "models"),
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp / 'home' / ADMIN_KEY_FILE).read_text().strip()}"}
        red, blue = _key(client, admin, "red"), _key(client, admin, "blue")
        models = [
            client.post("/api/v1/models", json=body, headers=red).json()["id"]
            for body in (
                {"name": "tiny", "kind": "checkpoint", "uri": str(ckpt)},
                {"name": "tiny-hf", "kind": "exported", "uri": str(tmp / "models" / "hf")},
            )
        ]
        yield Api(client, red, blue, *models)


def _events(r: httpx.Response) -> list[dict[str, Any]]:
    lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def _streamed(api: Api, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    body = body | {"stream": True, "stream_options": {"include_usage": True}}
    with api.client.stream("POST", url, json=body, headers=api.red) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return _events(r)


def test_streaming_gives_the_same_text_as_not_streaming_for_a_seed(api: Api) -> None:
    body = {"prompt": "The king said", "max_tokens": 24, "temperature": 1.0, "seed": 3, "n": 2}
    whole = api.client.post(api.url, json=body, headers=api.red)
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    assert answer["object"] == "text_completion" and answer["model"] == api.model
    events = _streamed(api, api.url, body)
    for index in (0, 1):
        parts = [c for e in events for c in e["choices"] if c["index"] == index]
        assert "".join(c["text"] for c in parts) == answer["choices"][index]["text"]
        assert parts[-1]["finish_reason"] == answer["choices"][index]["finish_reason"]
    assert answer["choices"][0]["text"] != answer["choices"][1]["text"]  # seeds 3 and 4
    assert events[-1]["choices"] == [] and events[-1]["usage"] == answer["usage"]
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_streams_the_same_reply_as_it_answers(api: Api) -> None:
    body = {
        "model": api.model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Who would come to the castle?"},
        ],
        "max_tokens": 16,
        "seed": 1,
    }
    whole = api.client.post("/v1/chat/completions", json=body, headers=api.red)
    assert whole.status_code == 200, whole.text
    reply = whole.json()["choices"][0]
    assert reply["message"]["role"] == "assistant"
    events = _streamed(api, "/v1/chat/completions", body)
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
    assert text == reply["message"]["content"]


def test_echo_and_logprobs_in_openai_shape(api: Api) -> None:
    body = {"prompt": "Hello world", "max_tokens": 3, "temperature": 0, "echo": True}
    r = api.client.post(api.url, json=body | {"logprobs": 2}, headers=api.red)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"].startswith("Hello world")
    lp = choice["logprobs"]
    prompt_tokens = r.json()["usage"]["prompt_tokens"]
    assert len(lp["tokens"]) == prompt_tokens + 3
    assert lp["token_logprobs"][0] is None and all(x <= 0 for x in lp["token_logprobs"][1:])
    assert all(len(top) <= 2 for top in lp["top_logprobs"][1:])
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])


def test_models_of_other_teams_are_404_and_keys_are_required(api: Api) -> None:
    prompt = {"prompt": "Hello", "max_tokens": 2}
    assert api.client.post(api.url, json=prompt, headers=api.blue).status_code == 404
    unknown = api.client.post("/api/v1/models/nope/completions", json=prompt, headers=api.red)
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    body = prompt | {"model": api.model}
    assert api.client.post("/v1/completions", json=body, headers=api.blue).status_code == 404
    assert api.client.post("/v1/completions", json=body).status_code == 401
    listed = api.client.get("/v1/models", headers=api.red).json()
    assert {m["id"] for m in listed["data"]} == {api.model, api.exported}
    assert api.client.get("/v1/models", headers=api.blue).json()["data"] == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"temperature": 5}, ["body", "temperature"]),
        ({"top_p": 0}, ["body", "top_p"]),
        ({"n": 0}, ["body", "n"]),
        ({"stop": ["a", "b", "c", "d", "e"]}, ["body", "stop"]),
        ({"temprature": 0.5}, ["body", "temprature"]),
        ({"max_tokens": CONTEXT}, ["body", "max_tokens"]),
        ({"prompt": "the king " * 150}, ["body", "prompt"]),
        ({"prompt": [1, 2, 100_000]}, ["body", "prompt"]),
    ],
)
def test_invalid_requests_are_422_naming_the_field(api: Api, body: dict, loc: list) -> None:
    r = api.client.post(api.url, json={"prompt": "Hello"} | body, headers=api.red)
    assert r.status_code == 422, r.text
    assert any(e["loc"][: len(loc)] == loc for e in r.json()["detail"]), r.json()


def test_truncation_only_when_asked(api: Api) -> None:
    body = {"prompt": "the king " * 150, "max_tokens": 4, "temperature": 0}
    assert api.client.post(api.url, json=body, headers=api.red).status_code == 422
    r = api.client.post(api.url, json=body | {"truncate": True}, headers=api.red)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == CONTEXT - 4


def test_a_full_queue_is_429_with_retry_after(api: Api) -> None:
    body = {"prompt": "Hello", "max_tokens": 2}
    assert api.client.post(api.url, json=body, headers=api.red).status_code == 200
    serving = api.client.app.state.serving  # type: ignore[attr-defined]
    (key,) = serving.pool.keys()
    engine = serving.pool.get(key, lambda: None).engine
    engine.max_queue = 0  # as if requests already filled the queue
    try:
        r = api.client.post(api.url, json=body, headers=api.red)
    finally:
        engine.max_queue = 64
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "busy" in r.json()["detail"]


def test_an_exported_hugging_face_model_completes_like_its_checkpoint(api: Api) -> None:
    body = {"prompt": "The queen would", "max_tokens": 12, "temperature": 0}
    ours = api.client.post(api.url, json=body, headers=api.red).json()
    url = f"/api/v1/models/{api.exported}/completions"
    exported = api.client.post(url, json=body, headers=api.red).json()
    assert exported["choices"][0]["text"] == ours["choices"][0]["text"]
    assert exported["usage"] == ours["usage"]


def test_deploying_is_scoped_to_the_team_and_503_while_ray_is_away(api: Api) -> None:
    """No Ray answers this control plane: a deploy that reaches Ray's turn is a 503 that
    leaves nothing recorded, and the model is still served in this process."""
    path = f"/api/v1/models/{api.model}/deploy"
    assert api.client.post(path, json={}, headers=api.blue).status_code == 404
    assert api.client.get(path, headers=api.blue).status_code == 404
    assert api.client.delete(path, headers=api.blue).status_code == 404
    assert api.client.post(path, json={}).status_code == 401
    bad = api.client.post(path, json={"min_replicas": 2, "max_replicas": 1}, headers=api.red)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "max_replicas"]
    away = api.client.post(path, json={"max_replicas": 2}, headers=api.red)
    assert away.status_code == 503, away.text
    assert api.client.get(path, headers=api.red).status_code == 404  # not deployed
    r = api.client.post(api.url, json={"prompt": "Hello", "max_tokens": 2}, headers=api.red)
    assert r.status_code == 200, r.text
