"""/api/v1/prompts: stored prompt templates (CRUD, team scoping, versions), rendered on the
server with variables, and used in place of a prompt by the completions routes (in process,
a tiny model served by the control plane)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.settings import Settings
from tests.services.tiny_model import tiny_checkpoint


@dataclass
class Api:
    client: TestClient
    admin: dict[str, str]
    red: dict[str, str]
    blue: dict[str, str]
    model: str


def _key(client: TestClient, admin: dict[str, str], team: str, role: str = "member") -> Any:
    body = {"name": team, "team": team, "role": role}
    key = client.post("/api/v1/keys", json=body, headers=admin).json()["key"]
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("prompts")
    ckpt = tiny_checkpoint(tmp / "models" / "ckpt")  # a shared root: every team reads it
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
        body = {"name": "tiny", "kind": "checkpoint", "uri": str(ckpt)}
        model = client.post("/api/v1/models", json=body, headers=red).json()["id"]
        yield Api(client, admin, red, blue, model)


QA = {
    "name": "qa",
    "system": "Answer {{ style }}.",
    "template": "Q: {{ question }}\nA:",
    "examples": [
        {"variables": {"question": "Who would come to the castle?"}, "output": "The queen."},
        {"input": "Q: Where is the man?\nA:", "output": "On a roof."},
    ],
    "defaults": {"style": "briefly"},
}


def test_a_template_is_stored_rendered_versioned_and_team_scoped(api: Api) -> None:
    c, red, blue = api.client, api.red, api.blue
    r = c.post("/api/v1/prompts", json=QA, headers=red)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["version"] == 1 and made["team"] == "red"
    assert made["variables"] == ["question", "style"] and not made["declared"]
    assert c.post("/api/v1/prompts", json=QA, headers=red).status_code == 409  # name taken
    assert c.post("/api/v1/prompts", json=QA, headers=blue).status_code == 201  # blue's own

    # by id or by name; text in lm-eval's few-shot layout, and the same as chat messages
    body = {"variables": {"question": "What is deep?"}}
    for ref in (made["id"], "qa"):
        r = c.post(f"/api/v1/prompts/{ref}/render", json=body, headers=red)
        assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == (
        "Answer briefly.\n\n"
        "Q: Who would come to the castle?\nA: The queen.\n\n"
        "Q: Where is the man?\nA: On a roof.\n\n"
        "Q: What is deep?\nA:"
    )
    assert [m["role"] for m in out["messages"]] == [
        "system", "user", "assistant", "user", "assistant", "user"
    ]  # fmt: skip
    assert out["messages"][-1]["content"] == "Q: What is deep?\nA:"
    style = {"variables": {"question": "x", "style": "in rhyme"}}
    r = c.post("/api/v1/prompts/qa/render", json=style, headers=red)
    assert r.json()["text"].startswith("Answer in rhyme.")

    # another team's template is a 404, by id as by name
    assert c.get(f"/api/v1/prompts/{made['id']}", headers=blue).status_code == 404
    assert {t["team"] for t in c.get("/api/v1/prompts", headers=red).json()["data"]} == {"red"}
    assert c.get("/api/v1/prompts", headers=api.admin).json()["count"] == 2

    # PUT replaces it and bumps the version; DELETE removes it
    changed = {**QA, "template": "Question: {{ question }}\nAnswer:"}
    r = c.put("/api/v1/prompts/qa", json=changed, headers=red)
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    r = c.post("/api/v1/prompts/qa/render", json=body, headers=red)
    assert r.json()["text"].endswith("Question: What is deep?\nAnswer:")
    assert r.json()["version"] == 2
    reader = _key(c, api.admin, "red", role="read_only")
    assert c.get("/api/v1/prompts/qa", headers=reader).status_code == 200
    assert c.delete("/api/v1/prompts/qa", headers=reader).status_code == 403
    assert c.delete("/api/v1/prompts/qa", headers=red).status_code == 204
    assert c.get("/api/v1/prompts/qa", headers=red).status_code == 404
    assert c.delete("/api/v1/prompts/qa", headers=blue).status_code == 204  # blue's, by name


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        ({"template": "Q: {{ question "}, ["body", "template"], "syntax error on line 1"),
        ({"system": "{% if %}"}, ["body", "system"], "syntax error"),
        ({"variables": ["question"]}, ["body", "system"], "'style', which is not a declared"),
        ({"defaults": {"tone": "x"}}, ["body", "defaults", "tone"], "not a declared variable"),
        (
            {"examples": [{"variables": {"q": "x"}, "output": "y"}]},
            ["body", "examples", 0, "variables", "q"],
            "'q' is not a variable",
        ),
        ({"examples": [{"output": "y"}]}, ["body", "examples", 0], "input (text) or its"),
        ({"name": "no spaces"}, ["body", "name"], "pattern"),
    ],
)
def test_bad_templates_are_422_naming_the_field(
    api: Api, change: dict[str, Any], loc: list[Any], message: str
) -> None:
    r = api.client.post("/api/v1/prompts", json={**QA, "name": "bad", **change}, headers=api.red)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["loc"] == loc and message in e["msg"] for e in errors), errors


def test_rendering_needs_every_variable_and_only_its_own(api: Api) -> None:
    c = api.client
    body = {"name": "strict", "template": "{{ question }} {{ 1 / n }}"}
    assert c.post("/api/v1/prompts", json=body, headers=api.red).status_code == 201
    for variables, loc, message in [
        ({"n": 2}, ["body", "variables", "question"], "missing variable 'question'"),
        ({"question": "q", "n": 2, "qestion": 1}, ["body", "variables", "qestion"], "not a var"),
        ({"question": "q", "n": 0}, ["body", "variables"], "division by zero"),
        ({"question": "q", "n": "x"}, ["body", "variables"], "failed to render"),
    ]:
        r = c.post("/api/v1/prompts/strict/render", json={"variables": variables}, headers=api.red)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == loc and message in r.json()["detail"][0]["msg"]
    sandbox = {**body, "name": "escape", "template": "{{ question.__class__.__mro__ }}"}
    assert c.post("/api/v1/prompts", json=sandbox, headers=api.red).status_code == 201
    r = c.post(
        "/api/v1/prompts/escape/render", json={"variables": {"question": "q"}}, headers=api.red
    )
    assert r.status_code == 422 and "unsafe" in r.text
    r = c.post("/api/v1/prompts/nope/render", json={}, headers=api.red)
    assert r.status_code == 404 and "nope" in r.text


def test_completions_take_a_stored_template_in_place_of_the_prompt(api: Api) -> None:
    c, url = api.client, f"/api/v1/models/{api.model}/completions"
    body = {**QA, "name": "king", "template": "The {{ who }} said", "system": None,
            "examples": [], "defaults": {}}  # fmt: skip
    assert c.post("/api/v1/prompts", json=body, headers=api.red).status_code == 201
    sampling = {"max_tokens": 8, "temperature": 0}
    plain = c.post(url, json={"prompt": "The king said", **sampling}, headers=api.red)
    templated = c.post(
        url, json={"prompt_template": "king", "variables": {"who": "king"}, **sampling},
        headers=api.red,
    )  # fmt: skip
    assert templated.status_code == 200, templated.text
    assert templated.json()["choices"] == plain.json()["choices"]
    assert templated.json()["usage"] == plain.json()["usage"]
    openai = {"model": api.model, "prompt_template": "king", "variables": {"who": "king"}}
    r = c.post("/v1/completions", json=openai | sampling, headers=api.red)
    assert r.status_code == 200 and r.json()["choices"] == plain.json()["choices"]

    # chat: the template's messages through the model's chat template
    chat = {"model": api.model, "max_tokens": 6, "temperature": 0}
    qa = {
        "name": "qa-chat",
        "template": "{{ question }}",
        "examples": [{"input": "Hi", "output": "Hello"}],
    }
    assert c.post("/api/v1/prompts", json=qa, headers=api.red).status_code == 201
    rendered = c.post(
        "/api/v1/prompts/qa-chat/render", json={"variables": {"question": "Why?"}}, headers=api.red
    ).json()
    by_messages = c.post("/v1/chat/completions", json=chat | {"messages": rendered["messages"]},
                         headers=api.red)  # fmt: skip
    by_template = c.post(
        "/v1/chat/completions",
        json=chat | {"prompt_template": "qa-chat", "variables": {"question": "Why?"}},
        headers=api.red,
    )
    assert by_template.status_code == 200, by_template.text
    assert by_template.json()["choices"] == by_messages.json()["choices"]
    assert by_template.json()["usage"] == by_messages.json()["usage"]

    # both or neither is a 422; an unknown template a 404; a missing variable a 422 naming it
    for wrong in ({"prompt": "x", "prompt_template": "king"}, {}, {"prompt": "x", "variables": {}}):
        r = c.post(url, json=wrong | sampling, headers=api.red)
        assert r.status_code == 422, r.text
    r = c.post(url, json={"prompt_template": "nope", **sampling}, headers=api.red)
    assert r.status_code == 404 and "nope" in r.text
    r = c.post(url, json={"prompt_template": "king", **sampling}, headers=api.red)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "variables", "who"]
    r = c.post(url, json={"prompt_template": "king", "variables": {"who": "x"}}, headers=api.blue)
    assert r.status_code == 404  # blue has no such template (nor the model)
    r = c.post("/v1/chat/completions", json=chat, headers=api.red)
    assert r.status_code == 422 and "messages or prompt_template" in r.text
