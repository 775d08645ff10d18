"""Turning a job kind's spec into its pydantic model, with 422s that name the exact field."""

from __future__ import annotations

import math
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from contracts.jobs import JOB_TYPES, JobKind
from llm import storage

RESULT_FILE = "result.json"  # a finished job's completion marker (ray_jobs.entrypoint)


def validate_spec(
    kind: JobKind, spec: dict[str, Any], loc: tuple[str | int, ...]
) -> dict[str, Any]:
    """The spec with defaults filled in, or a 422 whose ``loc`` points into the request body."""
    try:
        model = JOB_TYPES[kind].spec.model_validate(spec)
    except ValidationError as e:
        errors = [
            {**err, "loc": (*loc, *err["loc"]), "msg": f"{kind} spec: {err['msg']}"}
            for err in e.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from e
    reject_non_finite(model.model_dump(), loc)
    dumped = model.model_dump(mode="json")
    check_uris(dumped, JOB_TYPES[kind].uri_fields, loc)
    return dumped


def reject_non_finite(value: Any, loc: tuple[str | int, ...]) -> None:
    """NaN and Infinity (which Python's json writes) would be stored and shown as null: say so
    instead, naming the field."""
    if isinstance(value, float) and not math.isfinite(value):
        raise request_error(loc, f"{value} is not a number this API stores: give a finite value")
    if isinstance(value, dict):
        for key, item in value.items():
            reject_non_finite(item, (*loc, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            reject_non_finite(item, (*loc, index))


ALLOWED_SCHEMES = ("file://", "s3://")


def check_uris(spec: dict[str, Any], fields: tuple[str, ...], loc: tuple[str | int, ...]) -> None:
    """No ``..`` escapes and no unexpected schemes in the paths a job will read or write (the
    spec's ``Uri`` fields)."""
    for field in sorted(set(fields) & spec.keys()):
        for where, value in _named(spec[field], (*loc, field)):
            check_uri(value, where)


def _named(value: Any, loc: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    """The strings a URI field holds: itself, or those of a list or name -> URI mapping (a
    tokenize job's inputs)."""
    if isinstance(value, str):
        return [(loc, value)]
    items = value.items() if isinstance(value, dict) else enumerate(value or ())
    return [((*loc, key), item) for key, item in items if isinstance(item, str)]


def check_uri(value: str, loc: tuple[str | int, ...]) -> None:
    """A plain path, file:// or s3:// URI without ``..`` and without credentials in it."""
    if "://" in value and not value.startswith(ALLOWED_SCHEMES):
        raise request_error(loc, f"{value!r}: only plain paths, file:// and s3:// URIs are allowed")
    if ".." in value.replace("\\", "/").split("/"):
        raise request_error(
            loc,
            f"{value!r}: '..' is not allowed in a path; give the path without parent references",
        )
    if value.startswith("s3://") and "@" in value.removeprefix("s3://").split("/", 1)[0]:
        # s3://KEY:SECRET@bucket would be stored, shown by the API and put in Ray's job env.
        raise request_error(
            loc,
            "credentials are not allowed in URIs: give s3://bucket/prefix; keys come from the "
            "cluster's environment (AWS_* variables, instance or workload identity)",
        )


def check_storage(kind: JobKind, spec: dict[str, Any], loc: tuple[str | int, ...]) -> None:
    """What can be known before Ray starts work: every s3:// URI's bucket exists and answers
    with the cluster's credentials, and the output does not hold a finished job's results (a
    later job would overwrite them, or be mistaken for them); then what the inputs show to be
    wrong with the spec (a mixture naming a source its data lacks). Placeholders are checked
    once the scheduler has resolved them."""
    for field in sorted(set(JOB_TYPES[kind].uri_fields) & spec.keys()):
        for where, value in _named(spec[field], (*loc, field)):
            if "${" in value:
                continue
            try:
                storage.check_access(value)
                finished = field == "output" and storage.is_file(storage.join(value, RESULT_FILE))
            except OSError as e:
                raise request_error(where, f"{value!r}: {e}") from e
            if finished:
                raise request_error(
                    where,
                    f"{value!r} already holds the results of a finished job ({RESULT_FILE}): "
                    "give a new output, or delete that job's outputs first",
                )
    errors = JOB_TYPES[kind].spec.input_errors(spec)
    if errors:
        where, message = errors[0]
        raise request_error((*loc, *where), f"{kind} spec: {message}")


def request_error(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": None}])
