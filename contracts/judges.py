"""The judges an evaluate job scores generated completions with (``llm.eval.judge``).

A judge names its model by URI, declared ``Uri`` like every other input, so the control plane
checks it against the team's read roots on submit and the job checks it again.
"""

from __future__ import annotations

from typing import Literal

import jinja2
from pydantic import Field, model_validator

from contracts.spec_base import Spec, Uri


class JudgeSpec(Spec):
    """One judge; its scores are the task metric ``judge_<name>``."""

    model: Uri = Field(
        description="kind classifier: an llmforge classifier checkpoint, a classification "
        "fine-tune's output folder (its latest checkpoint) or a Hugging Face sequence-"
        "classification folder; kind loglik: any model the evaluation loads"
    )
    kind: Literal["classifier", "loglik"] = "classifier"
    name: str | None = Field(
        default=None,
        max_length=100,
        pattern=r"^[\w][\w.-]*$",
        description="the metric is judge_<name>; default: the model folder's name",
    )
    tokenizer: Uri | None = Field(
        default=None,
        description="the judge's tokenizer.json; default: one in the model folder or the two "
        "above it (a fine-tune output keeps one)",
    )
    labels: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="classifier: the labels that count as good; the score is their summed "
        "probability (a Hugging Face judge: one label, its logit); default: the label named "
        "good, positive, yes, correct or acceptable",
    )
    mode: Literal["mean_logprob", "yes_probability"] | None = Field(
        default=None, description="loglik only; default mean_logprob"
    )
    template: str | None = Field(
        default=None,
        max_length=10_000,
        description="Jinja2 of prompt and completion: the text the judge reads; default: "
        "prompt then completion",
    )
    batch_size: int = Field(default=16, gt=0, le=1024)

    @property
    def metric_name(self) -> str:
        """The name the judge's metric carries: its own, else the model folder's name."""
        return self.name or self.model.rstrip("/").rsplit("/", 1)[-1]

    @model_validator(mode="after")
    def _consistent(self) -> JudgeSpec:
        if self.kind == "classifier" and self.mode is not None:
            raise ValueError("mode applies to kind 'loglik' only")
        if self.kind == "loglik" and self.labels:
            raise ValueError("labels apply to kind 'classifier' only")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeat: {self.labels}")
        if self.template is not None:
            try:  # parse only: the job renders it, sandboxed
                jinja2.Environment().parse(self.template)
            except jinja2.TemplateSyntaxError as e:
                raise ValueError(f"template: {e}") from e
        return self


def check_judge_names(judges: list[JudgeSpec]) -> None:
    """Two judges with one metric name would overwrite each other's scores."""
    names = [j.metric_name for j in judges]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"judges: the metric names {repeated} repeat; give each judge a distinct name"
        )
