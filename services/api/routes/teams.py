"""/api/v1/teams: each team's concurrency limit, and how many of its jobs run and wait.

A team may have this many jobs on Ray (PENDING or RUNNING) at once; more wait QUEUED and start,
in queue order, as slots free. The limit is the ``LLMFORGE_TEAM_MAX_RUNNING`` setting unless an
admin gave the team its own.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status
from sqlalchemy import func, select

from services.api.auditing import audit_event, refusals
from services.api.deps import SchedulerDep, SessionDep
from services.api.schemas import TeamLimitSet, TeamPublic
from services.auth import AdminDep, PrincipalDep
from services.store import queue
from services.store.models import Job, JobState, Role, TeamLimit

router = APIRouter(prefix="/teams", tags=["teams"])
TeamName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[\w.-]+$")]


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
