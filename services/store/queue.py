"""The per-team job queue: what is waiting for a slot, in which order, and each team's limit.

A job that is ready to run is QUEUED; the scheduler submits it to Ray once its team has fewer
jobs PENDING or RUNNING than the team's limit. A team's queue runs higher ``priority`` first,
then first come, first served (``queued_at``, then id, so the order is total).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, text, tuple_
from sqlalchemy.orm import Session

from services.store.models import DEFAULT_TEAM, Job, JobState, TeamLimit, utcnow

# Jobs that hold one of their team's slots: handed to Ray and not ended.
ACTIVE = (JobState.pending.value, JobState.running.value)
# Unowned jobs (made by tools, or before teams existed) share the default team's slots.
job_team = func.coalesce(Job.team, DEFAULT_TEAM)
ORDER = (Job.priority.desc(), Job.queued_at, Job.id)


def team_of(job: Job) -> str:
    return job.team or DEFAULT_TEAM


def enqueue(job: Job) -> None:
    """Put a ready job at the back of its team's queue (among jobs of its priority)."""
    job.state = JobState.queued.value
    job.queued_at = utcnow()


def queued_jobs(session: Session) -> list[Job]:
    """Every queued job, in the order the queue runs them."""
    query = select(Job).where(Job.state == JobState.queued.value).order_by(*ORDER)
    return list(session.scalars(query))


def active_counts(session: Session) -> dict[str, int]:
    query = select(job_team, func.count()).where(Job.state.in_(ACTIVE)).group_by(job_team)
    return {str(team): int(n) for team, n in session.execute(query)}


def active_count(session: Session, *, team: str) -> int:
    query = select(func.count()).select_from(Job).where(Job.state.in_(ACTIVE), job_team == team)
    return int(session.scalar(query) or 0)


# The first half of the two-number advisory locks that guard a team's slots ("llmf").
TEAM_LOCK_SPACE = int.from_bytes(b"llmf", "big")


def lock_team(session: Session, *, team: str) -> None:
    """Until this transaction ends, this session alone counts and fills ``team``'s slots.

    On PostgreSQL a transaction-scoped advisory lock of the team, so that two schedulers (a
    leader and one that has not yet noticed it lost its lead) cannot both see the same free slot;
    SQLite has a single writer already."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text(
                "SELECT pg_advisory_xact_lock(:space, hashtext(current_schema() || '/' || :team))"
            ),
            {"space": TEAM_LOCK_SPACE, "team": team},
        )


def claim(session: Session, *, job_id: str) -> Job | None:
    """The job, re-read and row-locked for this transaction, if it is still QUEUED and no other
    transaction holds it (``FOR UPDATE SKIP LOCKED``); None when it left the queue meanwhile
    (cancelled, or taken by another scheduler)."""
    query = (
        select(Job)
        .where(Job.id == job_id, Job.state == JobState.queued.value)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).first()


def team_limits(session: Session) -> dict[str, int]:
    return {t.team: t.max_running for t in session.scalars(select(TeamLimit))}


def limit_of(session: Session, *, team: str, default: int) -> int:
    row = session.get(TeamLimit, team)
    return row.max_running if row is not None else default


def set_team_limit(session: Session, *, team: str, max_running: int) -> TeamLimit:
    row = session.get(TeamLimit, team)
    if row is None:
        row = TeamLimit(team=team, max_running=max_running)
        session.add(row)
    row.max_running, row.updated_at = max_running, utcnow()
    session.flush()
    return row


def clear_team_limit(session: Session, *, team: str) -> bool:
    """Back to the setting's default; False if the team had no limit of its own."""
    row = session.get(TeamLimit, team)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def _ahead_of(job: Job) -> ColumnElement[bool]:
    """Queued jobs of the job's team that the queue runs before it."""
    earlier = tuple_(Job.queued_at, Job.id) < tuple_(
        literal(job.queued_at, Job.queued_at.type), job.id
    )
    return and_(
        Job.state == JobState.queued.value,
        job_team == team_of(job),
        or_(Job.priority > job.priority, and_(Job.priority == job.priority, earlier)),
    )


def queue_position(session: Session, *, job: Job) -> int | None:
    """1 for the next job its team runs; None for a job that is not queued."""
    if job.state != JobState.queued.value or job.queued_at is None:
        return None
    ahead = session.scalar(select(func.count()).select_from(Job).where(_ahead_of(job)))
    return int(ahead or 0) + 1


def queue_positions(session: Session, *, teams: Iterable[str]) -> dict[str, int]:
    """Job id → position, for every queued job of ``teams`` (one query for a page of jobs)."""
    wanted = sorted(set(teams))
    if not wanted:
        return {}
    query = (
        select(Job.id, job_team)
        .where(Job.state == JobState.queued.value, job_team.in_(wanted))
        .order_by(*ORDER)
    )
    positions: dict[str, int] = {}
    seen: dict[str, int] = {}
    for job_id, team in session.execute(query):
        seen[team] = seen.get(team, 0) + 1
        positions[job_id] = seen[team]
    return positions
