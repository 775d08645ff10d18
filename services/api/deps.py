"""Dependencies shared by the routes: a store session, the scheduler, the Ray client, the
models served in this process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from services.deployments import Deployments
from services.ray_client import RayJobs
from services.scheduler import Scheduler
from services.serving import Serving


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def get_ray(request: Request) -> RayJobs:
    ray: RayJobs = request.app.state.ray
    return ray


def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


def get_deployments(request: Request) -> Deployments:
    deployments: Deployments = request.app.state.deployments
    return deployments


SessionDep = Annotated[Session, Depends(get_session)]
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
RayDep = Annotated[RayJobs, Depends(get_ray)]
ServingDep = Annotated[Serving, Depends(get_serving)]
DeploymentsDep = Annotated[Deployments, Depends(get_deployments)]
