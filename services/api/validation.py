"""Turning a job kind's spec into its pydantic model, with 422s that name the exact field."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ray_jobs.specs import SPEC_TYPES, JobKind


def validate_spec(
    kind: JobKind, spec: dict[str, Any], loc: tuple[str | int, ...]
) -> dict[str, Any]:
    """The spec with defaults filled in, or a 422 whose ``loc`` points into the request body."""
    try:
        model = SPEC_TYPES[kind].model_validate(spec)
    except ValidationError as e:
        errors = [
            {**err, "loc": (*loc, *err["loc"]), "msg": f"{kind} spec: {err['msg']}"}
            for err in e.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from e
    return model.model_dump(mode="json")


def request_error(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": None}])
