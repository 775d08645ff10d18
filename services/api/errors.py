"""One error body for every 4xx and 5xx the API sends (``ErrorBody``: ``detail`` and a stable
``code``), and the OpenAPI document's account of them: every operation lists each status it can
answer with that body, so a generated client knows them all.

The statuses are declared here, by rule, rather than on each route: auth (401, 403, 429) where
an operation declares security, 404 where the path names a resource, 400 and 413 where there
is a body, 422 where there is any input; ``RAISES`` adds what particular routes raise beyond
those (409 conflicts, 502/503 from storage or Ray).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from services.api.completion_schemas import STREAM_EVENTS
from services.api.links import add_links
from services.api.log_stream import LogEnd, LogLine

log = logging.getLogger("llmforge.api")

# Stable, machine-readable: a client branches on these, never on the wording of ``detail``.
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    416: "range_not_satisfiable",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "storage_unavailable",
    503: "unavailable",
}


def code_for(status: int) -> str:
    return CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_")


class ValidationIssue(BaseModel):
    """One thing wrong with the request (as FastAPI and pydantic report it)."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int] = Field(description="where: body, query, path or header, then the field")
    msg: str = Field(description="what is wrong and what to give instead")
    type: str = Field(description="a stable name for the kind of error, e.g. missing")


class ErrorBody(BaseModel):
    """Every error the API answers with."""

    detail: str | list[ValidationIssue] = Field(
        description="what went wrong and what to do about it; for a 422, each invalid field"
    )
    code: str = Field(
        description="stable and machine-readable: "
        + ", ".join(f"{c} ({s})" for s, c in CODES.items()),
        examples=["not_found"],
    )


def error_response(
    status: int, detail: object, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"detail": jsonable_encoder(detail), "code": code_for(status)}, status, headers=headers
    )


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes on this path (Starlette's own 405 names the first
    route's only, though PUT and DELETE of one path are often two routes)."""
    allowed = [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


def _without_secrets(error: dict[str, Any]) -> dict[str, Any]:
    """A 422 repeats the input it refused: never one that may hold a credential (``s3://KEY:
    SECRET@bucket``). A cheap test: a regular expression over a large input would hold the
    event loop."""
    value = error.get("input")
    if (isinstance(value, str) and "@" in value) or "credentials" in error.get("msg", ""):
        return {**error, "input": None}
    return error


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return error_response(exc.status_code, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, [_without_secrets(e) for e in exc.errors()])

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error: the control plane's log has the details")

    document_errors(app)


# --- the OpenAPI document ------------------------------------------------------------------------

WHY = {
    400: "the body is not JSON (or not UTF-8)",
    401: "no valid API key (or job token), or the key expired",
    403: "this key's role may not do this",
    404: "no such resource visible to this key",
    409: "the resource's state does not allow this now",
    413: "the request body is over the size limit",
    422: "the request is invalid: detail names each field and what to give",
    429: "this key's request rate limit: retry after Retry-After seconds",
    502: "the artifact storage did not answer",
    503: "Ray (or the model server) did not answer; retry later",
}

# What routes raise beyond the rules: (method, path) -> statuses.
RAISES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/api/v1/jobs"): (409,),  # an Idempotency-Key reused with another body
    ("post", "/api/v1/jobs/{job_id}/cancel"): (409, 503),
    ("post", "/api/v1/jobs/{job_id}/retry"): (409,),
    ("get", "/api/v1/jobs/{job_id}/logs"): (409, 503),
    ("get", "/api/v1/jobs/{job_id}/artifacts"): (502,),
    ("post", "/api/v1/pipelines/{pipeline_id}/resume"): (409,),
    ("delete", "/api/v1/datasets/{artifact_id}"): (409, 502),
    ("delete", "/api/v1/models/{artifact_id}"): (409, 502),
    ("get", "/api/v1/ratings/campaigns/{campaign_id}/next"): (409,),
    ("post", "/api/v1/ratings/campaigns"): (404,),  # a model it names
    ("post", "/api/v1/ratings/campaigns/{campaign_id}/ratings"): (409,),
    ("post", "/api/v1/ratings/preferences"): (502,),
    ("post", "/api/v1/prompts"): (409,),
    ("put", "/api/v1/prompts/{ref}"): (409,),
    ("post", "/api/v1/keys/{key_id}/rotate"): (409,),
}


def _statuses(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    statuses = set(RAISES.get((method, path), ()))
    if operation.get("security"):
        statuses |= {401, 403, 429}
    if "{" in path:
        statuses.add(404)
    if "requestBody" in operation:
        statuses |= {400, 413, 422}
    if operation.get("parameters"):
        statuses.add(422)
    return statuses


def _generic(response: dict[str, Any]) -> bool:
    """A response without a body schema of its own (or FastAPI's 422 body): an ErrorBody."""
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    return schema is None or schema.get("$ref", "").endswith("/HTTPValidationError")


def _document(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    models: tuple[type[BaseModel], ...] = (ValidationIssue, ErrorBody, LogLine, LogEnd)
    for model in (*models, *STREAM_EVENTS):
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in found.pop("$defs", {}).items():  # the routes' own stay
            components.setdefault(name, nested)
        components[model.__name__] = found
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in _statuses(method, path, operation):
                responses.setdefault(str(status), {"description": WHY.get(status, "")})
            for status, response in responses.items():
                if status[0] in "45" and _generic(response):
                    response["content"] = body
                    response["description"] = response.get("description") or WHY.get(
                        int(status), ""
                    )
    return schema


def document_errors(app: FastAPI) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_links(_document(generate()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
