"""``/api/v1/models/{id}/deploy``: a registered model as a Ray Serve deployment on the cluster
(replicas with autoscaling, a GPU each where asked), behind the same completions routes.

``POST`` deploys (202: a deploy job was submitted; 200: the model already runs with this very
spec, nothing changed; another spec redeploys in place), ``GET`` tells its state as Serve sees
it now, ``DELETE`` undeploys (202). Member keys deploy and undeploy; teams see only their own
models (another team's is a 404, as in the registry). See ``services.deployments``.
"""

from __future__ import annotations

from datetime import datetime

import httpx
from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel
from sqlalchemy.orm import Session

from contracts.serving import DeploySpec
from services.api.auditing import audit_event, refusals
from services.api.deps import DeploymentsDep, SessionDep
from services.api.routes.registry import visible
from services.auth import Principal, PrincipalDep
from services.redact import redact
from services.store import registry as store
from services.store.models import Artifact, ArtifactCategory, Deployment, DeploymentState

router = APIRouter(tags=["deployments"])


class DeploymentPublic(BaseModel):
    model_id: str
    app: str
    state: DeploymentState
    spec: DeploySpec
    replicas: int
    message: str | None
    owner: str | None
    team: str | None
    created_at: datetime
    updated_at: datetime


def _public(deployment: Deployment) -> DeploymentPublic:
    return DeploymentPublic.model_validate(deployment, from_attributes=True)


def _model(session: Session, model_id: str, who: Principal) -> Artifact:
    artifact = store.get_artifact(session, artifact_id=model_id, category=ArtifactCategory.model)
    if artifact is None or not visible(artifact, who):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_id} not found")
    return artifact


def _deployment(session: Session, model_id: str, who: Principal) -> Deployment:
    _model(session, model_id, who)
    deployment = session.get(Deployment, model_id)
    if deployment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_id} is not deployed")
    return deployment


def _ray_unavailable(e: Exception) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        redact(f"the Ray cluster did not take the job: {e}"),
        headers={"Retry-After": "5"},
    )


@router.post(
    "/models/{model_id}/deploy",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[refusals("model.deploy", "model", "model_id")],
    responses={200: {"description": "already deployed with this spec"}, 404: {}, 503: {}},
)
def deploy(
    model_id: str,
    request: Request,
    response: Response,
    session: SessionDep,
    deployments: DeploymentsDep,
    who: PrincipalDep,
    spec: DeploySpec | None = None,
) -> DeploymentPublic:
    """Deploy a registered model as a Ray Serve application (or change its deployment)."""
    artifact = _model(session, model_id, who)
    spec = spec or DeploySpec()
    try:
        deployment, submitted = deployments.deploy(session, artifact, spec, who.key_id)
    except (httpx.HTTPError, RuntimeError, OSError) as e:  # requests' errors are OSErrors
        raise _ray_unavailable(e) from e
    if not submitted:
        response.status_code = status.HTTP_200_OK
        return _public(deployment)
    audit_event(
        session, request, who, "model.deploy", "model", model_id, status_code=202,
        app=deployment.app, min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
        device=spec.device, submission_id=deployment.ray_submission_id,
    )  # fmt: skip
    session.commit()
    return _public(deployment)


@router.get(
    "/models/{model_id}/deploy", responses={404: {"description": "unknown or not deployed"}}
)
def deployment_state(
    model_id: str, session: SessionDep, deployments: DeploymentsDep, who: PrincipalDep
) -> DeploymentPublic:
    """The deployment's state as Serve tells it now: DEPLOYING, RUNNING (with its running
    replicas), UNHEALTHY, FAILED (with the reason), UNDEPLOYING or UNDEPLOYED."""
    deployment = _deployment(session, model_id, who)
    return _public(deployments.refresh(session, deployment))


@router.delete(
    "/models/{model_id}/deploy",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[refusals("model.undeploy", "model", "model_id")],
    responses={200: {"description": "already undeployed"}, 404: {}, 503: {}},
)
def undeploy(
    model_id: str,
    request: Request,
    response: Response,
    session: SessionDep,
    deployments: DeploymentsDep,
    who: PrincipalDep,
) -> DeploymentPublic:
    """Delete the model's Serve application; its completions are served in this process
    again at once."""
    deployment = _deployment(session, model_id, who)
    if deployment.state in (DeploymentState.undeploying, DeploymentState.undeployed):
        response.status_code = status.HTTP_200_OK
        return _public(deployment)
    try:
        deployments.undeploy(session, deployment)
    except (httpx.HTTPError, RuntimeError, OSError) as e:  # requests' errors are OSErrors
        raise _ray_unavailable(e) from e
    audit_event(
        session, request, who, "model.undeploy", "model", model_id, status_code=202,
        app=deployment.app, submission_id=deployment.ray_submission_id,
    )  # fmt: skip
    session.commit()
    return _public(deployment)
