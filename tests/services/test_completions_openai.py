"""OpenAI's own Python client against the control plane on loopback (uvicorn in a thread, keys
on, no Ray): it parses completions, chat completions, their streamed chunks and the model list.
A client that disconnects mid-stream takes its sequence out of the batch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.api.completion_schemas import ChatCompletionChunk, CompletionChunk
from services.cli.api import Api, ApiError
from services.cli.main import main
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings
from tests.services.tiny_model import tiny_checkpoint

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackgroundServer, str]]:
    tmp = tmp_path_factory.mktemp("openai")
    ckpt = tiny_checkpoint(tmp / "models" / "ckpt")  # a shared root: every team reads it
    server = BackgroundServer(
        Settings(
            home=tmp / "home",
            api_port=free_port(),
            ray_address=f"http://127.0.0.1:{free_port()}",
            poll_interval_s=60,
            rate_limit_per_min=0,
            shared_roots=str(tmp / "models"),
        )
    )
    server.start()
    try:
        body = {"name": "tiny", "kind": "checkpoint", "uri": str(ckpt)}
        r = httpx.post(f"{server.url}/api/v1/models", json=body, headers=server.headers)
        yield server, r.json()["id"]
    finally:
        server.stop()


def _client(server: BackgroundServer) -> openai.OpenAI:
    key = (Path(server.settings.home) / "admin.key").read_text().strip()
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def test_the_openai_client_parses_every_response_shape(served) -> None:
    server, model = served
    client = _client(server)
    assert model in [m.id for m in client.models.list().data]
    done = client.completions.create(
        model=model, prompt="The king", max_tokens=6, temperature=0, logprobs=2, seed=1
    )
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.completion_tokens <= 6
    assert done.choices[0].logprobs is not None and done.choices[0].logprobs.tokens
    chunks = list(
        client.completions.create(
            model=model, prompt="The king", max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    messages = [{"role": "user", "content": "Who comes to the castle?"}]
    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, seed=2, logprobs=True, top_logprobs=2
    )
    reply = chat.choices[0]
    assert reply.message.role == "assistant" and reply.logprobs is not None
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, seed=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    parts = list(stream)
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text == reply.message.content
    assert parts[-1].usage is not None and parts[-1].usage.total_tokens == chat.usage.total_tokens
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model=model, prompt="x", max_tokens=1, temperature=9)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_leaves_the_batch(served, stream: bool) -> None:
    server, model = served
    url = f"{server.url}/api/v1/models/{model}/completions"
    short = {"prompt": "The king", "max_tokens": 1}
    assert httpx.post(url, json=short, headers=server.headers).status_code == 200
    pool = server.app.state.serving.pool  # type: ignore[union-attr]
    (key,) = pool.keys()
    engine = pool.get(key, lambda: None).engine
    fast = engine.decode

    def slow(ids: list[int]) -> str:  # about 1.2 s for the 60 tokens asked below
        time.sleep(0.02)
        return fast(ids)

    engine.decode = slow
    before = engine.stats.tokens
    body = {"prompt": "The king", "max_tokens": 60, "ignore_eos": True, "stream": stream}
    try:
        if stream:
            with httpx.stream("POST", url, json=body, headers=server.headers, timeout=30) as r:
                assert r.status_code == 200
                next(r.iter_lines())  # one chunk, then hang up
        else:
            with pytest.raises(httpx.ReadTimeout):  # gives up waiting, and hangs up
                httpx.post(url, json=body, headers=server.headers, timeout=0.2)
        deadline = time.monotonic() + 10
        while engine.busy and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.decode = fast
    assert engine.load == (0, 0)
    assert engine.stats.tokens - before < 40  # it left the batch, well short of 60 tokens


def test_llmforge_prompt_streams_the_completion_to_the_terminal(
    served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server, model = served
    key = (Path(server.settings.home) / "admin.key").read_text().strip()
    monkeypatch.setenv("LLMFORGE_API_URL", server.url)
    monkeypatch.setenv("LLMFORGE_API_KEY", key)
    args = ["prompt", model, "The king", "--max-tokens", "8", "--temperature", "0"]
    assert main(args) == 0
    printed = capsys.readouterr()
    body = {"prompt": "The king", "max_tokens": 8, "temperature": 0}
    url = f"{server.url}/api/v1/models/{model}/completions"
    whole = httpx.post(url, json=body, headers=server.headers).json()
    assert printed.out == whole["choices"][0]["text"] + "\n"
    assert "completion tokens" in printed.err
    assert main(["prompt", "nope", "x"]) == 1


def test_the_typed_client_reads_each_stream_event_against_the_document(
    served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """services.cli.api parses every SSE event with the chunk schemas the document publishes
    (CompletionChunk, ChatCompletionChunk): the streamed text is the non-streamed answer's, the
    usage comes last, and a refused request is an ApiError with the document's ErrorBody."""
    server, model = served
    sampling = {"max_tokens": 6, "temperature": 0, "logprobs": 2}
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as http:
        api = Api(http)
        whole = http.post(
            f"/api/v1/models/{model}/completions", json={"prompt": "The king"} | sampling
        )
        include = {"stream_options": {"include_usage": True}}
        chunks = list(api.stream_completion(model, {"prompt": "The king"} | sampling | include))
        assert all(isinstance(c, CompletionChunk) for c in chunks)
        assert (
            "".join(ch.text for c in chunks for ch in c.choices)
            == whole.json()["choices"][0]["text"]
        )
        assert all(ch.logprobs is not None for c in chunks for ch in c.choices)
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 6

        chat = {"model": model, "messages": [{"role": "user", "content": "Hello"}]}
        replies = list(api.stream_chat(chat | {"max_tokens": 4, "temperature": 0}))
        assert all(isinstance(c, ChatCompletionChunk) for c in replies)
        assert replies[0].choices[0].delta.role == "assistant"
        assert replies[-1].choices[0].finish_reason == "length"

        with pytest.raises(ApiError) as refused:
            list(api.stream_completion("nope", {"prompt": "x"}))
        assert refused.value.status == 404 and refused.value.error.code == "not_found"

    key = (Path(server.settings.home) / "admin.key").read_text().strip()
    monkeypatch.setenv("LLMFORGE_API_URL", server.url)
    monkeypatch.setenv("LLMFORGE_API_KEY", key)
    assert (
        main(["prompt", model, "Hello", "--chat", "--max-tokens", "4", "--temperature", "0"]) == 0
    )
    printed = capsys.readouterr()
    assert (
        printed.out
        == "".join(c.choices[0].delta.content or "" for c in replies if c.choices) + "\n"
    )
