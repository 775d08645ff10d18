"""Brings jobs to Ray and Ray's answers back to the store.

One background thread: it polls Ray for every submitted job until it ends, recording the job's
result (``result.json`` in its output folder) or its error message, and registering what a
succeeded job made (datasets, models); retries failed jobs after a backoff; moves pipeline stages
whose parents succeeded into their team's queue and cancels those whose parents failed; and
submits queued jobs, each team's in its queue order, while the team has fewer jobs on Ray than
its limit. The API thread runs the same dispatch at once after a submission.

Exactly one scheduler per store runs at a time: several control-plane processes may share one
PostgreSQL database, and only the one holding the leader lock (``services.leader``) ticks and
dispatches; the others serve the API and take over within seconds when the leader dies. Its
writes hold even if two ran at once for a moment: each queued job is claimed in a transaction of
its own (``FOR UPDATE SKIP LOCKED``, the job still QUEUED) under an advisory lock of its team
while the team's slots are counted, and a submission Ray already has under the attempt's
submission id (a leader that died between Ray's answer and its commit) is adopted, not run again.
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

from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session, sessionmaker

from contracts.jobs import JOB_TYPES, JobKind
from contracts.reporting import ENV_API_URL, ENV_JOB_ID, ENV_JOB_TOKEN
from contracts.roots import Roots
from llm import storage
from llm.eval.data import DATA_ROOT_ENV
from services import job_outputs, roots
from services.api.validation import check_storage, validate_spec
from services.jsonsafe import finite_record
from services.leader import Leadership
from services.ray_client import AlreadySubmitted, LostJob, RayJobs
from services.redact import redact
from services.settings import Settings
from services.store import crud, queue
from services.store.models import Job, JobState, utcnow

log = logging.getLogger("llmforge.scheduler")
# ${stage.field} (the parent's spec, nested fields dotted) or ${stage.result.path} (its result)
PLACEHOLDER = re.compile(r"\$\{(\w[\w-]*)\.(\w+(?:\.[\w-]+)*)\}")


JOB_TOKEN_PREFIX = "lfj_"  # recognisable, so logs and messages can be scrubbed of it


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(job: Job) -> str:
    """A new token for this job's metrics; only its hash is kept, and it is dropped when the job
    ends (``crud.set_state``), so the token in the Ray job's environment dies with the job."""
    token = f"{JOB_TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
    job.token_hash = hash_token(token)
    return token


class PlaceholderError(ValueError):
    """A placeholder whose value the parent stage does not have."""


def lookup(parent: str, path: str, spec: dict[str, Any], result: dict[str, Any] | None) -> Any:
    """The value ``${parent.path}`` names: in the parent's result when the path starts with
    ``result.``, else in its spec."""
    parts = path.split(".")
    value: Any = spec
    walked = [parent]
    if parts[0] == "result":
        parts, value, walked = parts[1:], result, [parent, "result"]
        if result is None:
            raise PlaceholderError(f"${{{parent}.{path}}}: stage {parent} has no result")
    for part in parts:
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            where = ".".join(walked)
            raise PlaceholderError(f"${{{parent}.{path}}}: {where} has no {part!r}")
        walked.append(part)
    return value


def resolve_placeholders(
    spec: dict[str, Any],
    parents: dict[str, dict[str, Any]],
    results: dict[str, dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Replace ``${stage.path}`` in string values by that parent stage's spec field or result
    value. A string that is one placeholder becomes the value itself (a number stays a number,
    a config stays a mapping); inside a longer string the value is written as text."""
    results = results or {}

    def value_of(m: re.Match[str]) -> Any:
        return lookup(m.group(1), m.group(2), parents[m.group(1)], results.get(m.group(1)))

    def text(m: re.Match[str]) -> str:
        value = value_of(m)
        return value if isinstance(value, str) else json.dumps(value)

    def sub(value: Any) -> Any:
        if isinstance(value, str):
            whole = PLACEHOLDER.fullmatch(value)
            return value_of(whole) if whole else PLACEHOLDER.sub(text, value)
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v) for v in value]
        return value

    return sub(spec)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        ray: RayJobs,
        leadership: Leadership | None = None,
    ) -> None:
        self.settings, self.sessions, self.ray = settings, sessions, ray
        # None: this process is the only one on its store (tests, SQLite).
        self.leadership = leadership
        self._stop = threading.Event()
        # The API thread ticks too (to start a new pipeline at once); one tick at a time, or a
        # waiting stage could be submitted twice.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def job_env(self, job: Job, token: str, allowed: Roots) -> dict[str, str]:
        """The Ray job's environment, which the Ray dashboard shows to anyone who can open it:
        where to send metrics, the job's own token and the storage roots it may read and write
        (checked again by the job), never an API key, a database URL or cloud credentials
        (those come from the cluster's environment)."""
        env = {
            ENV_API_URL: self.settings.resolved_public_url,
            ENV_JOB_ID: job.id,
            ENV_JOB_TOKEN: token,
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
            **allowed.to_env(),
        }
        if self.settings.resolved_data_root:
            env[DATA_ROOT_ENV] = self.settings.resolved_data_root
        return env

    def submit(self, session: Session, job: Job) -> None:
        """Write the spec where the job can read it and hand the job to Ray."""
        root = self.settings.resolved_artifact_root.rstrip("/")
        spec_path = f"{root}/jobs/{job.id}/spec.json"
        storage.write_text(spec_path, json.dumps(job.spec, indent=2))
        allowed = roots.team_roots(self.settings, session, queue.team_of(job))
        roots.check_spec(JobKind(job.kind), job.spec, allowed)  # a grant may have been revoked
        env = self.job_env(job, issue_token(job), allowed)
        module = JOB_TYPES[JobKind(job.kind)].entry_module
        entrypoint = f"{self.settings.resolved_job_python} -m {module} --spec {spec_path}"
        attempt = f"-{job.attempts}" if job.attempts else ""
        submission_id = f"llmforge-{job.id}{attempt}"
        try:
            job.ray_submission_id = self.ray.submit(
                submission_id=submission_id,
                entrypoint=entrypoint,
                env=env,
                metadata=job_metadata(job),
                entrypoint_num_cpus=self.settings.job_driver_num_cpus,
                entrypoint_memory=self.settings.job_driver_memory_bytes,
                kind=job.kind,
                spec=job.spec,
            )
        except AlreadySubmitted as e:
            # A scheduler (this one before a restart, or a leader that died) had this attempt
            # accepted by Ray but not recorded: it runs already, so it is adopted, with the token
            # it was given, rather than failed or started twice.
            token = self.ray.env_of(e.submission_id).get(ENV_JOB_TOKEN)
            job.token_hash = hash_token(token) if token else None
            job.ray_submission_id = e.submission_id
            log.warning("job %s: adopted Ray's existing submission %s", job.id, e.submission_id)
        job.message = None
        crud.set_state(session, job=job, state=JobState.pending)

    def requeue(self, session: Session, job: Job) -> None:
        """Make an ended job wait to run again; it is submitted once its parents succeeded,
        under a new Ray submission id. Its output folder stays, so training resumes from its
        last checkpoint."""
        if job.state != JobState.cancelled.value:  # a cancelled stage never ran: no attempt
            job.attempts += 1
        job.state, job.message, job.result = JobState.waiting.value, None, None
        job.ended_at = None

    def leads(self) -> bool:
        """Whether this process runs the scheduler now (see ``services.leader``)."""
        return self.leadership is None or self.leadership.lead()

    def dispatch(self) -> None:
        """Start what can start now: ready stages join their team's queue, and each team's
        queue is submitted up to its free slots. The API calls this after it committed; on a
        standby it does nothing (the leader's next tick, within ``poll_interval_s``, does it)."""
        with self._lock:
            if not self.leads():
                return
            with self.sessions() as session:
                self._advance_and_submit(session)

    def tick(self) -> None:
        with self._lock:
            if not self.leads():
                return
            self._tick()

    def _tick(self) -> None:
        with self.sessions() as session:
            for job in crud.jobs_in_states(session, states=[JobState.pending, JobState.running]):
                self._poll(session, job)
                session.commit()
            for job in crud.jobs_in_states(session, states=[JobState.failed]):
                self._maybe_retry(session, job)
            session.commit()
            self._advance_and_submit(session)

    def _advance_and_submit(self, session: Session) -> None:
        for job in crud.jobs_in_states(session, states=[JobState.waiting]):
            self._advance_waiting(session, job)
        session.commit()
        self._submit_queued(session)

    def _submit_queued(self, session: Session) -> None:
        """Each team's queue in order, while the team has fewer jobs on Ray than its limit.

        Every job is a transaction of its own: the team's slots are counted under the team's
        lock, the job is claimed only if it is still QUEUED, and the commit that makes it
        PENDING ends both, so no slot is filled twice and no job starts twice."""
        listed = [(job.id, queue.team_of(job)) for job in queue.queued_jobs(session)]
        if not listed:
            return
        limits = queue.team_limits(session)
        session.commit()
        for job_id, team in listed:
            limit = limits.get(team, self.settings.team_max_running)
            queue.lock_team(session, team=team)
            running = queue.active_count(session, team=team)
            job = queue.claim(session, job_id=job_id)
            if job is None:  # cancelled meanwhile, or another scheduler has it
                session.commit()
                continue
            if running >= limit:
                note = f"queued: team {team} has {running} of its {limit} job slots in use"
                if job.message != note:
                    job.message = note
            else:
                self.submit_or_fail(session, job)
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
            results = {p.stage: p.result for p in parents if p is not None and p.stage}
            try:
                resolved = resolve_placeholders(job.spec, by_stage, results)
            except PlaceholderError as e:
                message = f"spec placeholders could not be resolved: {e}"
                crud.set_state(session, job=job, state=JobState.failed, message=message)
                return
            try:  # what a placeholder brought in is checked like anything a user typed
                job.spec = validate_spec(JobKind(job.kind), resolved, ("spec",))
                allowed = roots.team_roots(self.settings, session, queue.team_of(job))
                roots.check_spec(JobKind(job.kind), job.spec, allowed)
                check_storage(JobKind(job.kind), job.spec, ("spec",))
            except RequestValidationError as e:
                error = e.errors()[0]
                where = ".".join(str(part) for part in error["loc"])
                message = f"spec after placeholders were resolved: {where}: {error['msg']}"
                crud.set_state(session, job=job, state=JobState.failed, message=message)
                return
            except roots.RootsRefused as e:
                where = "; ".join(f"spec.{v.message}" for v in e.violations)
                message = f"spec after placeholders were resolved: {where}"
                crud.set_state(session, job=job, state=JobState.failed, message=message)
                return
            queue.enqueue(job)

    def submit_or_fail(self, session: Session, job: Job) -> None:
        try:
            self.submit(session, job)
        except Exception as e:  # Ray refused or is down: the job fails visibly, not silently
            log.exception("submitting job %s failed", job.id)
            crud.set_state(
                session, job=job, state=JobState.failed, message=redact(f"submit failed: {e}")
            )

    def _maybe_retry(self, session: Session, job: Job) -> None:
        """Automatic retries with exponential backoff (2, 4, 8 … s after the failure)."""
        if job.attempts >= job.max_retries or job.ended_at is None:
            return
        if utcnow() - job.ended_at >= timedelta(seconds=2 ** (job.attempts + 1)):
            log.info(
                "retrying job %s (attempt %d of %d)", job.id, job.attempts + 1, job.max_retries
            )
            self.requeue(session, job)

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
            job.result = read_result(job.spec)
        elif state == JobState.failed:
            message = redact(self.ray.failure_message(job.ray_submission_id))
        crud.set_state(session, job=job, state=state, message=message)
        if state == JobState.succeeded:
            registered = job_outputs.register_outputs(session, job)
            log.info("job %s succeeded; registered %s", job.id, [a.id for a in registered])

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
        if self.leadership is not None:
            self.leadership.release()  # a standby takes over at once, not after a timeout


def job_metadata(job: Job) -> dict[str, str]:
    """What the Ray dashboard shows beside the job (the Jobs API's ``metadata``): which llmforge
    job, kind, team, pipeline and stage, and the API key (user) that submitted it."""
    fields = {
        "llmforge_job_id": job.id,
        "llmforge_kind": job.kind,
        "llmforge_team": queue.team_of(job),
        "llmforge_pipeline": job.pipeline_id,
        "llmforge_stage": job.stage,
        "llmforge_user": job.owner,
        "llmforge_name": job.name,
        "llmforge_attempt": str(job.attempts),
    }
    return {k: str(v)[:256] for k, v in fields.items() if v is not None}


_BLOCKING = {JobState.failed.value, JobState.stopped.value, JobState.cancelled.value}
RETRYABLE = _BLOCKING


def read_result(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The job's result.json, made storable (see ``services.jsonsafe``); None if absent."""
    try:
        result = storage.read_json(storage.join(spec["output"], "result.json"))
    except (OSError, ValueError, KeyError):
        return None
    return finite_record(result) if isinstance(result, dict) else {"result": result}
