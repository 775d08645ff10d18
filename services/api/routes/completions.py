"""Completions of registered models: ``POST /api/v1/models/{id}/completions`` and the
OpenAI-compatible ``POST /v1/completions``, ``POST /v1/chat/completions`` and ``GET /v1/models``.

The model runs in this process (``services.serving``): concurrent requests to one model share
its continuous-batching engine. Same keys and team scoping as the registry: a model another
team registered is a 404. A full queue is a 429 with ``Retry-After``; a client that
disconnects (mid-stream or not) takes its sequences out of the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from llm.serve.chat import Message
from llm.serve.errors import EngineError, ParamError, QueueFull
from llm.serve.outputs import Completion
from llm.serve.params import SamplingParams
from services.api.completion_schemas import (
    ChatCompletionCreate,
    ChatCompletionPublic,
    CompletionCreate,
    CompletionFields,
    CompletionPublic,
    ModelEntry,
    ModelList,
    OpenAICompletionCreate,
    SamplingFields,
)
from services.api.deps import ServingDep, SessionDep
from services.api.openai_shapes import DONE, ChunkWriter, Head, chat_body, completion_body
from services.api.routes.prompts import templated
from services.api.routes.registry import visible
from services.api.validation import request_error
from services.auth import Principal, PrincipalDep
from services.serving import Loaded, Serving
from services.store import registry as store
from services.store.models import ArtifactCategory, Role

if TYPE_CHECKING:
    from llm.serve.engine import RequestHandle

router = APIRouter(tags=["completions"])
openai = APIRouter(prefix="/v1", tags=["openai"])
Loc = tuple[str | int, ...]

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or with stream: SSE"},
    404: {"description": "no such model (or another team's)"},
    429: {"description": "the model's queue is full: retry after Retry-After seconds"},
}


async def _open(
    session: Session, serving: Serving, who: Principal, model_id: str, loc: Loc
) -> Loaded:
    """The caller's model, loaded (once per process) off the event loop."""

    def lookup() -> Loaded:
        artifact = store.get_artifact(
            session, artifact_id=model_id, category=ArtifactCategory.model
        )
        if artifact is None or not visible(artifact, who):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_id} not found")
        try:
            return serving.engine_for(session, artifact)
        except (OSError, ValueError) as e:
            raise request_error(loc, f"model {model_id} cannot be served: {e}") from e

    return await run_in_threadpool(lookup)


def _fit(
    prompts: list[list[int]], max_tokens: int, context: int, truncate: bool
) -> list[list[int]]:
    """With truncate, each prompt keeps its last tokens that leave room for max_tokens."""
    if not truncate:
        return prompts
    room = context - max_tokens
    if room < 1:
        raise request_error(
            ("body", "max_tokens"),
            f"max_tokens {max_tokens} leaves no room for a prompt in the context of {context}",
        )
    return [p[-room:] for p in prompts]


def _params(
    body: SamplingFields, max_tokens: int, logprobs: int | None, echo: bool
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=body.stop_strings(),
        n=body.n,
        seed=body.seed,
        logprobs=logprobs,
        echo=echo,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        ignore_eos=body.ignore_eos,
    )


def _submit(
    loaded: Loaded,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    locs: Mapping[str, Loc],
) -> RequestHandle:
    try:
        return loaded.engine.submit(prompts, params, loop=asyncio.get_running_loop())
    except ParamError as e:
        raise request_error(locs.get(e.field, ("body", e.field)), e.message) from e
    except QueueFull as e:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"the model is busy: {e}; retry in {e.retry_after_s} s",
            headers={"Retry-After": str(e.retry_after_s)},
        ) from e
    except EngineError as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from e


async def _cancel_on_disconnect(request: Request, handle: RequestHandle) -> None:
    # the body is read: the next message the server sends is the client's disconnect
    while (await request.receive())["type"] != "http.disconnect":
        continue
    handle.cancel()


async def _collect(request: Request, handle: RequestHandle) -> Completion:
    done = Completion()
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
    try:
        async for delta in handle:
            done.add(delta)
    except EngineError as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from e
    finally:
        watcher.cancel()
        handle.cancel()
    done.usage = handle.usage
    return done


async def _events(
    handle: RequestHandle, writer: ChunkWriter, include_usage: bool
) -> AsyncIterator[str]:
    """SSE lines; a disconnect cancels this generator, and the finally takes the request's
    sequences out of the batch."""
    try:
        async for deltas in handle.batches():
            chunks = [c for c in map(writer.chunk, deltas) if c is not None]
            if chunks:
                yield "".join(chunks)
        if include_usage:
            yield writer.usage(handle.usage)
    except EngineError as e:
        yield writer.error(str(e))
    finally:
        handle.cancel()
    yield DONE


def _stream(handle: RequestHandle, writer: ChunkWriter, body: SamplingFields) -> StreamingResponse:
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return StreamingResponse(
        _events(handle, writer, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _completion_prompts(loaded: Loaded, body: CompletionFields) -> list[list[int]]:
    """The prompt(s) as token ids: text is tokenized, ids are taken as they are."""
    prompt = body.prompt
    if isinstance(prompt, str):
        return [loaded.served.encode(prompt)]
    prompts: list[list[int]] = []
    for item in prompt:
        if isinstance(item, int):  # one prompt of token ids
            return [[int(t) for t in prompt if isinstance(t, int)]]
        prompts.append(loaded.served.encode(item) if isinstance(item, str) else list(item))
    return prompts


async def _complete(
    request: Request, body: CompletionFields, loaded: Loaded, model_id: str
) -> StreamingResponse | CompletionPublic:
    vocab = loaded.served.model.config.vocab
    prompts = _completion_prompts(loaded, body)
    if any(t >= vocab for p in prompts for t in p):
        raise request_error(("body", "prompt"), f"token ids must be below the vocabulary ({vocab})")
    prompts = _fit(prompts, body.max_tokens, loaded.served.context, body.truncate)
    params = _params(body, body.max_tokens, body.logprobs, body.echo)
    handle = _submit(loaded, prompts, params, {})
    head = Head(model_id, logprobs=body.logprobs is not None, chat=False)
    if body.stream:
        return _stream(handle, ChunkWriter(head), body)
    return completion_body(await _collect(request, handle), head)


@router.post(
    "/models/{model_id}/completions",
    response_model=CompletionPublic,
    responses=RESPONSES,
    name="complete",
)
async def complete(
    model_id: str,
    body: CompletionCreate,
    request: Request,
    session: SessionDep,
    serving: ServingDep,
    who: PrincipalDep,
) -> StreamingResponse | CompletionPublic:
    """Complete a prompt with a registered model (OpenAI's completions body and answer)."""
    body = await templated(session, who, body)  # prompt_template: its text as the prompt
    loaded = await _open(session, serving, who, model_id, ("path", "model_id"))
    return await _complete(request, body, loaded, model_id)


@openai.post("/completions", response_model=CompletionPublic, responses=RESPONSES)
async def openai_complete(
    body: OpenAICompletionCreate,
    request: Request,
    session: SessionDep,
    serving: ServingDep,
    who: PrincipalDep,
) -> StreamingResponse | CompletionPublic:
    """OpenAI's ``/v1/completions``; ``model`` is a registered model's id."""
    body = await templated(session, who, body)
    loaded = await _open(session, serving, who, body.model, ("body", "model"))
    return await _complete(request, body, loaded, body.model)


@openai.post("/chat/completions", response_model=ChatCompletionPublic, responses=RESPONSES)
async def openai_chat(
    body: ChatCompletionCreate,
    request: Request,
    session: SessionDep,
    serving: ServingDep,
    who: PrincipalDep,
) -> StreamingResponse | ChatCompletionPublic:
    """OpenAI's ``/v1/chat/completions``: the messages in the model's chat template (its
    fine-tune's, or the tokenizer's, else the fine-tunes' default) and the reply."""
    body = await templated(session, who, body)  # prompt_template: its messages
    loaded = await _open(session, serving, who, body.model, ("body", "model"))
    # developer is OpenAI's newer name for the system role
    messages = [
        Message("system" if m.role == "developer" else m.role, m.text()) for m in body.messages
    ]
    try:
        prompt = loaded.served.chat_ids(messages)
    except ValueError as e:
        raise request_error(("body", "messages"), str(e)) from e
    context = loaded.served.context
    asked = body.max_completion_tokens or body.max_tokens
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    if body.truncate:
        prompt = _fit([prompt], asked or 1, context, True)[0]
    max_tokens = asked if asked is not None else max(context - len(prompt), 1)
    top = body.top_logprobs or 0
    params = _params(body, max_tokens, top if body.logprobs else None, False)
    locs = {
        "prompt": ("body", "messages"),
        "max_tokens": ("body", field),
        "logprobs": ("body", "top_logprobs"),
    }
    handle = _submit(loaded, [prompt], params, locs)
    head = Head(body.model, logprobs=body.logprobs, chat=True)
    if body.stream:
        return _stream(handle, ChunkWriter(head), body)
    return chat_body(await _collect(request, handle), head)


@openai.get("/models")
def openai_models(session: SessionDep, who: PrincipalDep) -> ModelList:
    """The models this key's team may prompt (OpenAI's model list)."""
    team = None if who.allowed(Role.admin) else who.team
    models = store.list_artifacts(session, category=ArtifactCategory.model, team=team, limit=1000)
    return ModelList(
        data=[
            ModelEntry(
                id=m.id,
                # the store keeps naive UTC
                created=int(m.created_at.replace(tzinfo=UTC).timestamp()),
                owned_by=m.team or "llmforge",
            )
            for m in models
        ]
    )
