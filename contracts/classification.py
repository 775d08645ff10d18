"""The classification block of a finetune spec: a head on the pooled states instead of
instruction tuning (``llm.finetune.classify``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from contracts.spec_base import Spec

FieldName = Annotated[str, Field(min_length=1, max_length=200)]
Label = Annotated[str, Field(min_length=1, max_length=200)]
# the finetune fields that only instruction tuning reads
SFT_ONLY = (
    "format", "template", "chat_template", "fields", "train_on_prompt", "samples",
    "max_new_tokens",
)  # fmt: skip


class ClassificationSpec(Spec):
    """Records are JSON objects with a text, an optional second text and a label."""

    text_field: FieldName = "text"
    text_pair_field: FieldName | None = Field(
        default=None, description="a second text per record (a pair: premise and hypothesis…)"
    )
    label_field: FieldName = "label"
    labels: list[Label] | None = Field(
        default=None,
        min_length=2,
        max_length=10_000,
        description="the label names in id order; a record with another label is rejected; "
        "default: the labels found, sorted (integers numerically)",
    )
    pooling: Literal["mean", "first", "last"] | None = Field(
        default=None,
        description="how states become one vector: default mean for an encoder, the last "
        "token for a decoder; first (the [CLS] position) for encoders only",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ClassificationSpec:
        fields = [self.text_field, self.label_field, self.text_pair_field]
        named = [f for f in fields if f is not None]
        if len(set(named)) != len(named):
            raise ValueError(f"text_field, text_pair_field and label_field must differ: {named}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeat: {self.labels}")
        return self
