"""/api/v1/experiments: experiments that expand into a pipeline of ordinary jobs.

``POST /api/v1/experiments/ablation`` takes an ``AblationSpec`` (``contracts.ablation``) and
creates its pipeline (curate, tokenize, train and evaluate per arm and seed, then compare) as
``POST /api/v1/pipelines`` would: the same checks, storage roots and scheduling. Follow it with
``GET /api/v1/pipelines/{id}``; its compare stage's result is the table.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.exceptions import RequestValidationError

from contracts.ablation import AblationSpec
from services.api.auditing import refusals
from services.api.deps import RayDep, SchedulerDep, SessionDep
from services.api.routes.pipelines import create_pipeline
from services.api.schemas import PipelineCreate, PipelinePublic
from services.auth import PrincipalDep

router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.post(
    "/ablation",
    status_code=status.HTTP_201_CREATED,
    dependencies=[refusals("pipeline.create", "pipeline")],
)
def create_ablation(
    body: AblationSpec,
    session: SessionDep,
    scheduler: SchedulerDep,
    ray: RayDep,
    who: PrincipalDep,
    request: Request,
) -> PipelinePublic:
    """The ablation's pipeline, created and queued; a stage's error names the stage."""
    pipeline = PipelineCreate.model_validate(body.pipeline())
    try:
        return create_pipeline(pipeline, session, scheduler, ray, who, request)
    except RequestValidationError as e:
        errors = []
        for err in e.errors():
            loc = tuple(err.get("loc", ()))
            if loc[:2] == ("body", "stages") and len(loc) > 2 and isinstance(loc[2], int):
                stage = pipeline.stages[loc[2]].name
                err = {**err, "msg": f"stage {stage}: {err.get('msg', '')}"}
            errors.append(err)
        raise RequestValidationError(errors) from e
