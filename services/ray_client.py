"""Submitting, watching and stopping jobs through the Ray Jobs API, or, for the kinds that
``LLMFORGE_SUBMIT=rayjob`` gives to Kueue, as KubeRay RayJobs (services/kuberay.py): every caller
goes through ``RayJobs``, which sends a RayJob's id (``rayjob:<name>``) there."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from ray.job_submission import JobStatus, JobSubmissionClient

from services.kuberay import ID_PREFIX, Conflict, KubeRayJobs, rayjob_name, rayjob_state
from services.ray_auth import RayToken
from services.store.models import JobState

_STATES = {
    JobStatus.PENDING: JobState.pending,
    JobStatus.RUNNING: JobState.running,
    JobStatus.SUCCEEDED: JobState.succeeded,
    JobStatus.FAILED: JobState.failed,
    JobStatus.STOPPED: JobState.stopped,
}
AGENT_WAIT_S = 60
ERROR_LINE = re.compile(r"^LLMFORGE_ERROR: (.*)$", re.MULTILINE)


class LostJob(Exception):
    """Ray has no record of a submission the store thinks is pending or running."""


class AlreadySubmitted(Exception):
    """Ray already has a job under this submission id (submitted before, never recorded)."""

    def __init__(self, submission_id: str) -> None:
        super().__init__(submission_id)
        self.submission_id = submission_id  # as the store records it


class RayJobs:
    def __init__(
        self,
        dashboard_url: str,
        token: RayToken | None,
        gang: KubeRayJobs | None = None,
        public_url: str | None = None,
    ) -> None:
        self.dashboard_url = dashboard_url.rstrip("/")
        # Where a browser opens the dashboard (job links); the API's own address by default.
        self.public_url = (public_url or dashboard_url).rstrip("/")
        self.token = token
        # With LLMFORGE_SUBMIT=rayjob: where the kinds Kueue schedules go.
        self.gang = gang
        self._client: JobSubmissionClient | None = None

    def _gang(self, submission_id: str) -> KubeRayJobs | None:
        if not submission_id.startswith(ID_PREFIX):
            return None
        if self.gang is None:
            raise LostJob(f"lost: {submission_id} is a RayJob, and LLMFORGE_SUBMIT is not rayjob")
        return self.gang

    @property
    def client(self) -> JobSubmissionClient:
        if self._client is None:
            # The header is sent explicitly: the SDK only sends the token when RAY_AUTH_MODE was
            # "token" before ray was imported, which a server process cannot promise.
            headers = self.token.header if self.token else None
            self._client = JobSubmissionClient(self.dashboard_url, headers=headers)
        return self._client

    def submit(
        self,
        *,
        submission_id: str,
        entrypoint: str,
        env: dict[str, str],
        metadata: dict[str, str] | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_memory: int | None = None,
        kind: str | None = None,
        spec: dict[str, Any] | None = None,
    ) -> str:
        """Submit; ``metadata`` is shown beside the job in the Ray dashboard, and the driver's
        own resources (``entrypoint_*``) keep drivers from crowding the node they run on. A
        ``kind`` that the gang backend handles becomes a RayJob sized by its ``spec``."""
        if self.gang is not None and self.gang.handles(kind):
            assert kind is not None
            try:
                return self.gang.submit(
                    submission_id=submission_id,
                    kind=kind,
                    spec=spec or {},
                    entrypoint=entrypoint,
                    env=env,
                    metadata=metadata or {},
                    driver_cpus=entrypoint_num_cpus,
                )
            except Conflict as e:
                raise AlreadySubmitted(ID_PREFIX + rayjob_name(submission_id)) from e
        # A head that has just started can answer before its job agent registers; that refusal
        # is temporary, so it is retried for a while rather than failing the job.
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return self.client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission_id,
                    runtime_env={"env_vars": env},
                    metadata=metadata,
                    entrypoint_num_cpus=entrypoint_num_cpus,
                    entrypoint_memory=entrypoint_memory,
                )
            except RuntimeError as e:
                if "already exists" in str(e) and submission_id in str(e):
                    raise AlreadySubmitted(submission_id) from e
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def env_of(self, submission_id: str) -> dict[str, str]:
        """The environment a submitted job was given."""
        if gang := self._gang(submission_id):
            return gang.env_of(submission_id)
        runtime_env = self.client.get_job_info(submission_id).runtime_env or {}
        return dict(runtime_env.get("env_vars") or {})

    def state(self, submission_id: str) -> JobState:
        if gang := self._gang(submission_id):
            found = gang.status(submission_id)
            if found is None:
                raise LostJob(f"lost: {gang.where(submission_id, None)}")
            return rayjob_state(found)
        try:
            status = self.client.get_job_status(submission_id)
        except RuntimeError as e:
            if "status code 404" in str(e) or "does not exist" in str(e):
                raise LostJob(
                    f"lost: the Ray cluster does not know {submission_id} "
                    "(it was restarted or the job was deleted)"
                ) from e
            raise
        return _STATES[status]

    def logs(self, submission_id: str) -> str:
        if gang := self._gang(submission_id):
            return gang.logs(submission_id)
        return self.client.get_job_logs(submission_id)

    async def follow_logs(self, submission_id: str) -> AsyncIterator[str]:
        if gang := self._gang(submission_id):
            async for chunk in gang.follow_logs(submission_id):
                yield chunk
            return
        # Making the client connects to Ray, blocking: never on the event loop.
        client = await asyncio.to_thread(lambda: self.client)
        async for chunk in client.tail_job_logs(submission_id):
            yield chunk

    def failure_message(self, submission_id: str) -> str:
        """The job's own LLMFORGE_ERROR line, else Ray's message about it."""
        if gang := self._gang(submission_id):
            return gang.failure_message(submission_id, ERROR_LINE)
        found = ERROR_LINE.findall(self.logs(submission_id))
        if found:
            return str(found[-1]).strip()
        info = self.client.get_job_info(submission_id)
        return info.message or "job failed without a message; see its logs"

    def stop(self, submission_id: str) -> bool:
        if gang := self._gang(submission_id):
            return gang.stop(submission_id)
        return bool(self.client.stop_job(submission_id))

    def job_url(self, submission_id: str) -> str | None:
        if submission_id.startswith(ID_PREFIX):
            return None  # its dashboard is its own short-lived cluster's, inside Kubernetes
        return f"{self.public_url}/#/jobs/{submission_id}"

    def serve_applications(self) -> dict[str, Any]:
        """Ray Serve's applications on the cluster by name (the dashboard's Serve API): each
        with its status, message and deployments' replicas. Empty while Serve is not running."""
        headers = self.token.header if self.token else None
        r = httpx.get(f"{self.dashboard_url}/api/serve/applications/", headers=headers, timeout=10)
        r.raise_for_status()
        apps = r.json().get("applications") or {}
        return dict(apps)

    def healthy(self, timeout_s: float = 3.0) -> bool:
        """Whether the Jobs API answers (and accepts our token) within ``timeout_s``."""
        headers = self.token.header if self.token else None
        try:
            r = httpx.get(f"{self.dashboard_url}/api/version", headers=headers, timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return r.status_code == 200
