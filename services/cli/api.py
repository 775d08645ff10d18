"""A typed client of the REST API for its core resources: jobs, pipelines, datasets, models and
ratings. It is written on the OpenAPI document's own schemas (the pydantic models the control
plane publishes as ``components/schemas``; tests/services/test_client.py checks they are the
document's), so every answer the CLI reads is parsed against the contract, and an error is an
``ApiError`` carrying the document's ``ErrorBody``.

Request bodies are sent as given: the control plane validates them and says what to fix.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from services.api.errors import ErrorBody
from services.api.log_stream import MEDIA_TYPE as NDJSON
from services.api.log_stream import LogEnd, LogLine
from services.api.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    JobLogs,
    JobPublic,
    Leaderboard,
    LineagePublic,
    MetricsPublic,
    PipelinePublic,
    RatingPublic,
    RatingsPublic,
)

Model = TypeVar("Model", bound=BaseModel)
Category = Literal["datasets", "models"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}


class ApiError(Exception):
    """A 4xx or 5xx answer: ``error`` is its body (``detail`` and a stable ``code``)."""

    def __init__(self, status: int, error: ErrorBody) -> None:
        super().__init__(f"{status} {error.code}: {error.detail}")
        self.status, self.error = status, error


class Api:
    """One control plane, over an ``httpx.Client`` whose base URL and key are set."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def _call(self, model: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        r = self.http.request(method, path, **kwargs)
        if not r.is_success:
            raise ApiError(r.status_code, _error_body(r))
        return model.model_validate_json(r.content)

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


def _unexpected(what: str) -> ErrorBody:
    return ErrorBody(detail=f"the control plane sent {what}, not {NDJSON}", code="unexpected")


def _error_body(r: httpx.Response) -> ErrorBody:
    """The answer's ErrorBody; a proxy's page or an older server's body still becomes one."""
    try:
        return ErrorBody.model_validate_json(r.content)
    except ValueError:
        return ErrorBody(detail=r.text[:2000] or r.reason_phrase, code=f"http_{r.status_code}")
