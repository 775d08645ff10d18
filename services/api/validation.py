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
    dumped = model.model_dump(mode="json")
    check_uris(dumped, loc)
    return dumped


# Spec fields that name files or folders; their values must be plain paths, file:// or s3://.
URI_FIELDS = {"input", "output", "data", "checkpoint", "tokenizer"}
ALLOWED_SCHEMES = ("file://", "s3://")


def check_uris(spec: dict[str, Any], loc: tuple[str | int, ...]) -> None:
    """No ``..`` escapes and no unexpected schemes in the paths a job will read or write."""
    for field in sorted(URI_FIELDS & spec.keys()):
        value = spec[field]
        if not isinstance(value, str):
            continue
        if "://" in value and not value.startswith(ALLOWED_SCHEMES):
            raise request_error(
                (*loc, field), f"{value!r}: only plain paths, file:// and s3:// URIs are allowed"
            )
        if ".." in value.replace("\\", "/").split("/"):
            raise request_error(
                (*loc, field),
                f"{value!r}: '..' is not allowed in a path; "
                "give the path without parent references",
            )


def request_error(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": None}])
