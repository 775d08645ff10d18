"""The store on SQLite and on PostgreSQL (127.0.0.1:5432, database ``test``).

Where no PostgreSQL answers (a laptop) its cases skip; under CI (``CI=true``) they must run.
Each PostgreSQL case works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.store import crud
from services.store.db import make_engine, make_sessionmaker
from services.store.migrate import downgrade, upgrade
from services.store.models import Base, JobState

POSTGRES_URL = os.environ.get(
    "LLMFORGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_schema_url() -> Iterator[str]:
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as e:
        admin.dispose()
        if os.environ.get("CI") == "true":
            raise AssertionError(f"PostgreSQL must answer under CI: {e}") from e
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}")
    schema = f"llmforge_test_{secrets.token_hex(4)}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path / 'store.db'}"])
    else:
        urls = _postgres_schema_url()
    url = next(urls)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as s:
            yield s
    finally:
        engine.dispose()
        next(urls, None)


def test_job_round_trip_and_filters(session: Session) -> None:
    a = crud.create_job(session, kind="curate", spec={"input": "x", "output": "y"}, name="a")
    b = crud.create_job(
        session, kind="train", spec={"data": "d", "output": "o"}, state=JobState.waiting
    )
    session.commit()
    got = crud.get_job(session, job_id=a.id)
    assert got is not None and got.spec == {"input": "x", "output": "y"} and got.name == "a"
    assert [j.id for j in crud.list_jobs(session, kind="train")] == [b.id]
    assert [j.id for j in crud.list_jobs(session, state="WAITING")] == [b.id]
    assert {j.id for j in crud.jobs_in_states(session, states=[JobState.pending])} == {a.id}


def test_state_transitions_stamp_times_and_drop_the_token(session: Session) -> None:
    job = crud.create_job(session, kind="curate", spec={})
    job.token_hash = "h"
    crud.set_state(session, job=job, state=JobState.running)
    assert job.started_at is not None and job.ended_at is None
    crud.set_state(session, job=job, state=JobState.failed, message="input not found: /x")
    session.commit()
    again = crud.get_job(session, job_id=job.id)
    assert again is not None
    assert again.state == "FAILED" and again.message == "input not found: /x"
    assert again.ended_at is not None and again.token_hash is None


def test_metrics_query_by_name_and_step_range(session: Session) -> None:
    job = crud.create_job(session, kind="train", spec={})
    records = [
        {"step": s, "name": n, "value": float(s), "time": 1.0}
        for s in range(0, 50, 10)
        for n in ("loss", "lr")
    ]
    assert crud.add_metrics(session, job_id=job.id, records=records) == 10
    session.commit()
    loss = crud.query_metrics(session, job_id=job.id, name="loss", min_step=10, max_step=30)
    assert [(m.step, m.value) for m in loss] == [(10, 10.0), (20, 20.0), (30, 30.0)]
    assert len(crud.query_metrics(session, job_id=job.id)) == 10


def test_pipeline_jobs_in_creation_order(session: Session) -> None:
    p = crud.create_pipeline(session, name="demo")
    first = crud.create_job(session, kind="curate", spec={}, pipeline_id=p.id, stage="c")
    second = crud.create_job(
        session, kind="tokenize", spec={}, pipeline_id=p.id, stage="t", depends_on=[first.id]
    )
    session.commit()
    jobs = crud.pipeline_jobs(session, pipeline_id=p.id)
    assert [j.id for j in jobs] == [first.id, second.id]
    assert jobs[1].depends_on == [first.id]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
    else:
        yield from _postgres_schema_url()


def test_migrations_match_the_models_and_go_down_and_up(database_url: str) -> None:
    engine = make_engine(database_url)  # upgrades to head
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert {"jobs", "pipelines", "metrics"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
