"""Dependencies shared by the routes: a store session, the scheduler, the Ray client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from services.ray_client import RayJobs
from services.scheduler import Scheduler


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def get_ray(request: Request) -> RayJobs:
    ray: RayJobs = request.app.state.ray
    return ray


SessionDep = Annotated[Session, Depends(get_session)]
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
RayDep = Annotated[RayJobs, Depends(get_ray)]
