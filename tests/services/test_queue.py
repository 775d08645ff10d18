"""The per-team queue: order, positions, limits, and the scheduler's decision to submit.

Jobs that hold a slot are made RUNNING in the store, as if Ray ran them; Ray itself is an address
where nothing listens, so a job the scheduler does submit comes back FAILED "submit failed" —
which is how these tests see that it left the queue. The store is real (SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_client import RayJobs
from services.ray_head import free_port
from services.scheduler import Scheduler
from services.settings import Settings
from services.store import crud, queue
from services.store.db import make_engine, make_sessionmaker
from services.store.models import Job, JobState

CURATE = {"kind": "curate", "spec": {"input": "x", "output": "y"}}


def _job(session: Session, state: JobState, team: str | None, priority: int = 0) -> Job:
    spec = {"input": "x", "output": "y"}
    return crud.create_job(
        session, kind="curate", spec=spec, state=state, team=team, priority=priority
    )


def test_queue_runs_priority_first_then_first_come(session: Session) -> None:
    first = _job(session, JobState.queued, "red")
    second = _job(session, JobState.queued, "red")
    urgent = _job(session, JobState.queued, "red", priority=5)
    other_team = _job(session, JobState.queued, "blue")
    second.queued_at = first.queued_at + timedelta(seconds=1)  # a clear arrival order
    session.commit()
    red = [j.id for j in queue.queued_jobs(session) if j.team == "red"]
    assert red == [urgent.id, first.id, second.id]
    assert [queue.queue_position(session, job=j) for j in (urgent, first, second)] == [1, 2, 3]
    assert queue.queue_position(session, job=other_team) == 1
    positions = queue.queue_positions(session, teams={"red", "blue"})
    assert positions == {urgent.id: 1, first.id: 2, second.id: 3, other_team.id: 1}
    running = _job(session, JobState.running, "red")
    assert queue.queue_position(session, job=running) is None


def test_unowned_jobs_count_against_the_default_team(session: Session) -> None:
    _job(session, JobState.running, None)
    _job(session, JobState.pending, "default")
    _job(session, JobState.running, "red")
    _job(session, JobState.succeeded, "red")
    session.commit()
    assert queue.active_counts(session) == {"default": 2, "red": 1}


def test_team_limits_set_and_clear(session: Session) -> None:
    assert queue.limit_of(session, team="red", default=4) == 4
    queue.set_team_limit(session, team="red", max_running=2)
    queue.set_team_limit(session, team="red", max_running=1)
    session.commit()
    assert queue.team_limits(session) == {"red": 1}
    assert queue.limit_of(session, team="red", default=4) == 1
    assert queue.clear_team_limit(session, team="red") is True
    assert queue.clear_team_limit(session, team="red") is False
    assert queue.limit_of(session, team="red", default=4) == 4


@pytest.fixture()
def scheduler(database_url: str, tmp_path: Path) -> Iterator[Scheduler]:
    settings = Settings(home=tmp_path, team_max_running=2, auth=False)
    engine = make_engine(database_url)
    try:
        ray = RayJobs(f"http://127.0.0.1:{free_port()}", None)
        yield Scheduler(settings, make_sessionmaker(engine), ray)
    finally:
        engine.dispose()


def test_scheduler_submits_only_within_each_teams_limit(scheduler: Scheduler) -> None:
    with scheduler.sessions() as s:
        busy = [_job(s, JobState.running, "red") for _ in range(2)]
        red, blue = _job(s, JobState.queued, "red"), _job(s, JobState.queued, "blue")
        s.commit()
        ids = [j.id for j in (*busy, red, blue)]
    scheduler.dispatch()
    with scheduler.sessions() as s:
        red_now, blue_now = s.get(Job, ids[2]), s.get(Job, ids[3])
        assert red_now is not None and blue_now is not None
        assert red_now.state == "QUEUED"
        assert red_now.message == "queued: team red has 2 of its 2 job slots in use"
        assert blue_now.state == "FAILED" and blue_now.message.startswith("submit failed")
        finished = s.get(Job, ids[0])
        assert finished is not None
        crud.set_state(s, job=finished, state=JobState.succeeded)
        s.commit()
    scheduler.dispatch()  # a slot is free now
    with scheduler.sessions() as s:
        red_now = s.get(Job, ids[2])
        assert red_now is not None and red_now.state == "FAILED"
        assert red_now.message.startswith("submit failed")


def test_a_limit_of_zero_pauses_a_team(scheduler: Scheduler) -> None:
    with scheduler.sessions() as s:
        queue.set_team_limit(s, team="red", max_running=0)
        job = _job(s, JobState.queued, "red")
        s.commit()
        job_id = job.id
    scheduler.dispatch()
    with scheduler.sessions() as s:
        assert crud.get_job(s, job_id=job_id).state == "QUEUED"  # type: ignore[union-attr]


# --- over REST ----------------------------------------------------------------------------------


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(
        home=tmp_path,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        team_max_running=2,
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / ADMIN_KEY_FILE).read_text().strip()}"}
        yield client, admin


def _member(client: TestClient, admin: dict[str, str], team: str) -> dict[str, str]:
    r = client.post("/api/v1/keys", json={"name": team, "team": team}, headers=admin)
    return {"X-API-Key": r.json()["key"]}


def _occupy(client: TestClient, team: str, n: int) -> list[str]:
    """n jobs of the team RUNNING, as if on Ray: they hold the team's slots."""
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        jobs = [_job(s, JobState.running, team) for _ in range(n)]
        s.commit()
        return [j.id for j in jobs]


def test_third_job_of_a_team_waits_while_its_limit_is_two(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = api
    red, blue = _member(client, admin, "red"), _member(client, admin, "blue")
    running = _occupy(client, "red", 2)
    third = client.post("/api/v1/jobs", json=CURATE, headers=red)
    assert third.status_code == 201
    assert third.json()["state"] == "QUEUED" and third.json()["queue_position"] == 1
    assert "2 of its 2 job slots" in third.json()["message"]
    urgent = client.post("/api/v1/jobs", json={**CURATE, "priority": 10}, headers=red).json()
    assert urgent["queue_position"] == 1
    again = client.get(f"/api/v1/jobs/{third.json()['id']}", headers=red).json()
    assert again["queue_position"] == 2
    listed = client.get("/api/v1/jobs", params={"state": "QUEUED"}, headers=red).json()["data"]
    assert {j["id"]: j["queue_position"] for j in listed} == {
        urgent["id"]: 1,
        third.json()["id"]: 2,
    }
    # Another team's job is not held back by red's queue: it goes to Ray (which is down here).
    assert client.post("/api/v1/jobs", json=CURATE, headers=blue).json()["state"] == "FAILED"
    teams = {t["team"]: t for t in client.get("/api/v1/teams", headers=admin).json()}
    assert teams["red"] == {
        "team": "red",
        "max_running": 2,
        "limit_source": "default",
        "running": 2,
        "queued": 2,
    }
    # One of red's jobs ends: red's queue is submitted in its order, the urgent job first. (Ray
    # is down here, so each submission fails at once and gives its slot to the next job.)
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        ended = s.get(Job, running[0])
        crud.set_state(s, job=ended, state=JobState.succeeded)
        s.commit()
    client.app.state.scheduler.dispatch()  # type: ignore[attr-defined]
    urgent_now = client.get(f"/api/v1/jobs/{urgent['id']}", headers=red).json()
    third_now = client.get(f"/api/v1/jobs/{third.json()['id']}", headers=red).json()
    assert urgent_now["state"] == third_now["state"] == "FAILED"
    ended_at = [datetime.fromisoformat(j["ended_at"]) for j in (urgent_now, third_now)]
    assert ended_at[0] <= ended_at[1]


def test_admin_sets_a_teams_limit_and_queued_jobs_start(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = api
    red = _member(client, admin, "red")
    _occupy(client, "red", 2)
    job = client.post("/api/v1/jobs", json=CURATE, headers=red).json()
    assert job["state"] == "QUEUED"
    limit = "/api/v1/teams/red/limit"
    assert client.put(limit, json={"max_running": 3}, headers=red).status_code == 403
    r = client.put(limit, json={"max_running": 3}, headers=admin)
    assert r.status_code == 200 and r.json()["limit_source"] == "team"
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=red).json()["state"] == "FAILED"
    assert client.put(limit, json={"max_running": -1}, headers=admin).status_code == 422
    assert client.delete(limit, headers=admin).json()["max_running"] == 2
    assert client.delete(limit, headers=admin).status_code == 404
    assert [t["team"] for t in client.get("/api/v1/teams", headers=red).json()] == ["red"]


def test_cancelling_a_queued_job_never_touches_ray(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = api
    red = _member(client, admin, "red")
    _occupy(client, "red", 2)
    job = client.post("/api/v1/jobs", json=CURATE, headers=red).json()
    cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=red).json()
    assert cancelled["state"] == "CANCELLED" and cancelled["queue_position"] is None
    assert cancelled["ray_submission_id"] is None
