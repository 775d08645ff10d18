"""Dependencies shared by the routes: a store session, the scheduler, the Ray client, the
models served in this process.

Those that only read ``app.state`` are ``async``: FastAPI runs a plain ``def`` dependency in
its thread pool, a hop per dependency per request that costs most under load (the GIL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from services.deployments import Deployments
from services.ray_client import RayJobs
from services.scheduler import Scheduler
from services.serving import Serving


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


async def get_sessions(request: Request) -> sessionmaker[Session]:
    """The store's session factory, for a route that opens (and closes) its session itself."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


async def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


async def get_ray(request: Request) -> RayJobs:
    ray: RayJobs = request.app.state.ray
    return ray


async def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


async def get_deployments(request: Request) -> Deployments:
    deployments: Deployments = request.app.state.deployments
    return deployments


SessionDep = Annotated[Session, Depends(get_session)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
RayDep = Annotated[RayJobs, Depends(get_ray)]
ServingDep = Annotated[Serving, Depends(get_serving)]
DeploymentsDep = Annotated[Deployments, Depends(get_deployments)]
