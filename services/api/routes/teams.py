"""/api/v1/teams: each team's concurrency limit, how many of its jobs run and wait, and its
storage roots (``services.roots``; admins grant a team roots beyond its own area).

A team may have this many jobs on Ray (PENDING or RUNNING) at once; more wait QUEUED and start,
in queue order, as slots free. The limit is the ``LLMFORGE_TEAM_MAX_RUNNING`` setting unless an
admin gave the team its own.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from sqlalchemy import func, select

from contracts.roots import RootError, normalise
from services import roots
from services.api.auditing import audit_event, refusals
from services.api.deps import SchedulerDep, SessionDep
from services.api.schemas import (
    TeamLimitSet,
    TeamPublic,
    TeamRootPublic,
    TeamRootSet,
    TeamRootsPublic,
)
from services.api.validation import request_error
from services.auth import AdminDep, PrincipalDep
from services.settings import Settings
from services.store import queue
from services.store.models import Job, JobState, Role, TeamLimit, TeamRoot

router = APIRouter(prefix="/teams", tags=["teams"])
TeamName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^\w[\w.-]*$")]


def _team_public(session: SessionDep, team: str, default: int) -> TeamPublic:
    own = session.get(TeamLimit, team)
    counts = dict(
        session.execute(
            select(Job.state, func.count())
            .where(queue.job_team == team, Job.state.in_([*queue.ACTIVE, JobState.queued.value]))
            .group_by(Job.state)
        ).all()
    )
    return TeamPublic(
        team=team,
        max_running=own.max_running if own else default,
        limit_source="team" if own else "default",
        running=sum(int(counts.get(s, 0)) for s in queue.ACTIVE),
        queued=int(counts.get(JobState.queued.value, 0)),
    )


@router.get("")
def list_teams(session: SessionDep, scheduler: SchedulerDep, who: PrincipalDep) -> list[TeamPublic]:
    """Teams with a limit of their own or with jobs running or queued (admins: all of them;
    others: their own team)."""
    default = scheduler.settings.team_max_running
    if not who.allowed(Role.admin):
        return [_team_public(session, who.team, default)]
    teams = set(session.scalars(select(TeamLimit.team)))
    active = [*queue.ACTIVE, JobState.queued.value]
    teams |= set(session.scalars(select(queue.job_team).where(Job.state.in_(active)).distinct()))
    return [_team_public(session, t, default) for t in sorted(teams)]


@router.put("/{team}/limit")
def set_limit(
    team: TeamName,
    body: TeamLimitSet,
    session: SessionDep,
    scheduler: SchedulerDep,
    who: AdminDep,
    request: Request,
) -> TeamPublic:
    before = session.get(TeamLimit, team)
    previous = before.max_running if before else None
    queue.set_team_limit(session, team=team, max_running=body.max_running)
    audit_event(
        session, request, who, "team.limit.set", "team", team,
        max_running=body.max_running, previous=previous,
    )  # fmt: skip
    session.commit()
    scheduler.dispatch()  # a raised limit starts queued jobs now
    return _team_public(session, team, scheduler.settings.team_max_running)


@router.delete("/{team}/limit", dependencies=[refusals("team.limit.clear", "team", "team")])
def clear_limit(
    team: TeamName, session: SessionDep, scheduler: SchedulerDep, who: AdminDep, request: Request
) -> TeamPublic:
    """Back to the default limit."""
    if not queue.clear_team_limit(session, team=team):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"team {team} has no limit of its own")
    audit_event(session, request, who, "team.limit.clear", "team", team)
    session.commit()
    scheduler.dispatch()
    return _team_public(session, team, scheduler.settings.team_max_running)


def _roots_public(session: SessionDep, settings: Settings, team: str) -> TeamRootsPublic:
    allowed = roots.team_roots(settings, session, team)
    return TeamRootsPublic(
        team=team,
        area=settings.team_area(team),
        shared=settings.shared_root_list,
        shared_write=settings.shared_write_root_list,
        granted=[
            TeamRootPublic(uri=g.uri, mode=g.mode, created_at=g.created_at, created_by=g.created_by)  # type: ignore[arg-type]
            for g in roots.granted(session, team)
        ],
        read=list(allowed.read),
        write=list(allowed.write),
    )


@router.get("/{team}/roots")
def get_roots(
    team: TeamName, session: SessionDep, scheduler: SchedulerDep, who: PrincipalDep
) -> TeamRootsPublic:
    """Where the team's jobs may read and write (admins: any team; others: their own)."""
    if team != who.team and not who.allowed(Role.admin):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin may see another team's roots")
    return _roots_public(session, scheduler.settings, team)


@router.put("/{team}/roots")
def grant_root(
    team: TeamName,
    body: TeamRootSet,
    session: SessionDep,
    scheduler: SchedulerDep,
    who: AdminDep,
) -> TeamRootsPublic:
    """Grant the team a root (or change its mode); one that would hold the control plane's
    keys, store or Ray token is refused."""
    settings = scheduler.settings
    try:
        uri = normalise(body.uri)
        roots.check_root_is_safe(uri, settings, scheduler.ray.token)
    except RootError as e:
        raise request_error(("body", "uri"), f"{body.uri!r}: {e}") from e
    roots.grant(session, team=team, uri=uri, mode=body.mode, by=who.key_id)
    session.commit()
    return _roots_public(session, settings, team)


@router.delete("/{team}/roots")
def revoke_root(
    team: TeamName,
    uri: Annotated[str, Query(min_length=1, max_length=2000)],
    session: SessionDep,
    scheduler: SchedulerDep,
    _: AdminDep,
) -> TeamRootsPublic:
    """Take a granted root back; queued jobs under it fail when they would be submitted."""
    try:
        key = normalise(uri)
    except RootError:
        key = uri
    row = session.get(TeamRoot, (team, key))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"team {team} was not granted {uri}")
    session.delete(row)
    session.commit()
    return _roots_public(session, scheduler.settings, team)
