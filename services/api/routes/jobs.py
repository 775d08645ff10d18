"""/api/v1/jobs: submit, list, get, cancel, logs, and the metrics that jobs send."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from contracts.jobs import JOB_TYPES
from llm import storage
from services import roots
from services.api import log_stream
from services.api.auditing import audit_event, refusals
from services.api.deps import RayDep, SchedulerDep, SessionDep, SessionsDep
from services.api.downloads import DOWNLOAD_RESPONSES, RangeHeader, file_response, locate
from services.api.schemas import (
    JobCreate,
    JobLogs,
    JobPublic,
    JobsPublic,
    MetricsPublic,
)
from services.api.validation import check_storage, request_error, validate_spec
from services.auth import Principal, PrincipalDep
from services.ray_client import RayJobs
from services.redact import redact
from services.registry_refs import resolve_refs
from services.scheduler import RETRYABLE
from services.store import crud, queue
from services.store.db import read_session
from services.store.models import Job, JobState, Role

router = APIRouter(prefix="/jobs", tags=["jobs"])


_COMPUTED = {"dashboard_url", "queue_position"}


def to_public(job: Job, ray: RayJobs, position: int | None = None) -> JobPublic:
    url = ray.job_url(job.ray_submission_id) if job.ray_submission_id else None
    return JobPublic.model_validate(
        {c: getattr(job, c) for c in JobPublic.model_fields if c not in _COMPUTED}
        | {"dashboard_url": url, "queue_position": position}
    )


def public_page(session: SessionDep, jobs: list[Job], ray: RayJobs) -> list[JobPublic]:
    """Jobs with their queue positions (one query for all the page's queued jobs)."""
    teams = {queue.team_of(j) for j in jobs if j.state == JobState.queued.value}
    positions = queue.queue_positions(session, teams=teams)
    return [to_public(j, ray, positions.get(j.id)) for j in jobs]


def public_one(session: SessionDep, job: Job, ray: RayJobs) -> JobPublic:
    return to_public(job, ray, queue.queue_position(session, job=job))


def ray_unavailable(ray: RayJobs, e: Exception) -> HTTPException:
    """Ray did not answer: a 503 that says so, rather than a 500 from inside the client."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        redact(f"Ray at {ray.dashboard_url} did not answer: {type(e).__name__}: {e}"),
    )


def job_or_404(session: SessionDep, job_id: str, who: Principal) -> Job:
    """The job, if it exists and the caller's team may see it (admins see every team's)."""
    job = crud.get_job(session, job_id=job_id)
    if job is None or not (who.allowed(Role.admin) or job.team in (None, who.team)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def _own_or_admin(job: Job, who: Principal, action: str) -> None:
    if job.owner not in (None, who.key_id) and not who.allowed(Role.admin):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"job {job.id} belongs to another user: only an admin may {action} it",
        )


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[refusals("job.submit", "job")])
def submit_job(
    body: JobCreate,
    session: SessionDep,
    scheduler: SchedulerDep,
    ray: RayDep,
    response: Response,
    who: PrincipalDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    settings = scheduler.settings
    job_id = crud.new_id()
    given = dict(body.spec)
    if "output" not in given and "output" in JOB_TYPES[body.kind].spec.model_fields:
        # the team's area by default; a retried Idempotency-Key gets its first job's output
        earlier = crud.job_by_idempotency_key(session, key=idempotency_key or "")
        mine = earlier is not None and earlier.owner == who.key_id and "output" in earlier.spec
        default = storage.join(settings.team_area(who.team), body.kind.value, job_id)
        given["output"] = earlier.spec["output"] if earlier is not None and mine else default
    spec = validate_spec(body.kind, given, ("body", "spec"))
    spec = resolve_refs(session, who, body.kind, spec, ("body", "spec"))
    spec = roots.anchor(body.kind, spec, settings.team_area(who.team))
    roots.enforce(settings, session, who.team, body.kind, spec, ("body", "spec"))
    if idempotency_key:
        earlier = _earlier_submission(session, idempotency_key, who, body, spec)
        if earlier is not None:
            response.status_code = status.HTTP_200_OK
            return public_one(session, earlier, ray)
    check_storage(body.kind, spec, ("body", "spec"))
    job = crud.create_job(
        session,
        job_id=job_id,
        owner=who.key_id,
        team=who.team,
        kind=body.kind.value,
        spec=spec,
        name=body.name,
        max_retries=body.max_retries,
        idempotency_key=idempotency_key,
        state=JobState.queued,
        priority=body.priority,
    )
    audit_event(
        session, request, who, "job.submit", "job", job.id, status_code=201,
        kind=body.kind.value, name=body.name, output=str(spec.get("output", "")),
    )  # fmt: skip
    try:
        session.commit()
    except IntegrityError:  # the same key, sent twice at once: the other request won
        session.rollback()
        earlier = _earlier_submission(session, idempotency_key or "", who, body, spec)
        if earlier is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"Idempotency-Key {idempotency_key!r} is in use by another user's job",
            ) from None
        response.status_code = status.HTTP_200_OK
        return public_one(session, earlier, ray)
    scheduler.dispatch()  # submits it now if its team has a free slot
    session.refresh(job)
    return public_one(session, job, ray)


def _earlier_submission(
    session: SessionDep, key: str, who: Principal, body: JobCreate, spec: dict[str, object]
) -> Job | None:
    """The caller's job submitted under ``key`` before, if any; 409 if it differs."""
    earlier = crud.job_by_idempotency_key(session, key=key)
    if earlier is None or earlier.owner != who.key_id:
        return None
    if (earlier.kind, earlier.spec) != (body.kind.value, spec):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key {key!r} was used for job {earlier.id} with a different kind or spec",
        )
    return earlier


@router.get("")
async def list_jobs(
    sessions: SessionsDep,
    ray: RayDep,
    who: PrincipalDep,
    kind: str | None = None,
    owner: str | None = Query(default=None, description="an API key id"),
    state: JobState | None = None,
    pipeline_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JobsPublic:
    # The hot reads are ``async`` with their store work in one worker thread: a plain ``def``
    # route and its session dependency cost three thread-pool hops a request.
    try:
        after = crud.decode_cursor(cursor) if cursor else None
    except ValueError as e:
        raise request_error(("query", "cursor"), str(e)) from e
    filters = {
        "kind": kind,
        "state": state.value if state else None,
        "pipeline_id": pipeline_id,
        "owner": owner,
        "team": None if who.allowed(Role.admin) else who.team,
    }
    return await run_in_threadpool(_jobs_page, sessions, ray, filters, limit, after)


def _jobs_page(
    sessions: sessionmaker[Session],
    ray: RayJobs,
    filters: dict[str, str | None],
    limit: int,
    after: tuple[datetime, str] | None,
) -> JobsPublic:
    with read_session(sessions) as session:
        jobs = crud.list_jobs(session, **filters, limit=limit + 1, after=after)
        page = jobs[:limit]
        next_cursor = crud.encode_cursor(page[-1]) if len(jobs) > limit else None
        data = public_page(session, page, ray)
    return JobsPublic(data=data, count=len(page), next_cursor=next_cursor)


@router.get("/{job_id}")
async def get_job(job_id: str, sessions: SessionsDep, ray: RayDep, who: PrincipalDep) -> JobPublic:
    """The job; a QUEUED job also says its place in its team's queue (1: next to run)."""
    return await run_in_threadpool(_job_public, sessions, ray, job_id, who)


def _job_public(
    sessions: sessionmaker[Session], ray: RayJobs, job_id: str, who: Principal
) -> JobPublic:
    with read_session(sessions) as session:
        return public_one(session, job_or_404(session, job_id, who), ray)


@router.post("/{job_id}/cancel", dependencies=[refusals("job.cancel", "job", "job_id")])
def cancel_job(
    job_id: str,
    session: SessionDep,
    scheduler: SchedulerDep,
    ray: RayDep,
    who: PrincipalDep,
    request: Request,
) -> JobPublic:
    job = job_or_404(session, job_id, who)
    _own_or_admin(job, who, "cancel")
    # Row-locked until the commit, and read again: a scheduler claiming it at this moment (its
    # QUEUED -> PENDING commit) is waited for, so a job Ray took is stopped there, not marked
    # cancelled while it runs.
    session.refresh(job, with_for_update=True)
    if JobState(job.state).terminal:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already ended ({job.state})")
    on_ray = job.state in (JobState.pending.value, JobState.running.value)
    if on_ray and job.ray_submission_id:
        try:
            ray.stop(job.ray_submission_id)
        except Exception as e:  # still running there, as far as anyone knows: say so
            raise ray_unavailable(ray, e) from e
        crud.set_state(session, job=job, state=JobState.stopped, message="cancelled by user")
    else:  # waiting or queued: it never reached Ray in this attempt
        crud.set_state(session, job=job, state=JobState.cancelled, message="cancelled by user")
    audit_event(session, request, who, "job.cancel", "job", job_id, state=job.state)
    session.commit()
    scheduler.dispatch()  # its slot, if it held one, goes to the next queued job
    return to_public(job, ray)


@router.post("/{job_id}/retry", dependencies=[refusals("job.retry", "job", "job_id")])
def retry_job(
    job_id: str,
    session: SessionDep,
    scheduler: SchedulerDep,
    ray: RayDep,
    who: PrincipalDep,
    request: Request,
) -> JobPublic:
    """Run an ended, unsuccessful job again; training resumes from its last checkpoint."""
    job = job_or_404(session, job_id, who)
    _own_or_admin(job, who, "retry")
    if job.state not in RETRYABLE:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} is {job.state}; only FAILED, STOPPED or CANCELLED jobs can be retried",
        )
    previous = job.state
    scheduler.requeue(session, job)
    audit_event(session, request, who, "job.retry", "job", job_id, previous_state=previous)
    session.commit()
    scheduler.dispatch()
    session.refresh(job)
    return public_one(session, job, ray)


@router.get("/{job_id}/logs", response_model=JobLogs, responses=log_stream.responses())
def job_logs(
    job_id: str,
    session: SessionDep,
    ray: RayDep,
    who: PrincipalDep,
    tail: Annotated[int | None, Query(ge=1)] = None,
    follow: Annotated[
        bool,
        Query(
            description="stream the log as NDJSON (application/x-ndjson: LogLine objects, then "
            "one LogEnd with the job's state) until the job ends; tail is then ignored"
        ),
    ] = False,
) -> JobLogs | StreamingResponse:
    """The job's log as JSON; ``follow`` streams it as NDJSON until the job ends."""
    job = job_or_404(session, job_id, who)
    if not job.ray_submission_id:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} has not started ({job.state})")
    if follow:
        try:
            ray.client  # noqa: B018 (connects to Ray: a 503 now rather than a broken stream)
        except Exception as e:
            raise ray_unavailable(ray, e) from e
        lines = log_stream.follow(ray, job.ray_submission_id)
        return StreamingResponse(lines, media_type=log_stream.MEDIA_TYPE)
    try:
        logs = redact(ray.logs(job.ray_submission_id))
    except Exception as e:
        raise ray_unavailable(ray, e) from e
    if tail:
        logs = "\n".join(logs.splitlines()[-tail:])
    return JobLogs(job_id=job_id, logs=logs)


@router.get("/{job_id}/artifacts")
def job_artifacts(
    job_id: str,
    session: SessionDep,
    who: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, object]:
    """The files under the job's output URI (local folder or s3:// prefix), with sizes."""
    job = job_or_404(session, job_id, who)
    output = str(job.spec.get("output", ""))
    try:
        files = [asdict(e) for e in storage.list_files(output, limit=limit)] if output else []
    except OSError as e:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, redact(f"cannot list {output}: {e}")
        ) from e
    return {"job_id": job_id, "output": output, "files": files}


@router.get(
    "/{job_id}/artifacts/{path:path}",
    response_class=StreamingResponse,
    responses=DOWNLOAD_RESPONSES,
)
def download_artifact(
    job_id: str,
    path: str,
    session: SessionDep,
    who: PrincipalDep,
    range: RangeHeader = None,
) -> StreamingResponse:
    """One file of the job's output (a path relative to it), streamed; ranges resume large
    downloads."""
    job = job_or_404(session, job_id, who)
    uri, size = locate(str(job.spec.get("output", "")), path, f"job {job_id}")
    return file_response(uri, size, range)


@router.get("/{job_id}/metrics", response_model=MetricsPublic)
async def get_metrics(
    job_id: str,
    sessions: SessionsDep,
    who: PrincipalDep,
    name: str | None = None,
    min_step: Annotated[int | None, Query(ge=0)] = None,
    max_step: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    body = await run_in_threadpool(
        _metrics_json, sessions, job_id, who, name=name, min_step=min_step, max_step=max_step
    )
    return Response(body, media_type="application/json")


def _metrics_json(
    sessions: sessionmaker[Session],
    job_id: str,
    who: Principal,
    *,
    name: str | None,
    min_step: int | None,
    max_step: int | None,
) -> bytes:
    """The ``MetricsPublic`` body, written straight from the rows: the points were checked on
    the way in (finite, a step >= 0, a name of 1 to 100 characters), and checking them again
    as a model per point cost as much as the query."""
    with read_session(sessions) as session:
        job_or_404(session, job_id, who)
        rows = crud.query_metrics(
            session, job_id=job_id, name=name, min_step=min_step, max_step=max_step
        )
    records = [{"step": s, "name": n, "value": v, "time": t} for s, n, v, t in rows]
    answer = {"job_id": job_id, "records": records}
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()
