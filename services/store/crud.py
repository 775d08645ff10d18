"""Keyword-only store operations; routes and the scheduler call these, never raw queries."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import Row, Select, Table, insert, literal, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from services.store.models import Job, JobState, Metric, Pipeline, utcnow

Q = TypeVar("Q", bound=Select[Any])


def new_id() -> str:
    return secrets.token_hex(6)


def create_job(
    session: Session,
    *,
    kind: str,
    spec: dict[str, Any],
    name: str | None = None,
    state: JobState = JobState.pending,
    pipeline_id: str | None = None,
    stage: str | None = None,
    depends_on: Sequence[str] = (),
    max_retries: int = 0,
    idempotency_key: str | None = None,
    owner: str | None = None,
    team: str | None = None,
    priority: int = 0,
    job_id: str | None = None,
) -> Job:
    job = Job(
        id=job_id or new_id(),
        owner=owner,
        team=team,
        max_retries=max_retries,
        idempotency_key=idempotency_key,
        attempts=0,
        kind=kind,
        spec=spec,
        name=name,
        state=state.value,
        pipeline_id=pipeline_id,
        stage=stage,
        depends_on=list(depends_on),
        priority=priority,
        queued_at=utcnow() if state == JobState.queued else None,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def job_by_idempotency_key(session: Session, *, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.idempotency_key == key)).first()


class Paged(Protocol):
    """A row that pages by (created_at, id): jobs, artifacts, ratings."""

    id: Any
    created_at: Any


def encode_cursor(row: Paged) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError) as e:
        raise ValueError("not a cursor from this API: pass next_cursor unchanged") from e


def newest_first(
    query: Q,
    created: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[str],
    *,
    limit: int,
    after: tuple[datetime, str] | None,
) -> Q:
    """Newest first; ``after`` (created_at, id) continues a previous page (keyset pagination)."""
    query = query.order_by(created.desc(), row_id.desc()).limit(limit)
    if after:
        # Typed like the column: SQLite compares the strings it stores (``UTCDateTime``).
        query = query.where(
            tuple_(created, row_id) < tuple_(literal(after[0], created.type), after[1])
        )
    return query


def list_jobs(
    session: Session,
    *,
    kind: str | None = None,
    state: str | None = None,
    pipeline_id: str | None = None,
    owner: str | None = None,
    team: str | None = None,
    limit: int = 100,
    after: tuple[datetime, str] | None = None,
) -> list[Job]:
    query = newest_first(select(Job), Job.created_at, Job.id, limit=limit, after=after)
    if kind:
        query = query.where(Job.kind == kind)
    if state:
        query = query.where(Job.state == state)
    if pipeline_id:
        query = query.where(Job.pipeline_id == pipeline_id)
    if owner:
        query = query.where(Job.owner == owner)
    if team:
        query = query.where(Job.team == team)
    return list(session.scalars(query))


def jobs_in_states(session: Session, *, states: Sequence[JobState]) -> list[Job]:
    query = select(Job).where(Job.state.in_([s.value for s in states])).order_by(Job.created_at)
    return list(session.scalars(query))


def set_state(session: Session, *, job: Job, state: JobState, message: str | None = None) -> None:
    if job.state == state.value:
        return
    job.state = state.value
    if state == JobState.running and job.started_at is None:
        job.started_at = utcnow()
    if state.terminal:
        job.ended_at = utcnow()
        job.token_hash = None  # a job token dies with its job
    if message is not None:
        job.message = message


_METRIC_COLUMNS = ("step", "name", "value", "time")


def add_metrics(session: Session, *, job_id: str, records: Sequence[dict[str, Any]]) -> int:
    """Ingestion is the hot path: on PostgreSQL (psycopg) one COPY into the session's
    transaction, which took a third of the time of the multi-row INSERT it replaced; elsewhere
    one executemany of a Core INSERT, with no ORM bookkeeping per point."""
    if not records:
        return 0
    conn = session.connection()
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        driver = conn.connection.driver_connection
        assert driver is not None  # a checked-out connection always has one
        columns = ", ".join(("job_id", *_METRIC_COLUMNS))
        with driver.cursor() as cur, cur.copy(f"COPY metrics ({columns}) FROM STDIN") as copy:
            for r in records:
                copy.write_row((job_id, r["step"], r["name"], r["value"], r["time"]))
    else:
        table = cast(Table, Metric.__table__)
        conn.execute(insert(table), [{**r, "job_id": job_id} for r in records])
    return len(records)


def query_metrics(
    session: Session,
    *,
    job_id: str,
    name: str | None = None,
    min_step: int | None = None,
    max_step: int | None = None,
    limit: int = 10_000,
) -> list[Row[int, str, float, float]]:
    """Rows of (step, name, value, time), not ORM objects: a query answers up to 10,000 points,
    and building an object per point cost more than the query itself."""
    query = select(Metric.step, Metric.name, Metric.value, Metric.time)
    query = query.where(Metric.job_id == job_id)
    if name:
        query = query.where(Metric.name == name)
    if min_step is not None:
        query = query.where(Metric.step >= min_step)
    if max_step is not None:
        query = query.where(Metric.step <= max_step)
    return list(session.execute(query.order_by(Metric.step, Metric.id).limit(limit)))


def create_pipeline(session: Session, *, name: str, pipeline_id: str | None = None) -> Pipeline:
    pipeline = Pipeline(id=pipeline_id or new_id(), name=name)
    session.add(pipeline)
    session.flush()
    return pipeline


def get_pipeline(session: Session, *, pipeline_id: str) -> Pipeline | None:
    return session.get(Pipeline, pipeline_id)


def pipeline_jobs(session: Session, *, pipeline_id: str) -> list[Job]:
    query = select(Job).where(Job.pipeline_id == pipeline_id).order_by(Job.created_at, Job.id)
    return list(session.scalars(query))
