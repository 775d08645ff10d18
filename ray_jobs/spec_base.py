"""The base of every job spec: unknown fields are rejected, so a typo is a 422 naming it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
