"""Brings jobs to Ray and Ray's answers back to the store.

One background thread: it submits pipeline stages whose parents succeeded, cancels those whose
parents failed, and polls Ray for every submitted job until it ends, recording the job's result
(``result.json`` in its output folder) or its error message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ray_jobs import storage
from services.ray_client import LostJob, RayJobs
from services.settings import Settings
from services.store import crud
from services.store.models import Job, JobState, utcnow

log = logging.getLogger("llmforge.scheduler")
PLACEHOLDER = re.compile(r"\$\{(\w[\w-]*)\.(\w+)\}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def resolve_placeholders(
    spec: dict[str, Any], parents: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Replace ``${stage.field}`` in string values by that parent stage's spec field."""

    def sub(value: Any) -> Any:
        if isinstance(value, str):
            return PLACEHOLDER.sub(lambda m: str(parents[m.group(1)][m.group(2)]), value)
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v) for v in value]
        return value

    return sub(spec)


class Scheduler:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], ray: RayJobs) -> None:
        self.settings, self.sessions, self.ray = settings, sessions, ray
        self._stop = threading.Event()
        # The API thread ticks too (to start a new pipeline at once); one tick at a time, or a
        # waiting stage could be submitted twice.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, session: Session, job: Job) -> None:
        """Write the spec where the job can read it and hand the job to Ray."""
        root = self.settings.resolved_artifact_root.rstrip("/")
        spec_path = f"{root}/jobs/{job.id}/spec.json"
        storage.write_text(spec_path, json.dumps(job.spec, indent=2))
        token = secrets.token_urlsafe(32)
        job.token_hash = hash_token(token)
        env = {
            "LLMFORGE_API_URL": self.settings.resolved_public_url,
            "LLMFORGE_JOB_ID": job.id,
            "LLMFORGE_JOB_TOKEN": token,
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        }
        if self.settings.s3_endpoint_url:  # where S3 is; credentials come from the cluster
            env[storage.ENDPOINT_ENV] = self.settings.s3_endpoint_url
        entrypoint = (
            f"{self.settings.resolved_job_python} -m ray_jobs.{job.kind} --spec {spec_path}"
        )
        attempt = f"-{job.attempts}" if job.attempts else ""
        job.ray_submission_id = self.ray.submit(
            submission_id=f"llmforge-{job.id}{attempt}", entrypoint=entrypoint, env=env
        )
        crud.set_state(session, job=job, state=JobState.pending)

    def requeue(self, session: Session, job: Job) -> None:
        """Make an ended job wait to run again; it is submitted once its parents succeeded,
        under a new Ray submission id. Its output folder stays, so training resumes from its
        last checkpoint."""
        if job.state != JobState.cancelled.value:  # a cancelled stage never ran: no attempt
            job.attempts += 1
        job.state, job.message, job.result = JobState.waiting.value, None, None
        job.ended_at = None

    def retry(self, session: Session, job: Job) -> None:
        """Submit an ended job again now."""
        self.requeue(session, job)
        self.submit_or_fail(session, job)

    def tick(self) -> None:
        with self._lock, self.sessions() as session:
            for job in crud.jobs_in_states(session, states=[JobState.waiting]):
                self._advance_waiting(session, job)
            session.commit()
            for job in crud.jobs_in_states(session, states=[JobState.pending, JobState.running]):
                self._poll(session, job)
                session.commit()
            for job in crud.jobs_in_states(session, states=[JobState.failed]):
                self._maybe_retry(session, job)
            session.commit()

    def _advance_waiting(self, session: Session, job: Job) -> None:
        parents = [crud.get_job(session, job_id=p) for p in job.depends_on]
        failed = [p for p in parents if p is None or p.state in _BLOCKING]
        if failed:
            names = ", ".join(p.stage or p.id for p in failed if p is not None) or "unknown"
            crud.set_state(
                session,
                job=job,
                state=JobState.cancelled,
                message=f"not run: parent stage {names} did not succeed",
            )
            return
        if all(p is not None and p.state == JobState.succeeded for p in parents):
            by_stage = {p.stage: p.spec for p in parents if p is not None and p.stage}
            job.spec = resolve_placeholders(job.spec, by_stage)
            self.submit_or_fail(session, job)

    def submit_or_fail(self, session: Session, job: Job) -> None:
        try:
            self.submit(session, job)
        except Exception as e:  # Ray refused or is down: the job fails visibly, not silently
            log.exception("submitting job %s failed", job.id)
            crud.set_state(session, job=job, state=JobState.failed, message=f"submit failed: {e}")

    def _maybe_retry(self, session: Session, job: Job) -> None:
        """Automatic retries with exponential backoff (2, 4, 8 … s after the failure)."""
        if job.attempts >= job.max_retries or job.ended_at is None:
            return
        if utcnow() - job.ended_at >= timedelta(seconds=2 ** (job.attempts + 1)):
            log.info(
                "retrying job %s (attempt %d of %d)", job.id, job.attempts + 1, job.max_retries
            )
            self.retry(session, job)

    def _poll(self, session: Session, job: Job) -> None:
        if not job.ray_submission_id:
            return
        try:
            state = self.ray.state(job.ray_submission_id)
        except LostJob as e:
            # The cluster restarted and forgot the job: fail it visibly (retries may follow)
            # instead of leaving it RUNNING for ever.
            crud.set_state(session, job=job, state=JobState.failed, message=str(e))
            return
        except Exception as e:
            log.warning("polling job %s: %s", job.id, e)
            return
        if state == JobState(job.state):
            return
        message = None
        if state == JobState.succeeded:
            job.result = _read_result(job.spec)
        elif state == JobState.failed:
            message = self.ray.failure_message(job.ray_submission_id)
        crud.set_state(session, job=job, state=state, message=message)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmforge-scheduler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)


_BLOCKING = {JobState.failed.value, JobState.stopped.value, JobState.cancelled.value}
RETRYABLE = _BLOCKING


def _read_result(spec: dict[str, Any]) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = json.loads(storage.read_text(f"{spec['output']}/result.json"))
    except (OSError, ValueError, KeyError):
        return None
    return result
