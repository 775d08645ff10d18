"""A registered model deployed as a Ray Serve application on the session's local Ray cluster
(tests/conftest.py's control plane, without keys), prompted through the same completions
routes: the deployment answers what the in-process engine answers, token for token, and so do
its replicas for a LoRA adapter of it, asked for by name."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.serving import KEY_HEADER, app_name
from services.cli.main import main
from services.server import BackgroundServer
from services.store.models import Deployment
from tests.services.tiny_model import tiny_checkpoint, tiny_lora

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def api(control_plane: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=control_plane.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a long context: a request of 2000 tokens runs for seconds, long enough to hang up on
    return tiny_checkpoint(tmp_path_factory.mktemp("deployed") / "ckpt", context=2048)


@pytest.fixture(scope="module")
def model(api: httpx.Client, base: Path) -> str:
    body = {"name": "tiny-deployed", "kind": "checkpoint", "uri": str(base)}
    r = api.post("/api/v1/models", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def adapter(api: httpx.Client, model: str, base: Path) -> str:
    """A LoRA adapter of the deployed model, registered under it (not deployed itself)."""
    lora = tiny_lora(base, base.parent / "lora")
    body = {"name": "tiny-deployed-lora", "kind": "adapter", "uri": str(lora), "parent_id": model}
    r = api.post("/api/v1/models", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _until(api: httpx.Client, path: str, states: set[str], timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        body = api.get(path).raise_for_status().json()
        if body["state"] in states or time.monotonic() > deadline:
            assert body["state"] in states, body
            return body
        time.sleep(0.5)


def _answers(api: httpx.Client, model: str) -> dict[str, Any]:
    """Greedy completions (text and tokens), a chat reply and a stream of one model."""
    url = f"/api/v1/models/{model}/completions"
    greedy = {"max_tokens": 20, "temperature": 0, "logprobs": 1, "ignore_eos": True}
    batch = api.post(url, json=greedy | {"prompt": ["The king said", "Hello world"]})
    assert batch.status_code == 200, batch.text
    chat = api.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Who would come to the castle?"}],
            "max_tokens": 12,
            "temperature": 0,
        },
    )
    assert chat.status_code == 200, chat.text
    body = greedy | {
        "prompt": "A man is",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with api.stream("POST", url, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    streamed = "".join(c["text"] for e in events for c in e["choices"])
    return {
        "choices": [(c["text"], c["logprobs"]["tokens"]) for c in batch.json()["choices"]],
        "usage": batch.json()["usage"],
        "chat": chat.json()["choices"][0]["message"]["content"],
        "stream": (streamed, events[-1]["usage"]),
    }


def _hang_up_mid_stream(api: httpx.Client, model: str, control_plane: BackgroundServer) -> None:
    """A client that leaves mid-stream: Serve cancels its request, and the replica's engine
    takes the sequence out of the batch, well short of the tokens it asked for."""
    deployments = control_plane.app.state.deployments
    replica = _replica(control_plane, model)
    url = f"{deployments.serve_url}/{app_name(model)}"
    assert httpx.get(url).status_code == 401  # the proxy is open
    before = replica.get("").raise_for_status().json()
    body = {"prompt": "The king", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with api.stream("POST", f"/api/v1/models/{model}/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # one chunk, then hang up
    deadline = time.monotonic() + 10
    load = replica.get("").raise_for_status().json()
    while (load["running"], load["waiting"]) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
        load = replica.get("").raise_for_status().json()
    assert (load["running"], load["waiting"]) == (0, 0)
    assert load["tokens"] - before["tokens"] < 1000, (before, load)


def _engine(api: httpx.Client, control_plane: BackgroundServer, model: str) -> Any:
    """The control plane's in-process engine of a model it has served."""
    uri = api.get(f"/api/v1/models/{model}").json()["uri"]
    return control_plane.app.state.serving.pool._engines[f"{model}:{uri}"].engine


def _replica(control_plane: BackgroundServer, model: str) -> httpx.Client:
    """A client of the model's deployment through Serve's proxy, with the application's key."""
    deployments = control_plane.app.state.deployments
    key = deployments.key(app_name(model))
    return httpx.Client(
        base_url=f"{deployments.serve_url}/{app_name(model)}",
        headers={KEY_HEADER: key} if key else {},
        timeout=60,
    )


def _adapter_on_the_replicas(
    api: httpx.Client, control_plane: BackgroundServer, model: str, adapter: str, local: Any
) -> None:
    """The adapter, asked for by name while only its base is deployed, runs on the base's
    replicas and answers what the control plane's engine with that adapter answered; a
    replica refuses an adapter reference that is no adapter of its base."""
    engine = _engine(api, control_plane, adapter)
    served_here = engine.stats.tokens
    assert api.get(f"/api/v1/models/{adapter}/deploy").status_code == 404  # not deployed itself
    assert _answers(api, "tiny-deployed-lora") == local
    assert engine.stats.tokens == served_here  # generated by the replica, not in this process
    replica = _replica(control_plane, model)
    loads = [replica.get("").raise_for_status().json() for _ in range(8)]  # any replica
    assert any(load["adapters"].get(adapter, 0) > 0 for load in loads), loads
    base_uri = api.get(f"/api/v1/models/{model}").json()["uri"]
    forged = {
        "prompt": "Hi",
        "params": {"max_tokens": 2},
        "adapter": {"id": "not-one", "uri": base_uri},
    }
    r = replica.post("", json=forged)
    assert r.status_code == 422 and "is not a LoRA adapter" in r.text, r.text
    assert replica.post("", json=forged | {"adapter": {"uri": 3}}).status_code == 422


def test_a_deployed_model_answers_like_the_in_process_engine_and_undeploys(
    api: httpx.Client,
    model: str,
    adapter: str,
    control_plane: BackgroundServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = f"/api/v1/models/{model}/deploy"
    local = _answers(api, model)  # before the deploy: the engine in the control plane
    local_adapter = _answers(api, adapter)
    assert local_adapter != local  # the adapter is applied
    engine = _engine(api, control_plane, model)
    served_here = engine.stats.tokens

    monkeypatch.setenv("LLMFORGE_API_URL", control_plane.url)
    options = ["--min-replicas", "1", "--max-replicas", "2", "--num-cpus", "0.5"]
    assert main(["serve-model", model, *options, "--max-batch", "4"]) == 0
    deploying = json.loads(capsys.readouterr().out)
    assert deploying["state"] == "DEPLOYING" and deploying["app"] == app_name(model)
    try:
        spec = {"min_replicas": 1, "max_replicas": 2, "num_cpus": 0.5, "max_batch": 4}
        assert api.post(path, json=spec).status_code == 200  # the same spec: nothing to do
        running = _until(api, path, {"RUNNING", "FAILED"})
        assert running["state"] == "RUNNING", running
        assert running["replicas"] >= 1 and running["spec"]["max_replicas"] == 2
        assert main(["serve-model", model, "--status"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "RUNNING"
        assert api.delete(f"/api/v1/models/{model}").status_code == 409  # deployed

        remote = _answers(api, model)
        assert remote == local
        assert engine.stats.tokens == served_here  # the replica generated them, not this process

        # the replica's refusals come back as the routes' own
        url = f"/api/v1/models/{model}/completions"
        too_long = api.post(url, json={"prompt": "Hello", "max_tokens": 5000})
        assert too_long.status_code == 422, too_long.text
        assert too_long.json()["detail"][0]["loc"] == ["body", "max_tokens"]
        apps = control_plane.app.state.ray.serve_applications()
        assert apps[app_name(model)]["status"] == "RUNNING"
        _hang_up_mid_stream(api, model, control_plane)
        _adapter_on_the_replicas(api, control_plane, model, adapter, local_adapter)
    finally:
        gone = api.delete(path)
    assert gone.status_code == 202, gone.text
    assert gone.json()["state"] == "UNDEPLOYING"
    _until(api, path, {"UNDEPLOYED"}, timeout_s=60)
    assert app_name(model) not in control_plane.app.state.ray.serve_applications()
    assert api.delete(path).status_code == 200  # already undeployed
    # served in this process again
    again = api.post(f"/api/v1/models/{model}/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert again.status_code == 200, again.text
    assert engine.stats.tokens > served_here

    # a deployment the store thinks runs, which the cluster lost (a restarted cluster)
    _set_state(control_plane, model, "RUNNING")
    lost = api.get(path).json()
    assert lost["state"] == "FAILED" and "no longer runs" in lost["message"]
    refused = api.post(f"/api/v1/models/{model}/completions", json={"prompt": "Hi"})
    assert refused.status_code == 503 and "no longer runs" in refused.json()["detail"]
    assert refused.headers["Retry-After"]
    _set_state(control_plane, model, "UNDEPLOYED")


def _set_state(control_plane: BackgroundServer, model: str, state: str) -> None:
    with control_plane.app.state.sessions() as session:
        session.get(Deployment, model).state = state
        session.commit()


def test_a_restart_gives_up_on_deployments_of_models_no_longer_registered(
    control_plane: BackgroundServer,
) -> None:
    sessions = control_plane.app.state.sessions
    with sessions() as session:
        row = Deployment(
            model_id="unregistered", app=app_name("unregistered"), state="RUNNING", spec={},
            replicas=1,
        )  # fmt: skip
        session.add(row)
        session.commit()
    try:
        control_plane.app.state.deployments.restore(sessions)
        with sessions() as session:
            row = session.get(Deployment, "unregistered")
            assert row.state == "FAILED" and "no longer registered" in row.message
    finally:
        with sessions() as session:
            session.delete(session.get(Deployment, "unregistered"))
            session.commit()


def test_deploy_refuses_unknown_models_and_bad_specs(
    api: httpx.Client,
    model: str,
    control_plane: BackgroundServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert api.post("/api/v1/models/nope/deploy", json={}).status_code == 404
    monkeypatch.setenv("LLMFORGE_API_URL", control_plane.url)
    assert main(["serve-model", "nope", "--undeploy"]) == 1
    assert "model nope not found" in capsys.readouterr().out
    assert api.get("/api/v1/models/nope/deploy").status_code == 404
    assert api.get(f"/api/v1/models/{model}/deploy").status_code in (200, 404)
    cases = [
        ({"min_replicas": 3, "max_replicas": 2}, ["body", "max_replicas"]),
        ({"min_replicas": -1}, ["body", "min_replicas"]),
        ({"max_replicas": 0}, ["body", "max_replicas"]),
        ({"device": "tpu"}, ["body", "device"]),
        ({"max_batch": 0}, ["body", "max_batch"]),
        ({"replicas": 2}, ["body", "replicas"]),
    ]
    for body, loc in cases:
        r = api.post(f"/api/v1/models/{model}/deploy", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"][0]["loc"] == loc, r.json()
