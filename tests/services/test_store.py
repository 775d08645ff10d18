"""The store on SQLite and on PostgreSQL (the ``session`` and ``database_url`` fixtures in
conftest.py: PostgreSQL cases skip where none answers, and must run under ``CI=true``)."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from services.store import crud
from services.store.db import make_engine, make_sessionmaker
from services.store.migrate import downgrade, upgrade
from services.store.models import Base, JobState


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


def test_json_columns_read_back_what_orjson_alone_would_refuse(session: Session) -> None:
    """The store decodes its JSON columns with orjson (services.store.db.json_loads) and falls
    back to the standard library where orjson would lose something: an integer over 64 bits
    (orjson makes it a float)."""
    spec = {"seed": 2**70 + 1, "big": -(10**30) - 7, "nested": {"x": [1.5, "é", None, 2**62]}}
    job = crud.create_job(session, kind="train", spec=spec)
    session.commit()
    session.expunge_all()
    got = crud.get_job(session, job_id=job.id)
    assert got is not None and got.spec == spec
    assert isinstance(got.spec["seed"], int) and isinstance(got.spec["big"], int)


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


def test_migration_0003_keeps_existing_jobs_and_goes_back(database_url: str) -> None:
    """Jobs written under 0002 survive 0003 (priority 0, not queued) and its downgrade."""
    engine = make_engine(database_url)
    try:
        downgrade(engine, "0002")
        assert "artifacts" not in inspect(engine).get_table_names()
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, kind, state, spec, depends_on, attempts, max_retries,"
                    " created_at) VALUES ('j1', 'curate', 'RUNNING', '{}', '[]', 0, 0, :now)"
                ),
                {"now": "2024-01-02 03:04:05"},
            )
        upgrade(engine)
        tables = set(inspect(engine).get_table_names())
        assert {"artifacts", "evaluations", "ratings", "team_limits"} <= tables
        with make_sessionmaker(engine)() as s:
            job = crud.get_job(s, job_id="j1")
            assert job is not None and job.priority == 0 and job.queued_at is None
        downgrade(engine, "0002")
        columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
        assert "priority" not in columns and "queued_at" not in columns
        with engine.connect() as conn:
            state = conn.execute(text("SELECT state FROM jobs WHERE id = 'j1'")).scalar()
        assert state == "RUNNING"
    finally:
        engine.dispose()


def test_migration_0008_makes_every_timestamp_utc_and_goes_back(database_url: str) -> None:
    """Naive UTC rows from before 0008 read back aware and unchanged; new rows are stored with
    their offset (timestamptz, or an RFC 3339 string in SQLite); the downgrade restores them."""
    engine = make_engine(database_url)
    insert = text(
        "INSERT INTO jobs (id, kind, state, spec, depends_on, attempts, max_retries, priority,"
        " created_at, started_at) VALUES (:id, 'curate', 'RUNNING', '{}', '[]', 0, 0, 0, :c, :s)"
    )
    try:
        downgrade(engine, "0007")
        with engine.begin() as conn:
            conn.execute(insert, {"id": "j1", "c": "2024-01-02 03:04:05.000006", "s": None})
            conn.execute(
                insert, {"id": "j2", "c": "2024-01-02 03:04:06", "s": "2024-01-02 04:00:00"}
            )
        upgrade(engine)
        with make_sessionmaker(engine)() as s:
            old = crud.get_job(s, job_id="j1")
            later = crud.get_job(s, job_id="j2")
            assert old is not None and later is not None
            assert old.created_at == datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
            assert later.started_at == datetime(2024, 1, 2, 4, tzinfo=UTC)
            new = crud.create_job(s, kind="curate", spec={})
            s.commit()
            newest = crud.list_jobs(s)  # newest first: the order holds across old and new rows
            assert [j.id for j in newest] == [new.id, "j2", "j1"]
            assert new.created_at.tzinfo is not None
            assert (new.created_at - datetime.now(UTC)).total_seconds() < 60
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT created_at FROM jobs WHERE id = 'j1'")).scalar()
        if engine.dialect.name == "sqlite":
            assert stored == "2024-01-02T03:04:05.000006+00:00"
        else:
            assert stored == datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
            columns = {c["name"]: c["type"] for c in inspect(engine).get_columns("jobs")}
            assert getattr(columns["started_at"], "timezone", False)
        downgrade(engine, "0007")
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT created_at FROM jobs WHERE id = 'j2'")).scalar()
        expected = datetime(2024, 1, 2, 3, 4, 6)
        assert stored == (
            str(expected) + ".000000" if engine.dialect.name == "sqlite" else expected
        )
        upgrade(engine)
    finally:
        engine.dispose()
