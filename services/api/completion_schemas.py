"""Request and response bodies of the completions routes, in OpenAI's shapes.

Requests forbid unknown fields (a misspelt ``temprature`` is a 422, not a silent default),
but accept the fields OpenAI clients commonly send. Beyond OpenAI's: ``top_k``,
``ignore_eos`` (as vLLM has them) and ``truncate`` (keep the prompt's last tokens that fit).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, JsonValue, model_validator

from services.api.schemas import Strict

Stop = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)]
    | None
)


class StreamOptions(Strict):
    include_usage: bool = Field(
        default=False, description="a last chunk, before [DONE], with the usage and no choices"
    )


class SamplingFields(Strict):
    temperature: float = Field(default=1.0, ge=0, le=2, description="0: greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, description="null: no top-k cut")
    n: int = Field(default=1, ge=1, le=16, description="choices per prompt")
    stop: Stop = Field(default=None, description="up to 4 strings that end a choice")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**62,
        description="choice i samples with seed + i: the same tokens, batched or alone",
    )
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    stream: bool = Field(default=False, description="server-sent events in OpenAI's chunks")
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256, description="accepted, not used")
    truncate: bool = Field(
        default=False,
        description="a prompt too long for the context keeps its last tokens that fit "
        "(default: a 422)",
    )
    ignore_eos: bool = Field(default=False, description="generate max_tokens even past EOS")

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


Prompt = (
    Annotated[str, Field(max_length=1_000_000)]
    | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    | Annotated[list[str], Field(min_length=1, max_length=16)]
    | Annotated[
        list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
        Field(min_length=1, max_length=16),
    ]
)


TemplateVariables = dict[Annotated[str, Field(max_length=100)], JsonValue]


class Templated(Strict):
    """A stored prompt template (``/api/v1/prompts``) and its variables, in place of the
    prompt (or the messages)."""

    prompt_template: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="a stored prompt template's id or name, rendered with variables, "
        "in place of prompt / messages",
    )
    variables: TemplateVariables | None = Field(
        default=None, description="the prompt_template's variables"
    )

    def _one_source(self, field: str) -> None:
        if (field in self.model_fields_set) == (self.prompt_template is not None):
            raise ValueError(f"give {field} or prompt_template (with variables): one of them")
        if self.variables is not None and self.prompt_template is None:
            raise ValueError("variables: give a prompt_template to render them with")


class AdapterBase(Strict):
    base: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="the base model (id or name) the model named must be a LoRA adapter of: "
        "a 422 when it is not",
    )


class CompletionFields(SamplingFields, Templated, AdapterBase):
    prompt: Prompt = Field(default="", description="text, token ids, or a list of either (a batch)")
    max_tokens: int = Field(default=16, ge=0, description="0 with echo: score the prompt")
    echo: bool = False
    logprobs: int | None = Field(
        default=None, ge=0, le=20, description="each token's logprob and this many alternatives"
    )

    @model_validator(mode="after")
    def _prompt_or_template(self) -> CompletionFields:
        self._one_source("prompt")
        return self


class CompletionCreate(CompletionFields):
    model: str | None = Field(default=None, max_length=64, description="ignored: the path names it")


class OpenAICompletionCreate(CompletionFields):
    model: str = Field(
        max_length=200, description="a registered model's id or name (its team's newest)"
    )


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionCreate(SamplingFields, Templated, AdapterBase):
    model: str = Field(
        max_length=200, description="a registered model's id or name (its team's newest)"
    )
    messages: list[ChatMessage] = Field(default_factory=list, max_length=1000)
    max_tokens: int | None = Field(default=None, ge=1, description="null: up to the context")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="max_tokens' new name"
    )
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _messages_or_template(self) -> ChatCompletionCreate:
        self._one_source("messages")
        if "messages" in self.model_fields_set and not self.messages:
            raise ValueError("messages: give at least one message")
        return self


class UsagePublic(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionPublic(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsagePublic | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionPublic(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsagePublic | None = None
    system_fingerprint: str | None = None


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


# --- stream chunks: what each ``data:`` line of a ``stream: true`` answer holds -------------
# (OpenAPI 3.1 has no per-event schema for text/event-stream: the completions routes document
# these as the stream's schema, one event each, and ``data: [DONE]`` ends the stream)


class CompletionChunk(CompletionPublic):
    """A completion stream's event, in the completion's own shape (as OpenAI's is): one
    choice's new text (and logprobs, and its finish), or, last, with ``choices`` empty, the
    usage (with ``stream_options.include_usage``)."""


class ChatDelta(BaseModel):
    """What a chat choice gained: the role with its first chunk, then content."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """A chat stream's event (OpenAI's ``chat.completion.chunk``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsagePublic | None = None


class StreamErrorDetail(BaseModel):
    message: str
    type: str


class StreamError(BaseModel):
    """A stream that failed after its 200 was sent ends with this event (then ``[DONE]``)."""

    error: StreamErrorDetail


STREAM_EVENTS: tuple[type[BaseModel], ...] = (
    CompletionChunk,
    ChatCompletionChunk,
    StreamError,
)
