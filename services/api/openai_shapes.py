"""Engine output (``llm.serve`` Deltas) -> OpenAI's completion and chat bodies and stream chunks.

A stream sends one chunk per delta that carries something (text, logprobs or the finish), and
the non-streaming body is the same deltas folded, so both give the same text.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llm.serve.outputs import Choice, Completion, Delta, TokenInfo, Usage
from services.api.completion_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionPublic,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionPublic,
    TopLogprob,
    UsagePublic,
)

DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class Head:
    """What every body or chunk of one response shares."""

    model: str
    logprobs: bool
    chat: bool
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            prefix = "chatcmpl" if self.chat else "cmpl"
            object.__setattr__(self, "id", f"{prefix}-{secrets.token_hex(12)}")


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def usage_public(usage: Usage | None) -> UsagePublic | None:
    if usage is None:
        return None
    return UsagePublic(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def completion_logprobs(tokens: Sequence[TokenInfo], offset: int = 0) -> CompletionLogprobs:
    """The legacy completions format; text_offset counts characters from ``offset``."""
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    return CompletionLogprobs(
        tokens=[t.text for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[dict(t.top) if t.logprob is not None else None for t in tokens],
        text_offset=offsets,
    )


def _top(text: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))


def chat_logprobs(tokens: Sequence[TokenInfo]) -> ChatLogprobs:
    content = [
        ChatTokenLogprob(
            token=t.text,
            logprob=t.logprob if t.logprob is not None else 0.0,
            bytes=list(t.text.encode()),
            top_logprobs=[_top(text, lp) for text, lp in t.top],
        )
        for t in tokens
    ]
    return ChatLogprobs(content=content)


def completion_body(done: Completion, head: Head) -> CompletionPublic:
    def choice(c: Choice) -> CompletionChoice:
        lp = completion_logprobs(c.tokens) if head.logprobs else None
        return CompletionChoice(
            index=c.index,
            text=c.text,
            logprobs=lp,
            finish_reason=c.finish_reason,  # type: ignore[arg-type]
        )

    return CompletionPublic(
        id=head.id,
        created=head.created,
        model=head.model,
        choices=[choice(c) for c in done.ordered()],
        usage=usage_public(done.usage),
    )


def chat_body(done: Completion, head: Head) -> ChatCompletionPublic:
    def choice(c: Choice) -> ChatChoice:
        return ChatChoice(
            index=c.index,
            message=AssistantMessage(content=c.text),
            logprobs=chat_logprobs(c.tokens) if head.logprobs else None,
            finish_reason=c.finish_reason,  # type: ignore[arg-type]
        )

    return ChatCompletionPublic(
        id=head.id,
        created=head.created,
        model=head.model,
        choices=[choice(c) for c in done.ordered()],
        usage=usage_public(done.usage),
    )


class ChunkWriter:
    """Stream chunks of one request, completion or chat, sharing id, created and model."""

    def __init__(self, head: Head) -> None:
        self.chat, self.logprobs = head.chat, head.logprobs
        self.head = {
            "id": head.id,
            "object": "chat.completion.chunk" if head.chat else "text_completion",
            "created": head.created,
            "model": head.model,
        }
        self.offsets: dict[int, int] = {}  # per choice: characters sent (text_offset)
        self.started: set[int] = set()  # chat choices whose role was sent

    def chunk(self, delta: Delta) -> str | None:
        """The delta's chunk, or None when it carries nothing a client would see."""
        scored = self.logprobs and any(t.logprob is not None for t in delta.tokens)
        if not delta.text and not scored and delta.finish_reason is None:
            return None
        choice = self._chat_choice(delta) if self.chat else self._text_choice(delta)
        return sse(self.head | {"choices": [choice]})

    def _text_choice(self, delta: Delta) -> dict[str, Any]:
        offset = self.offsets.get(delta.index, 0)
        self.offsets[delta.index] = offset + len(delta.text)
        lp = completion_logprobs(delta.tokens, offset).model_dump() if self.logprobs else None
        return {
            "index": delta.index,
            "text": delta.text,
            "logprobs": lp,
            "finish_reason": delta.finish_reason,
        }

    def _chat_choice(self, delta: Delta) -> dict[str, Any]:
        message: dict[str, Any] = {"content": delta.text} if delta.text else {}
        if delta.index not in self.started:
            self.started.add(delta.index)
            message = {"role": "assistant", "content": delta.text}
        lp = chat_logprobs(delta.tokens).model_dump() if self.logprobs else None
        return {
            "index": delta.index,
            "delta": message,
            "logprobs": lp,
            "finish_reason": delta.finish_reason,
        }

    def usage(self, usage: Usage | None) -> str:
        found = usage_public(usage)
        return sse(self.head | {"choices": [], "usage": found.model_dump() if found else None})

    def error(self, message: str) -> str:
        return sse({"error": {"message": message, "type": "server_error"}})
