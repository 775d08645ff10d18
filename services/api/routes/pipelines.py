"""/api/v1/pipelines: a DAG of jobs where each stage runs when its parents have succeeded."""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError

from contracts.jobs import JOB_TYPES, JobKind
from contracts.results import path_error
from contracts.spec_base import spec_field_names
from llm import storage
from services import roots
from services.api.auditing import audit_event, refusals
from services.api.deps import RayDep, SchedulerDep, SessionDep
from services.api.routes.jobs import public_page
from services.api.schemas import PipelineCreate, PipelinePublic
from services.api.validation import check_storage, request_error, validate_spec
from services.auth import Principal, PrincipalDep
from services.registry_refs import resolve_refs
from services.scheduler import PLACEHOLDER, RETRYABLE
from services.store import crud
from services.store.models import Job, JobState, Pipeline, Role

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


def _check_graph(body: PipelineCreate) -> None:
    """Stage names unique; parents named before their children (so the graph has no cycle)."""
    seen: set[str] = set()
    kinds: dict[str, JobKind] = {}
    for i, stage in enumerate(body.stages):
        if stage.name in seen:
            raise request_error(("body", "stages", i, "name"), f"duplicate stage {stage.name!r}")
        for parent in stage.after:
            if parent not in seen:
                raise request_error(
                    ("body", "stages", i, "after"),
                    f"unknown parent {parent!r}: name a stage listed earlier",
                )
        for m in PLACEHOLDER.finditer(json.dumps(stage.spec)):
            if m.group(1) not in stage.after:
                raise request_error(
                    ("body", "stages", i, "spec"),
                    f"${{{m.group(1)}.{m.group(2)}}} refers to a stage that is "
                    f"not in this stage's 'after'",
                )
            problem = _path_problem(kinds[m.group(1)], m.group(2).split("."))
            if problem:
                raise request_error(
                    ("body", "stages", i, "spec"),
                    f"${{{m.group(1)}.{m.group(2)}}}: stage {m.group(1)} ({kinds[m.group(1)]}) "
                    f"{problem}",
                )
        seen.add(stage.name)
        kinds[stage.name] = stage.kind


def _path_problem(kind: JobKind, path: list[str]) -> str | None:
    """Why a parent of ``kind`` cannot have ``path`` (``result.…`` or a spec field), or None."""
    if path[0] == "result":
        return path_error(JOB_TYPES[kind].result, path[1:])
    fields = spec_field_names(JOB_TYPES[kind].spec)
    if path[0] not in fields:
        return f"has no spec field {path[0]!r}; it has: {', '.join(sorted(fields))}"
    return None


def _whole_placeholders(value: Any, loc: tuple[str | int, ...] = ()) -> list[tuple[Any, ...]]:
    """(location, placeholder) of every string value that is one placeholder."""
    if isinstance(value, str):
        return [(loc, value)] if PLACEHOLDER.fullmatch(value) else []
    if not isinstance(value, dict | list):
        return []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return [found for k, v in items for found in _whole_placeholders(v, (*loc, k))]


def _about(at: tuple[Any, ...], value: str, error_at: tuple[Any, ...], error: str) -> bool:
    """Whether a validation error at ``error_at`` is about the placeholder ``value`` at ``at``."""
    return error_at[: len(at)] == at or (at[: len(error_at)] == error_at and value in error)


def _validate_stage(kind: JobKind, spec: dict[str, Any], loc: tuple[str | int, ...]) -> Any:
    """The stage's spec validated as a job's. A placeholder standing for a whole value (a
    number from a parent's result, say) cannot be checked before the parent ran: the spec is
    checked without it (its default stands in), and it is kept for the scheduler, which
    checks the spec again once it is resolved. Placeholders are left out only where the
    validation complains about them (a field that is a string takes one as it is)."""
    candidates = [
        (at, value)
        for at, value in _whole_placeholders(spec)
        if all(isinstance(p, str) for p in at)
    ]
    holes: list[tuple[tuple[Any, ...], str]] = []
    current = spec
    while True:
        try:
            dumped = validate_spec(kind, current, loc)
            break
        except RequestValidationError as e:
            # an error at the placeholder's field, or above it about it (a section's checks)
            failing = [(tuple(err["loc"][len(loc) :]), str(err)) for err in e.errors()]
            new = [
                (at, value)
                for at, value in candidates
                if (at, value) not in holes
                and any(
                    f[: len(at)] == at or (at[: len(f)] == f and value in t) for f, t in failing
                )
            ]
            if not new:
                raise
            holes += new
            current = copy.deepcopy(spec)
            for at, _ in holes:
                parent = current
                for part in at[:-1]:
                    parent = parent[part]
                del parent[at[-1]]
    for at, value in holes:
        parent = dumped
        for part in at[:-1]:
            parent = parent.setdefault(part, {})
        parent[at[-1]] = value
    return dumped


def _with_output(kind: JobKind, spec: dict[str, Any], area: str, stage: str) -> dict[str, Any]:
    """A stage without an output writes to ``<team area>/pipelines/<pipeline id>/<stage>``."""
    if "output" in spec or "output" not in JOB_TYPES[kind].spec.model_fields:
        return spec
    return {**spec, "output": storage.join(area, stage)}


def pipeline_state(jobs: list[Job]) -> str:
    states = {JobState(j.state) for j in jobs}
    if states <= {JobState.succeeded}:
        return JobState.succeeded.value
    if any(s.terminal for s in states) and all(s.terminal for s in states):
        return JobState.failed.value
    if states & {JobState.pending, JobState.running}:
        return JobState.running.value
    return JobState.waiting.value


def _public(
    session: SessionDep, pipeline: Pipeline, jobs: list[Job], ray: RayDep
) -> PipelinePublic:
    return PipelinePublic(
        id=pipeline.id,
        name=pipeline.name,
        created_at=pipeline.created_at,
        state=pipeline_state(jobs),
        jobs=public_page(session, jobs, ray),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[refusals("pipeline.create", "pipeline")],
)
def create_pipeline(
    body: PipelineCreate,
    session: SessionDep,
    scheduler: SchedulerDep,
    ray: RayDep,
    who: PrincipalDep,
    request: Request,
) -> PipelinePublic:
    _check_graph(body)
    settings, pipeline_id = scheduler.settings, crud.new_id()
    area = storage.join(settings.team_area(who.team), "pipelines", pipeline_id)
    specs = [
        _validate_stage(
            s.kind, _with_output(s.kind, s.spec, area, s.name), ("body", "stages", i, "spec")
        )
        for i, s in enumerate(body.stages)
    ]
    own = settings.team_area(who.team)
    specs = [
        roots.anchor(
            s.kind, resolve_refs(session, who, s.kind, spec, ("body", "stages", i, "spec")), own
        )
        for i, (s, spec) in enumerate(zip(body.stages, specs, strict=True))
    ]
    for i, (stage, spec) in enumerate(zip(body.stages, specs, strict=True)):
        loc = ("body", "stages", i, "spec")
        roots.enforce(settings, session, who.team, stage.kind, spec, loc)
    for i, (stage, spec) in enumerate(zip(body.stages, specs, strict=True)):
        check_storage(stage.kind, spec, ("body", "stages", i, "spec"))
    pipeline = crud.create_pipeline(session, name=body.name, pipeline_id=pipeline_id)
    ids: dict[str, str] = {}
    jobs = []
    for stage, spec in zip(body.stages, specs, strict=True):
        job = crud.create_job(
            session,
            kind=stage.kind.value,
            spec=spec,
            name=stage.name,
            state=JobState.waiting,
            pipeline_id=pipeline.id,
            stage=stage.name,
            depends_on=[ids[p] for p in stage.after],
            owner=who.key_id,
            team=who.team,
        )
        ids[stage.name] = job.id
        jobs.append(job)
    audit_event(
        session, request, who, "pipeline.create", "pipeline", pipeline.id, status_code=201,
        name=body.name, stages=len(body.stages), jobs=",".join(ids.values()),
    )  # fmt: skip
    session.commit()
    scheduler.dispatch()  # queue and start the root stages now rather than at the next poll
    session.expire_all()
    return _public(session, pipeline, crud.pipeline_jobs(session, pipeline_id=pipeline.id), ray)


@router.post(
    "/{pipeline_id}/resume",
    dependencies=[refusals("pipeline.resume", "pipeline", "pipeline_id")],
)
def resume_pipeline(
    pipeline_id: str,
    session: SessionDep,
    scheduler: SchedulerDep,
    ray: RayDep,
    who: PrincipalDep,
    request: Request,
) -> PipelinePublic:
    """Run the failed stage again, and the stages its failure cancelled, keeping what succeeded."""
    pipeline, jobs = _visible(session, pipeline_id, who)
    if pipeline_state(jobs) != JobState.failed.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"pipeline {pipeline_id} is {pipeline_state(jobs)}; only a FAILED "
            "pipeline can be resumed",
        )
    for job in jobs:
        if job.state in RETRYABLE:
            scheduler.requeue(session, job)
    audit_event(session, request, who, "pipeline.resume", "pipeline", pipeline_id)
    session.commit()
    scheduler.dispatch()
    session.expire_all()
    return _public(session, pipeline, crud.pipeline_jobs(session, pipeline_id=pipeline_id), ray)


@router.get("/{pipeline_id}")
def get_pipeline(
    pipeline_id: str, session: SessionDep, ray: RayDep, who: PrincipalDep
) -> PipelinePublic:
    pipeline, jobs = _visible(session, pipeline_id, who)
    return _public(session, pipeline, jobs, ray)


def _visible(session: SessionDep, pipeline_id: str, who: Principal) -> tuple[Pipeline, list[Job]]:
    """The pipeline and its jobs, if the caller's team may see them."""
    pipeline = crud.get_pipeline(session, pipeline_id=pipeline_id)
    jobs = crud.pipeline_jobs(session, pipeline_id=pipeline_id) if pipeline else []
    hidden = not who.allowed(Role.admin) and any(j.team not in (None, who.team) for j in jobs)
    if pipeline is None or hidden:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"pipeline {pipeline_id} not found")
    return pipeline, jobs
