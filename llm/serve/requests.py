"""A completion or chat request as the engine's input: the prompt(s) as token ids and the
sampling parameters, checked against the model (vocabulary, context). The control plane's routes
prepare a request this way for an engine in their process, and a Ray Serve replica of a deployed
model prepares the very same request (sent as ``llm.serve.wire`` JSON) for its own engine, so a
model answers alike wherever it runs. Errors are ParamErrors naming the request's field.

No torch here: the control plane builds these requests without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from llm.serve.chat import Message
from llm.serve.errors import ParamError
from llm.serve.params import SamplingParams

if TYPE_CHECKING:
    from llm.serve.model import ServedModel

# text, token ids, or a batch of either (OpenAI's completions prompt)
Prompt = str | list[int] | list[str] | list[list[int]]


@dataclass(frozen=True)
class CompletionRequest:
    prompt: Prompt
    params: SamplingParams
    truncate: bool = False  # a prompt too long keeps its last tokens that leave max_tokens room


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    params: SamplingParams  # its max_tokens is replaced by max_tokens, or by the room left
    max_tokens: int | None = None  # None: up to the model's context
    truncate: bool = False


Request = CompletionRequest | ChatRequest


def _fit(prompts: list[list[int]], max_tokens: int, context: int) -> list[list[int]]:
    """Each prompt's last tokens that leave room for max_tokens."""
    room = context - max_tokens
    if room < 1:
        raise ParamError(
            "max_tokens",
            f"max_tokens {max_tokens} leaves no room for a prompt in the context of {context}",
        )
    return [p[-room:] for p in prompts]


def _completion_prompts(served: ServedModel, prompt: Prompt) -> list[list[int]]:
    """The prompt(s) as token ids: text is tokenized, ids are taken as they are."""
    if isinstance(prompt, str):
        return [served.encode(prompt)]
    prompts: list[list[int]] = []
    for item in prompt:
        if isinstance(item, int):  # one prompt of token ids
            return [[int(t) for t in prompt if isinstance(t, int)]]
        prompts.append(served.encode(item) if isinstance(item, str) else list(item))
    return prompts


def prepare(served: ServedModel, request: Request) -> tuple[list[list[int]], SamplingParams]:
    """The request's prompts as token ids and its parameters, ready for ``Engine.submit``."""
    context = served.context
    if isinstance(request, CompletionRequest):
        vocab = served.model.config.vocab
        prompts = _completion_prompts(served, request.prompt)
        if any(t >= vocab for p in prompts for t in p):
            raise ParamError("prompt", f"token ids must be below the vocabulary ({vocab})")
        if request.truncate:
            prompts = _fit(prompts, request.params.max_tokens, context)
        return prompts, request.params
    try:
        prompt = served.chat_ids(request.messages)
    except ValueError as e:
        raise ParamError("messages", str(e)) from e
    if request.truncate:
        prompt = _fit([prompt], request.max_tokens or 1, context)[0]
    max_tokens = request.max_tokens
    if max_tokens is None:
        max_tokens = max(context - len(prompt), 1)
    return [prompt], replace(request.params, max_tokens=max_tokens)
