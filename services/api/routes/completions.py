"""Completions of registered models: ``POST /api/v1/models/{id}/completions`` and the
OpenAI-compatible ``POST /v1/completions``, ``POST /v1/chat/completions`` and ``GET /v1/models``.

The model runs in this process (``services.serving``): concurrent requests to one model share
its continuous-batching engine. A model deployed on the cluster (``services.deployments``) runs
in its Ray Serve replicas instead, which get the same prepared request and answer the same
deltas, shaped here alike; while its deployment is not running (starting, or failed: with its
reason) it answers 503 with ``Retry-After``, until it is undeployed. Same keys and team scoping
as the registry: a model another team registered is a 404. A model is named by its id or name
(its team's newest); a LoRA adapter is served as its base with the adapter applied (by the
replicas of its base's deployment where its base is deployed and it is not), and a request that
names a ``base`` gets it only from an adapter made on that base (422 otherwise).
A full queue is a 429 with ``Retry-After``; a client that disconnects (mid-stream or not) takes
its sequences out of the batch. The store session is closed once the model is found: a stream
holds no database connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from llm.serve.chat import Message
from llm.serve.errors import EngineError, ParamError, QueueFull
from llm.serve.outputs import Completion
from llm.serve.params import SamplingParams
from llm.serve.requests import ChatRequest, CompletionRequest, Prompt, prepare
from llm.serve.requests import Request as ServeRequest
from llm.serve.wire import AdapterRef
from services.api.completion_schemas import (
    ChatCompletionChunk,
    ChatCompletionCreate,
    ChatCompletionPublic,
    CompletionChunk,
    CompletionCreate,
    CompletionFields,
    CompletionPublic,
    ModelEntry,
    ModelList,
    OpenAICompletionCreate,
    SamplingFields,
    StreamError,
)
from services.api.deps import DeploymentsDep, ServingDep, SessionDep, SessionsDep
from services.api.openai_shapes import DONE, ChunkWriter, Head, chat_body, completion_body
from services.api.routes.prompts import Body, templated
from services.api.routes.registry import find_visible
from services.api.validation import request_error
from services.auth import Principal, PrincipalDep
from services.deployments import RETRY_AFTER_S, Deployments, RemoteHandle, Unavailable
from services.serving import (
    ADAPTER_KIND,
    Loaded,
    ModelSource,
    Serving,
    chat_template,
    source_of,
    tokenizer_uri,
)
from services.store import registry as store
from services.store.models import Artifact, ArtifactCategory, Deployment, DeploymentState, Role

if TYPE_CHECKING:
    from llm.serve.engine import RequestHandle

    # what a request's deltas come from: an engine here, or a deployment's stream
    Stream = RequestHandle | RemoteHandle

router = APIRouter(tags=["completions"])
openai = APIRouter(prefix="/v1", tags=["openai"])
Loc = tuple[str | int, ...]


def _responses(chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The 200 is JSON, or with ``stream: true`` server-sent events: each ``data:`` line holds
    one ``chunk`` (or, from a stream that failed after its 200, one StreamError), and
    ``data: [DONE]`` ends it. The event schemas are components of their own
    (``services.api.errors`` adds them); OpenAPI 3.1 has no per-event schema for a stream."""
    each = {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in (chunk, StreamError)]}
    return {
        200: {
            "content": {"text/event-stream": {"schema": each}},
            "description": f"JSON, or with stream: SSE, one {chunk.__name__} a data: line, then "
            "data: [DONE]",
        },
        404: {"description": "no such model (or another team's)"},
        429: {"description": "the model's queue is full: retry after Retry-After seconds"},
        503: {"description": "its deployment is not running (yet): retry after Retry-After"},
    }


RESPONSES = _responses(CompletionChunk)
CHAT_RESPONSES = _responses(ChatCompletionChunk)


class Local:
    """A model served by an engine in this process."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded

    async def submit(self, request: ServeRequest) -> Stream:
        prompts, params = prepare(self.loaded.served, request)
        return self.loaded.engine.submit(prompts, params, loop=asyncio.get_running_loop())


class Remote:
    """A model served by its Ray Serve deployment, or an adapter by its base's."""

    def __init__(
        self,
        deployments: Deployments,
        deployment: Deployment,
        adapter: AdapterRef | None = None,
        loc: Loc = ("body", "model"),
    ) -> None:
        self.deployments, self.deployment = deployments, deployment
        self.adapter, self.loc = adapter, loc

    async def submit(self, request: ServeRequest) -> Stream:
        return await self.deployments.open(self.deployment, request, self.adapter)


Target = Local | Remote
# a model whose deployment is in these states (or that has none) is served in this process
_IN_PROCESS = (DeploymentState.undeploying, DeploymentState.undeployed)


def _deployed(session: Session, model_id: str) -> Deployment | None:
    """The model's deployment where requests go to the cluster (None: served here)."""
    deployment = session.get(Deployment, model_id)
    if deployment is None or deployment.state in _IN_PROCESS:
        return None
    return deployment


def _check_base(session: Session, who: Principal, model: Artifact, base_ref: str | None) -> None:
    """A request that names a base serves only an adapter made on that base (422 otherwise)."""
    if base_ref is None:
        return
    if model.kind != ADAPTER_KIND:
        raise request_error(
            ("body", "base"),
            f"model {model.id} is a {model.kind}, not a LoRA adapter: leave out base",
        )
    base = find_visible(session, who, base_ref, ArtifactCategory.model)
    if base is None:
        raise request_error(("body", "base"), f"base model {base_ref} not found")
    if base.id != model.parent_id:
        raise request_error(
            ("body", "base"),
            f"the adapter {model.id} ({model.name}) was made on the base model "
            f"{model.parent_id}, not on {base.id} ({base.name}): name its own base, or none",
        )


async def _open(
    sessions: sessionmaker[Session],
    serving: Serving,
    deployments: Deployments,
    who: Principal,
    model_ref: str,
    loc: Loc,
    base_ref: str | None = None,
) -> Target:
    """The caller's model (by id or name): its deployment, or loaded (once per process), in one
    hop off the event loop. The store session is closed before the model loads: neither a load
    nor the stream that follows holds a connection."""

    def lookup() -> Target:
        with sessions() as session:
            found = find(session)
        if isinstance(found, ModelSource):
            try:
                return Local(serving.engine_for(found))
            except (OSError, ValueError) as e:
                raise request_error(loc, f"model {model_ref} cannot be served: {e}") from e
        return found

    def find(session: Session) -> Target | ModelSource:
        artifact = find_visible(session, who, model_ref, ArtifactCategory.model)
        if artifact is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_ref} not found")
        _check_base(session, who, artifact, base_ref)
        deployment = _deployed(session, artifact.id)
        if deployment is not None:
            return remote(session, deployment, None)
        if artifact.kind == ADAPTER_KIND and artifact.parent_id:
            # an adapter without a deployment of its own runs on its base's replicas
            deployment = _deployed(session, artifact.parent_id)
            if deployment is not None:
                adapter = AdapterRef(
                    artifact.id,
                    artifact.uri,
                    tokenizer_uri(session, artifact),
                    chat_template(session, artifact),
                )
                return remote(session, deployment, adapter)
        return source_of(session, artifact)

    def remote(session: Session, deployment: Deployment, adapter: AdapterRef | None) -> Remote:
        if deployment.state != DeploymentState.running:
            deployment = deployments.refresh(session, deployment)
        if deployment.state not in (DeploymentState.running, DeploymentState.unhealthy):
            why = f": {deployment.message}" if deployment.message else ""
            whose = f"its base model {deployment.model_id}" if adapter else f"model {model_ref}"
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"{whose} is deployed on the cluster, and its deployment is "
                f"{deployment.state}{why}",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return Remote(deployments, deployment, adapter, loc)

    return await run_in_threadpool(lookup)


async def _templated(sessions: sessionmaker[Session], who: Principal, body: Body) -> Body:
    if body.prompt_template is None:
        return body
    with sessions() as session:
        return await templated(session, who, body)


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


async def _submit(target: Target, request: ServeRequest, locs: Mapping[str, Loc]) -> Stream:
    if isinstance(target, Remote):  # a replica that refuses the adapter refuses the model named
        locs = {"adapter": target.loc, **locs}
    try:
        return await target.submit(request)
    except ParamError as e:
        raise request_error(locs.get(e.field, ("body", e.field)), e.message) from e
    except QueueFull as e:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"the model is busy: {e}; retry in {e.retry_after_s} s",
            headers={"Retry-After": str(e.retry_after_s)},
        ) from e
    except Unavailable as e:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            str(e),
            headers={"Retry-After": str(e.retry_after_s)},
        ) from e
    except EngineError as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from e


async def _cancel_on_disconnect(request: Request, handle: Stream) -> None:
    # the body is read: the next message the server sends is the client's disconnect
    while (await request.receive())["type"] != "http.disconnect":
        continue
    handle.cancel()


async def _collect(request: Request, handle: Stream) -> Completion:
    done = Completion()
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
    try:
        async for deltas in handle.batches():
            for delta in deltas:
                done.add(delta)
    except EngineError as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from e
    finally:
        watcher.cancel()
        handle.cancel()
    done.usage = handle.usage
    return done


async def _events(handle: Stream, writer: ChunkWriter, include_usage: bool) -> AsyncIterator[str]:
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


def _stream(handle: Stream, writer: ChunkWriter, body: SamplingFields) -> StreamingResponse:
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return StreamingResponse(
        _events(handle, writer, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _complete(
    request: Request, body: CompletionFields, target: Target, model_id: str
) -> StreamingResponse | CompletionPublic:
    params = _params(body, body.max_tokens, body.logprobs, body.echo)
    prompt = cast(Prompt, body.prompt)
    handle = await _submit(target, CompletionRequest(prompt, params, body.truncate), {})
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
    sessions: SessionsDep,
    serving: ServingDep,
    deployments: DeploymentsDep,
    who: PrincipalDep,
) -> StreamingResponse | CompletionPublic:
    """Complete a prompt with a registered model (OpenAI's completions body and answer)."""
    body = await _templated(sessions, who, body)  # prompt_template: its text as the prompt
    target = await _open(
        sessions, serving, deployments, who, model_id, ("path", "model_id"), body.base
    )
    return await _complete(request, body, target, model_id)


@openai.post("/completions", response_model=CompletionPublic, responses=RESPONSES)
async def openai_complete(
    body: OpenAICompletionCreate,
    request: Request,
    sessions: SessionsDep,
    serving: ServingDep,
    deployments: DeploymentsDep,
    who: PrincipalDep,
) -> StreamingResponse | CompletionPublic:
    """OpenAI's ``/v1/completions``; ``model`` is a registered model's id."""
    body = await _templated(sessions, who, body)
    target = await _open(
        sessions, serving, deployments, who, body.model, ("body", "model"), body.base
    )
    return await _complete(request, body, target, body.model)


@openai.post("/chat/completions", response_model=ChatCompletionPublic, responses=CHAT_RESPONSES)
async def openai_chat(
    body: ChatCompletionCreate,
    request: Request,
    sessions: SessionsDep,
    serving: ServingDep,
    deployments: DeploymentsDep,
    who: PrincipalDep,
) -> StreamingResponse | ChatCompletionPublic:
    """OpenAI's ``/v1/chat/completions``: the messages in the model's chat template (its
    fine-tune's, or the tokenizer's, else the fine-tunes' default) and the reply."""
    body = await _templated(sessions, who, body)  # prompt_template: its messages
    target = await _open(
        sessions, serving, deployments, who, body.model, ("body", "model"), body.base
    )
    # developer is OpenAI's newer name for the system role
    messages = tuple(
        Message("system" if m.role == "developer" else m.role, m.text()) for m in body.messages
    )
    asked = body.max_completion_tokens or body.max_tokens
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    top = body.top_logprobs or 0
    # max_tokens 0 stands in: the request's own (asked, or the room its prompt leaves) replaces it
    params = _params(body, 0, top if body.logprobs else None, False)
    locs = {
        "prompt": ("body", "messages"),
        "max_tokens": ("body", field),
        "logprobs": ("body", "top_logprobs"),
    }
    chat = ChatRequest(messages, params, asked, body.truncate)
    handle = await _submit(target, chat, locs)
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
