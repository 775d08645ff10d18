"""Training-like jobs as KubeRay ``RayJob`` resources, so that Kueue admits them whole.

With ``LLMFORGE_SUBMIT=rayjob`` (services/settings.py) a job of a kind in ``rayjob_kinds`` is not
handed to the shared cluster's Jobs API: it becomes a ``RayJob`` that brings its own fixed-size
Ray cluster (a head and the job's workers), is labelled ``kueue.x-k8s.io/queue-name`` and created
suspended. Kueue admits it when the whole cluster fits the team's quota (gang scheduling: never a
half-started DDP job holding GPUs), preempts lower PriorityClasses for it, and KubeRay runs the
entrypoint and tears the cluster down. The job's state is read back from the RayJob's
``status.jobDeploymentStatus`` / ``status.jobStatus``; cancelling deletes the RayJob (and with it
its cluster and pods). The RayJob itself is built by services/rayjob_manifest.py.

The Kubernetes API is spoken directly over HTTPS with the pod's ServiceAccount token: three calls
on one resource do not need a client library, and the token file is read for every request
because Kubernetes rotates bound tokens.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import yaml
from ray.job_submission import JobSubmissionClient

from services.ray_auth import RayToken
from services.rayjob_manifest import GROUP_VERSION, rayjob_manifest
from services.settings import Settings
from services.store.models import JobState

# The prefix of a RayJob's id in the store (``jobs.ray_submission_id``): the scheduler and the
# routes hand every id to services.ray_client.RayJobs, which sends these here.
ID_PREFIX = "rayjob:"
# Deployment states in which the job will not run (again) whatever its Ray job status says.
_FAILED_DEPLOYMENT = {"Failed", "ValidationFailed"}
_RAY_STATES = {
    "PENDING": JobState.pending,
    "RUNNING": JobState.running,
    "SUCCEEDED": JobState.succeeded,
    "FAILED": JobState.failed,
    "STOPPED": JobState.stopped,
}


class KubeError(RuntimeError):
    """The Kubernetes API refused a request; the message is its own."""


class Conflict(KubeError):
    """A resource of that name exists already."""


def rayjob_state(status: dict[str, Any]) -> JobState:
    """The llmforge state of a RayJob's status. Suspended (waiting for Kueue's admission),
    initializing or retrying are PENDING: the job holds its team's slot but no Ray worker yet."""
    deployment = status.get("jobDeploymentStatus") or ""
    if deployment in _FAILED_DEPLOYMENT:
        return JobState.failed
    ray_state = _RAY_STATES.get(status.get("jobStatus") or "", JobState.pending)
    if deployment == "Complete" and ray_state not in (JobState.failed, JobState.stopped):
        return JobState.succeeded
    return ray_state


class KubeApi:
    """The four calls on one namespaced custom resource that llmforge makes."""

    def __init__(self, settings: Settings, plural: str = "rayjobs", timeout_s: float = 10) -> None:
        self.settings = settings
        self.base = (
            f"{settings.resolved_kube_api_url}/apis/{GROUP_VERSION}"
            f"/namespaces/{settings.rayjob_namespace}/{plural}"
        )
        ca = settings.kube_ca_path
        verify: Any = str(ca) if self.base.startswith("https:") and ca.is_file() else True
        self.http = httpx.Client(verify=verify, timeout=timeout_s)

    def _headers(self) -> dict[str, str]:
        token = self.settings.kube_token_path.read_text().strip()
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def _check(self, r: httpx.Response) -> dict[str, Any]:
        if r.status_code == 409:
            raise Conflict(_message(r))
        if r.status_code >= 400:
            raise KubeError(f"Kubernetes API {r.request.method} {r.status_code}: {_message(r)}")
        return dict(r.json())

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post(self.base, json=body, headers=self._headers()))

    def get(self, name: str) -> dict[str, Any] | None:
        r = self.http.get(f"{self.base}/{name}", headers=self._headers())
        return None if r.status_code == 404 else self._check(r)

    def delete(self, name: str) -> bool:
        """Delete it and, in the background, what it owns (its RayCluster and pods)."""
        r = self.http.request(
            "DELETE",
            f"{self.base}/{name}",
            json={"propagationPolicy": "Background"},
            headers=self._headers(),
        )
        if r.status_code == 404:
            return False
        self._check(r)
        return True


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message") or r.text)
    except ValueError:
        return r.text


class KubeRayJobs:
    """Jobs as RayJobs: submit, state, logs, stop, as ``services.ray_client.RayJobs`` offers."""

    def __init__(self, settings: Settings, token: RayToken | None) -> None:
        self.settings, self.token = settings, token
        self.api = KubeApi(settings)
        # The scheduler polls every active job each tick (poll_interval_s); a RayJob's status is
        # read from the API server at most once per rayjob_status_ttl_s, to spare it.
        self._seen: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._seen_lock = threading.Lock()

    def handles(self, kind: str | None) -> bool:
        return kind in self.settings.rayjob_kinds

    def submit(
        self,
        *,
        submission_id: str,
        kind: str,
        spec: dict[str, Any],
        entrypoint: str,
        env: dict[str, str],
        metadata: dict[str, str],
        driver_cpus: float | None,
    ) -> str:
        """Create the RayJob; its id in the store. Raises Conflict when it exists already."""
        name = rayjob_name(submission_id)
        body = rayjob_manifest(
            self.settings,
            name=name,
            kind=kind,
            spec=spec,
            entrypoint=entrypoint,
            env=env,
            metadata=metadata,
            driver_cpus=driver_cpus,
        )
        self.api.create(body)
        return ID_PREFIX + name

    def _get(self, job_id: str) -> dict[str, Any] | None:
        return self.api.get(job_id.removeprefix(ID_PREFIX))

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The RayJob's status (None: it does not exist), at most rayjob_status_ttl_s old."""
        now = time.monotonic()
        with self._seen_lock:
            seen = self._seen.get(job_id)
        if seen is not None and now - seen[0] < self.settings.rayjob_status_ttl_s:
            return seen[1]
        found = self._get(job_id)
        status = None if found is None else dict(found.get("status") or {})
        with self._seen_lock:
            self._seen[job_id] = (now, status)
            if status is None or rayjob_state(status).terminal:
                self._seen.pop(job_id)  # nothing more will be asked about it
        return status

    def env_of(self, job_id: str) -> dict[str, str]:
        found = self._get(job_id) or {}
        runtime_env = yaml.safe_load(found.get("spec", {}).get("runtimeEnvYAML") or "{}") or {}
        return dict(runtime_env.get("env_vars") or {})

    def _ray(self, status: dict[str, Any]) -> tuple[JobSubmissionClient, str] | None:
        """The Jobs API of the job's own cluster, while it lives."""
        if not status.get("dashboardURL") or not status.get("jobId"):
            return None
        url = status["dashboardURL"]
        url = url if "://" in url else f"http://{url}"
        headers = self.token.header if self.token else None
        return JobSubmissionClient(url, headers=headers), str(status["jobId"])

    def where(self, job_id: str, status: dict[str, Any] | None) -> str:
        name = job_id.removeprefix(ID_PREFIX)
        if status is None:
            return f"RayJob {name} no longer exists in namespace {self.settings.rayjob_namespace}"
        state = status.get("jobDeploymentStatus") or "New"
        waiting = " (waiting for Kueue to admit it)" if state in ("", "New", "Suspended") else ""
        return f"RayJob {name}: {state}{waiting}; {status.get('message') or ''}".rstrip("; ")

    def _cluster_logs(self, status: dict[str, Any] | None) -> str | None:
        """The logs from the job's own cluster; None while it has none (or no longer)."""
        ray = self._ray(status or {})
        if ray is None:
            return None
        client, ray_id = ray
        return str(client.get_job_logs(ray_id))

    def logs(self, job_id: str) -> str:
        status = self.status(job_id)
        logs = self._cluster_logs(status)
        return self.where(job_id, status) + "\n" if logs is None else logs

    async def follow_logs(self, job_id: str) -> AsyncIterator[str]:
        status = self.status(job_id)
        ray = self._ray(status or {})
        if ray is None:
            yield self.where(job_id, status) + "\n"
            return
        client, ray_id = ray
        async for chunk in client.tail_job_logs(ray_id):
            yield chunk

    def failure_message(self, job_id: str, error_line: re.Pattern[str]) -> str:
        """The job's own LLMFORGE_ERROR line when its cluster still answers, else KubeRay's."""
        status = self.status(job_id) or {}
        try:
            found = error_line.findall(self._cluster_logs(status) or "")
        except Exception:  # the cluster is gone or unreachable: KubeRay's message must do
            found = []
        if found:
            return str(found[-1]).strip()
        return str(status.get("message") or status.get("reason") or self.where(job_id, status))

    def stop(self, job_id: str) -> bool:
        with self._seen_lock:
            self._seen.pop(job_id, None)
        self.api.delete(job_id.removeprefix(ID_PREFIX))
        return True


def rayjob_name(submission_id: str) -> str:
    """A DNS-1123 name within KubeRay's limit for RayJob names (47: it derives the cluster's)."""
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in submission_id.lower())
    return name[:47].strip("-")
