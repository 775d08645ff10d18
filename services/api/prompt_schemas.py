"""Request and response bodies of the prompt templates (``/api/v1/prompts``) and the rating
campaigns (``/api/v1/ratings/campaigns``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, JsonValue, model_validator

from services.api.completion_schemas import Stop
from services.api.schemas import Strict

TemplateName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="unique in the team: letters, digits, '.', '_', '-'",
    ),
]
VariableName = Annotated[str, Field(max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Variables = dict[Annotated[str, Field(max_length=100)], JsonValue]
TemplateRef = Annotated[
    str, Field(min_length=1, max_length=100, description="a stored prompt template's id or name")
]


class ExampleBody(Strict):
    """A few-shot example: its ``input`` as text, or ``variables`` rendered through the
    template; ``output`` is the answer shown after it, verbatim."""

    input: str | None = Field(default=None, max_length=100_000)
    variables: dict[VariableName, JsonValue] | None = None
    output: str = Field(max_length=100_000)

    @model_validator(mode="after")
    def _one_input(self) -> ExampleBody:
        if (self.input is None) == (self.variables is None):
            raise ValueError("give the example's input (text) or its variables, not both")
        return self


class PromptTemplateCreate(Strict):
    name: TemplateName
    template: str = Field(
        min_length=1, max_length=100_000, description="Jinja2: the query, with {{ variables }}"
    )
    system: str | None = Field(
        default=None, max_length=100_000, description="Jinja2: a system message before all"
    )
    examples: list[ExampleBody] = Field(
        default_factory=list, max_length=100, description="few-shot examples before the query"
    )
    variables: list[VariableName] | None = Field(
        default=None,
        max_length=100,
        description="the declared variables (default: those the template and system read); "
        "each one without a default must be given when rendering",
    )
    defaults: dict[VariableName, JsonValue] = Field(default_factory=dict)
    fewshot_delimiter: str = Field(default="\n\n", max_length=100, description="between shots")
    target_delimiter: str = Field(default=" ", max_length=100, description="input → output")
    description: str | None = Field(default=None, max_length=10_000)


class PromptTemplatePublic(BaseModel):
    id: str
    name: str
    team: str
    owner: str | None
    version: int = Field(description="1 at creation, +1 at each PUT")
    description: str | None
    template: str
    system: str | None
    examples: list[dict[str, JsonValue]]
    variables: list[str]
    declared: bool = Field(description="the variables were declared (else read off the source)")
    defaults: dict[str, JsonValue]
    fewshot_delimiter: str
    target_delimiter: str
    created_at: datetime
    updated_at: datetime


class PromptTemplatesPublic(BaseModel):
    data: list[PromptTemplatePublic]
    count: int


class RenderRequest(Strict):
    variables: Variables = Field(default_factory=dict)


class ChatMessagePublic(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class RenderedPublic(BaseModel):
    template: str = Field(description="the template's id")
    name: str
    version: int
    text: str = Field(description="the prompt for /completions")
    messages: list[ChatMessagePublic] = Field(description="the same for /chat/completions")


# --- rating campaigns ---------------------------------------------------------------------------


class CampaignSampling(Strict):
    max_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.7, ge=0, le=2, description="0: greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    stop: Stop = Field(default=None, description="up to 4 strings that end a completion")
    truncate: bool = Field(
        default=False, description="a prompt too long keeps its last tokens (else it fails)"
    )


MAX_CAMPAIGN_PROMPTS = 1000


class CampaignCreate(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    models: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=2, max_length=8, description="two or more registered models' ids"
    )
    prompts: list[Annotated[str, Field(min_length=1, max_length=100_000)]] = Field(
        default_factory=list, max_length=MAX_CAMPAIGN_PROMPTS, description="prompts as text"
    )
    prompt_template: TemplateRef | None = Field(
        default=None, description="and/or a stored template, rendered with each of variables"
    )
    variables: list[Variables] | None = Field(
        default=None,
        max_length=MAX_CAMPAIGN_PROMPTS,
        description="one prompt per set (default with a template: one, with its defaults)",
    )
    chat: bool = Field(
        default=False, description="prompt each model through its chat template (as messages)"
    )
    sampling: CampaignSampling = Field(default_factory=CampaignSampling)
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1, description="sampling, left/right sides and pair order"
    )
    task: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="the task of the ratings it makes (default campaign-<id>): "
        "the leaderboard's and the preferences' task filter",
    )
    ratings_per_pair: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="a pair leaves the pool with this many ratings (default: every rater "
        "may rate every pair, once)",
    )

    @model_validator(mode="after")
    def _prompt_set(self) -> CampaignCreate:
        if len(set(self.models)) != len(self.models):
            raise ValueError("models: a model is named twice")
        if self.variables is not None and self.prompt_template is None:
            raise ValueError("variables: give a prompt_template to render them with")
        if not self.prompts and self.prompt_template is None:
            raise ValueError("give prompts, or a prompt_template (with variables), or both")
        sets = len(self.variables) if self.variables is not None else 1
        total = len(self.prompts) + (sets if self.prompt_template is not None else 0)
        if total > MAX_CAMPAIGN_PROMPTS:
            raise ValueError(f"{total} prompts: a campaign holds at most {MAX_CAMPAIGN_PROMPTS}")
        return self


class CampaignProgress(BaseModel):
    completions: int = Field(description="models x prompts")
    completions_done: int
    completions_failed: int
    pairs: int = Field(description="prompts x model pairs that both completed it")
    pairs_rated: int = Field(description="pairs with at least one rating")
    pairs_complete: int | None = Field(default=None, description="with ratings_per_pair")
    ratings: int
    yours: int = Field(description="ratings by the calling key")
    left_for_you: int = Field(description="pairs the calling key may still rate")


class CampaignError(BaseModel):
    model: str
    prompts: list[int] | None = Field(description="the prompts' indexes; null: all of them")
    error: str


class CampaignPublic(BaseModel):
    id: str
    name: str | None
    team: str
    owner: str | None
    state: Literal["generating", "open", "failed"]
    models: list[str]
    prompt_template: str | None
    template_version: int | None
    sampling: dict[str, JsonValue]
    chat: bool
    seed: int
    task: str
    ratings_per_pair: int | None
    prompts: int
    errors: list[CampaignError]
    message: str | None
    progress: CampaignProgress
    created_at: datetime
    generated_at: datetime | None


class CampaignsPublic(BaseModel):
    data: list[CampaignPublic]
    count: int
    next_cursor: str | None = None


class BlindPair(BaseModel):
    """Two completions of one prompt, the models not named; sides are the campaign's shuffle."""

    id: str
    prompt: str
    messages: list[ChatMessagePublic] | None = Field(description="the prompt as chat, if chat")
    left: str
    right: str


class NextPair(BaseModel):
    campaign: str
    state: str
    pair: BlindPair | None = Field(description="null: nothing left for this key to rate")
    progress: CampaignProgress


class CampaignRatingCreate(Strict):
    pair_id: str = Field(min_length=1, max_length=32)
    verdict: Literal["left", "right", "tie"]


class CampaignRatingPublic(BaseModel):
    rating: str = Field(description="the stored rating's id")
    pair_id: str
    verdict: str
    progress: CampaignProgress
