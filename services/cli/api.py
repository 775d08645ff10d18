"""A typed client of the REST API: jobs, pipelines, datasets, models, ratings, rating campaigns,
prompt templates, API keys, teams, model deployments, streamed completions and file downloads
(what the CLI calls). It is written on the OpenAPI document's own schemas (the pydantic models
the control plane publishes as ``components/schemas``; tests/services/test_client.py checks
they are the document's), so every answer the CLI reads, each event of a completion stream
too, is parsed against the contract, and an error is an ``ApiError`` carrying the document's
``ErrorBody``.

Request bodies are sent as given: the control plane validates them and says what to fix.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from services.api.completion_schemas import ChatCompletionChunk, CompletionChunk, StreamError
from services.api.errors import ErrorBody
from services.api.log_stream import MEDIA_TYPE as NDJSON
from services.api.log_stream import LogEnd, LogLine
from services.api.prompt_schemas import (
    CampaignPublic,
    CampaignRatingPublic,
    CampaignsPublic,
    NextPair,
    PromptTemplatePublic,
    PromptTemplatesPublic,
    RenderedPublic,
)
from services.api.routes.audit import AuditPage
from services.api.routes.deployments import DeploymentPublic
from services.api.routes.keys import KeyCreated, KeyPublic, KeyRotated
from services.api.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    JobLogs,
    JobPublic,
    Leaderboard,
    LineagePublic,
    MetricsPublic,
    PipelinePublic,
    PreferenceExportPublic,
    RatingPublic,
    RatingsPublic,
    TeamPublic,
)

Model = TypeVar("Model", bound=BaseModel)
SSE = "text/event-stream"
_COMPLETION_EVENT: TypeAdapter[CompletionChunk | StreamError] = TypeAdapter(
    CompletionChunk | StreamError
)
_CHAT_EVENT: TypeAdapter[ChatCompletionChunk | StreamError] = TypeAdapter(
    ChatCompletionChunk | StreamError
)
Category = Literal["datasets", "models"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}


class ApiError(Exception):
    """A 4xx or 5xx answer: ``error`` is its body (``detail`` and a stable ``code``)."""

    def __init__(self, status: int, error: ErrorBody, headers: httpx.Headers | None = None) -> None:
        super().__init__(f"{status} {error.code}: {error.detail}")
        self.status, self.error = status, error
        self.headers = headers if headers is not None else httpx.Headers()


class Api:
    """One control plane, over an ``httpx.Client`` whose base URL and key are set."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def _call(self, model: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        return model.model_validate_json(self._send(method, path, **kwargs).content)

    def _call_list(self, model: type[Model], method: str, path: str, **kwargs: Any) -> list[Model]:
        items: TypeAdapter[list[Model]] = TypeAdapter(list[model])  # type: ignore[valid-type]
        return items.validate_json(self._send(method, path, **kwargs).content)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = self.http.request(method, path, **kwargs)
        if not r.is_success:
            raise ApiError(r.status_code, _error_body(r), r.headers)
        return r

    # --- jobs and pipelines -----------------------------------------------------------------

    def submit_job(self, body: dict[str, Any]) -> JobPublic:
        return self._call(JobPublic, "POST", "/api/v1/jobs", json=body)

    def job(self, job_id: str) -> JobPublic:
        return self._call(JobPublic, "GET", f"/api/v1/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> JobPublic:
        return self._call(JobPublic, "POST", f"/api/v1/jobs/{job_id}/cancel")

    def retry_job(self, job_id: str) -> JobPublic:
        return self._call(JobPublic, "POST", f"/api/v1/jobs/{job_id}/retry")

    def job_metrics(self, job_id: str, name: str | None = None) -> MetricsPublic:
        params = {"name": name} if name else {}
        return self._call(MetricsPublic, "GET", f"/api/v1/jobs/{job_id}/metrics", params=params)

    def job_logs(self, job_id: str) -> JobLogs:
        return self._call(JobLogs, "GET", f"/api/v1/jobs/{job_id}/logs")

    def follow_logs(self, job_id: str) -> Iterator[LogLine | LogEnd]:
        """The job's log as it is written (``?follow=true``, NDJSON): each line, then how the
        job ended. The request has no read timeout (a quiet job may write nothing for long)."""
        path, params = f"/api/v1/jobs/{job_id}/logs", {"follow": True}
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        with self.http.stream("GET", path, params=params, timeout=timeout) as r:
            if not r.is_success:
                r.read()
                raise ApiError(r.status_code, _error_body(r))
            kind = r.headers.get("content-type", "").split(";")[0].strip()
            if kind != NDJSON:
                raise ApiError(r.status_code, _unexpected(f"a {kind or 'untyped'} log stream"))
            for text in r.iter_lines():
                if text:
                    item = _log_item(text)
                    yield item
                    if isinstance(item, LogEnd):
                        return

    def run_pipeline(self, body: dict[str, Any]) -> PipelinePublic:
        return self._call(PipelinePublic, "POST", "/api/v1/pipelines", json=body)

    def pipeline(self, pipeline_id: str) -> PipelinePublic:
        return self._call(PipelinePublic, "GET", f"/api/v1/pipelines/{pipeline_id}")

    def run_ablation(self, body: Any) -> PipelinePublic:
        return self._call(PipelinePublic, "POST", "/api/v1/experiments/ablation", json=body)

    def resume_pipeline(self, pipeline_id: str) -> PipelinePublic:
        return self._call(PipelinePublic, "POST", f"/api/v1/pipelines/{pipeline_id}/resume")

    # --- datasets and models ----------------------------------------------------------------

    def register(self, category: Category, body: dict[str, Any]) -> ArtifactPublic:
        return self._call(ArtifactPublic, "POST", f"/api/v1/{category}", json=body)

    def artifacts(self, category: Category, **params: Any) -> ArtifactsPublic:
        params = {k: v for k, v in params.items() if v is not None}
        return self._call(ArtifactsPublic, "GET", f"/api/v1/{category}", params=params)

    def artifact(self, category: Category, artifact_id: str) -> ArtifactPublic:
        return self._call(ArtifactPublic, "GET", f"/api/v1/{category}/{artifact_id}")

    def lineage(self, category: Category, artifact_id: str) -> LineagePublic:
        return self._call(LineagePublic, "GET", f"/api/v1/{category}/{artifact_id}/lineage")

    def delete_artifact(
        self, category: Category, artifact_id: str, delete_files: bool = False
    ) -> ArtifactPublic:
        params = {"delete_files": True} if delete_files else {}
        path = f"/api/v1/{category}/{artifact_id}"
        return self._call(ArtifactPublic, "DELETE", path, params=params)

    # --- ratings ----------------------------------------------------------------------------

    def add_rating(self, body: dict[str, Any]) -> RatingPublic:
        return self._call(RatingPublic, "POST", "/api/v1/ratings", json=body)

    def ratings(self, **params: Any) -> RatingsPublic:
        params = {k: v for k, v in params.items() if v is not None}
        return self._call(RatingsPublic, "GET", "/api/v1/ratings", params=params)

    def leaderboard(self, **params: Any) -> Leaderboard:
        params = {k: v for k, v in params.items() if v is not None}
        return self._call(Leaderboard, "GET", "/api/v1/ratings/leaderboard", params=params)

    def export_preferences(self, body: dict[str, Any]) -> PreferenceExportPublic:
        path = "/api/v1/ratings/preferences"
        return self._call(PreferenceExportPublic, "POST", path, json=body)

    # --- rating campaigns -------------------------------------------------------------------

    def create_campaign(self, body: dict[str, Any]) -> CampaignPublic:
        return self._call(CampaignPublic, "POST", "/api/v1/ratings/campaigns", json=body)

    def campaigns(self) -> CampaignsPublic:
        return self._call(CampaignsPublic, "GET", "/api/v1/ratings/campaigns")

    def campaign(self, campaign_id: str) -> CampaignPublic:
        return self._call(CampaignPublic, "GET", f"/api/v1/ratings/campaigns/{campaign_id}")

    def next_pair(self, campaign_id: str) -> NextPair:
        return self._call(NextPair, "GET", f"/api/v1/ratings/campaigns/{campaign_id}/next")

    def rate_pair(self, campaign_id: str, body: dict[str, Any]) -> CampaignRatingPublic:
        path = f"/api/v1/ratings/campaigns/{campaign_id}/ratings"
        return self._call(CampaignRatingPublic, "POST", path, json=body)

    # --- prompt templates -------------------------------------------------------------------

    def templates(self) -> PromptTemplatesPublic:
        return self._call(PromptTemplatesPublic, "GET", "/api/v1/prompts")

    def template(self, ref: str) -> PromptTemplatePublic:
        return self._call(PromptTemplatePublic, "GET", f"/api/v1/prompts/{ref}")

    def create_template(self, body: Any) -> PromptTemplatePublic:
        return self._call(PromptTemplatePublic, "POST", "/api/v1/prompts", json=body)

    def replace_template(self, ref: str, body: Any) -> PromptTemplatePublic:
        return self._call(PromptTemplatePublic, "PUT", f"/api/v1/prompts/{ref}", json=body)

    def delete_template(self, ref: str) -> None:
        self._send("DELETE", f"/api/v1/prompts/{ref}")  # 204: no body

    def render_template(self, ref: str, variables: dict[str, str]) -> RenderedPublic:
        path, body = f"/api/v1/prompts/{ref}/render", {"variables": variables}
        return self._call(RenderedPublic, "POST", path, json=body)

    # --- API keys and teams -----------------------------------------------------------------

    def create_key(self, body: dict[str, Any]) -> KeyCreated:
        return self._call(KeyCreated, "POST", "/api/v1/keys", json=body)

    def keys(self) -> list[KeyPublic]:
        return self._call_list(KeyPublic, "GET", "/api/v1/keys")

    def revoke_key(self, key_id: str) -> KeyPublic:
        return self._call(KeyPublic, "DELETE", f"/api/v1/keys/{key_id}")

    def rotate_key(self, key_id: str, body: dict[str, Any]) -> KeyRotated:
        return self._call(KeyRotated, "POST", f"/api/v1/keys/{key_id}/rotate", json=body)

    def audit(self, **params: Any) -> AuditPage:
        params = {k: v for k, v in params.items() if v is not None}
        return self._call(AuditPage, "GET", "/api/v1/audit", params=params)

    def teams(self) -> list[TeamPublic]:
        return self._call_list(TeamPublic, "GET", "/api/v1/teams")

    def set_team_limit(self, team: str, max_running: int) -> TeamPublic:
        body = {"max_running": max_running}
        return self._call(TeamPublic, "PUT", f"/api/v1/teams/{team}/limit", json=body)

    def clear_team_limit(self, team: str) -> TeamPublic:
        return self._call(TeamPublic, "DELETE", f"/api/v1/teams/{team}/limit")

    # --- serving ----------------------------------------------------------------------------

    def deploy(self, model: str, spec: dict[str, Any]) -> DeploymentPublic:
        return self._call(DeploymentPublic, "POST", f"/api/v1/models/{model}/deploy", json=spec)

    def deployment(self, model: str) -> DeploymentPublic:
        return self._call(DeploymentPublic, "GET", f"/api/v1/models/{model}/deploy")

    def undeploy(self, model: str) -> DeploymentPublic:
        return self._call(DeploymentPublic, "DELETE", f"/api/v1/models/{model}/deploy")

    def stream_completion(self, model: str, body: dict[str, Any]) -> Iterator[CompletionChunk]:
        """A completion as its chunks arrive (``stream: true``)."""
        path = f"/api/v1/models/{model}/completions"
        yield from self._chunks(_COMPLETION_EVENT, path, body)

    def stream_chat(self, body: dict[str, Any]) -> Iterator[ChatCompletionChunk]:
        """A chat completion (``/v1/chat/completions``, ``stream: true``) as its chunks arrive."""
        yield from self._chunks(_CHAT_EVENT, "/v1/chat/completions", body)

    def _chunks(self, events: TypeAdapter[Any], path: str, body: dict[str, Any]) -> Iterator[Any]:
        """The server-sent events of a streamed completion, each parsed against the document's
        chunk schema; a StreamError event (the model failed after the 200) is an ApiError with
        status 200 and code ``stream_error``. No read timeout: a long prompt may take a while."""
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        body = body | {"stream": True}
        with self.http.stream("POST", path, json=body, timeout=timeout) as r:
            if not r.is_success:
                r.read()
                raise ApiError(r.status_code, _error_body(r), r.headers)
            kind = r.headers.get("content-type", "").split(";")[0].strip()
            if kind != SSE:
                raise ApiError(r.status_code, _unexpected(f"a {kind or 'untyped'} body", SSE))
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue  # blank separators, SSE comments
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    return
                event = events.validate_json(data)
                if isinstance(event, StreamError):
                    error = ErrorBody(detail=event.error.message, code="stream_error")
                    raise ApiError(r.status_code, error, r.headers)
                yield event

    # --- files ------------------------------------------------------------------------------

    @staticmethod
    def job_file(job_id: str, path: str) -> str:
        return f"/api/v1/jobs/{job_id}/artifacts/{quote(path)}"

    @staticmethod
    def artifact_file(category: Category, artifact_id: str, path: str) -> str:
        return f"/api/v1/{category}/{artifact_id}/files/{quote(path)}"

    @contextmanager
    def open_file(self, path: str, start: int = 0) -> Iterator[httpx.Response]:
        """A download (``job_file`` or ``artifact_file``) from byte ``start`` on (a ``Range``
        request, answered 206 with ``Content-Range``), streamed, with no read timeout; a 4xx or
        5xx (416: ``start`` is at or past the end) is an ApiError with the answer's headers."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        with self.http.stream("GET", path, headers=headers, timeout=timeout) as r:
            if not r.is_success:
                r.read()
                raise ApiError(r.status_code, _error_body(r), r.headers)
            yield r

    # --- waiting ----------------------------------------------------------------------------

    def wait(self, job: JobPublic | PipelinePublic, on_change: Any = None) -> Any:
        """Poll the job or pipeline until it ends; ``on_change(line)`` sees each new state."""
        last = ""
        while True:
            if isinstance(job, PipelinePublic):
                job = self.pipeline(job.id)
                line = " ".join([job.state, *(f"{j.stage}:{j.state}" for j in job.jobs)])
            else:
                job = self.job(job.id)
                line = job.state
            if job.state in TERMINAL:
                return job
            if line != last and on_change is not None:
                on_change(line)
                last = line
            time.sleep(1)


def _log_item(text: str) -> LogLine | LogEnd:
    """One NDJSON line of a followed log, parsed against the document's LogLine or LogEnd."""
    try:
        return LogLine.model_validate_json(text)
    except ValueError:
        return LogEnd.model_validate_json(text)


def _unexpected(what: str, expected: str = NDJSON) -> ErrorBody:
    return ErrorBody(detail=f"the control plane sent {what}, not {expected}", code="unexpected")


def _error_body(r: httpx.Response) -> ErrorBody:
    """The answer's ErrorBody; a proxy's page or an older server's body still becomes one."""
    try:
        return ErrorBody.model_validate_json(r.content)
    except ValueError:
        return ErrorBody(detail=r.text[:2000] or r.reason_phrase, code=f"http_{r.status_code}")
