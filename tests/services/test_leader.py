"""One scheduler per store: leader election on PostgreSQL (an advisory lock on a connection of its
own), and claims that hold even when two schedulers run at once.

Ray is a stand-in here (``FakeRay``) that records submissions and, like Ray, refuses a
submission id it already has; the processes-and-Ray version of these checks is
tests/services/test_ha_control_plane.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from services.campaigns import CampaignRunner
from services.leader import LEADER_LOCK_SPACE, Leadership, holder
from services.ray_client import AlreadySubmitted
from services.scheduler import Scheduler, hash_token
from services.serving import Serving
from services.settings import Settings
from services.store import campaigns as campaign_store
from services.store import crud, queue
from services.store.db import make_engine, make_sessionmaker
from services.store.models import CampaignState, Job, JobState
from tests.services.conftest import postgres_schema_url


@pytest.fixture()
def pg_url() -> Iterator[str]:
    yield from postgres_schema_url()


@pytest.fixture()
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def test_one_leader_per_store_and_a_standby_takes_over(pg_engine: Engine, pg_url: str) -> None:
    first, second = Leadership(pg_engine, retry_s=0.05), Leadership(pg_engine, retry_s=0.05)
    other = postgres_schema_url()
    other_store = make_engine(next(other))  # another schema: a store with a leader of its own
    try:
        assert first.lead() and first.is_leader
        assert not second.lead() and not second.is_leader
        elsewhere = Leadership(other_store)
        assert elsewhere.lead()
        elsewhere.release()
        assert "llmforge-scheduler" in (holder(pg_engine) or "")
        first.release()
        time.sleep(0.06)
        assert second.lead() and not first.is_leader
    finally:
        first.release()
        second.release()
        other_store.dispose()
        other.close()


def test_a_leader_that_loses_its_connection_stops_leading_and_the_lock_passes(
    pg_engine: Engine,
) -> None:
    """The lock's session ends (as when the leader's process or machine dies): the other takes
    over, and the old leader knows it no longer leads at its next check."""
    first, second = Leadership(pg_engine, retry_s=0.05), Leadership(pg_engine, retry_s=0.05)
    changes: list[bool] = []
    first.on_change = changes.append
    try:
        assert first.lead() and not second.lead()
        with pg_engine.begin() as conn:  # the session that holds this store's leader lock
            pid = conn.execute(
                text(
                    "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.objsubid = 2 AND l.classid::bigint = :space AND l.objid::bigint = "
                    "(hashtext(current_schema())::bigint & 4294967295) AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"space": LEADER_LOCK_SPACE},
            ).scalar_one()
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        deadline = time.monotonic() + 10
        while not second.lead():
            assert time.monotonic() < deadline, "the standby never took over"
            time.sleep(0.05)
        assert not first.lead()
        assert changes == [True, False]
    finally:
        first.release()
        second.release()


def test_sqlite_has_one_process_and_it_leads(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        assert Leadership(engine).lead()
    finally:
        engine.dispose()


class FakeRay:
    """Jobs API stand-in: submissions take a moment (so concurrent claims overlap) and are
    recorded; a known submission id is refused, as Ray refuses it."""

    dashboard_url = "http://ray.invalid:8265"

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.submitted: dict[str, dict[str, Any]] = {}
        self.attempts: list[str] = []  # every submission asked for, refused ones included
        self.lock = threading.Lock()

    def submit(self, *, submission_id: str, env: dict[str, str], **kwargs: Any) -> str:
        time.sleep(self.delay_s)
        with self.lock:
            self.attempts.append(submission_id)
            if submission_id in self.submitted:
                raise AlreadySubmitted(submission_id)
            self.submitted[submission_id] = {"env": env, **kwargs}
        return submission_id

    def env_of(self, submission_id: str) -> dict[str, str]:
        return dict(self.submitted[submission_id]["env"])


def _spec(tmp_path: Path, name: str) -> dict[str, str]:
    return {"input": str(tmp_path / "data" / "in"), "output": str(tmp_path / "data" / name)}


def _scheduler(url: str, home: Path, ray: FakeRay, leadership: Leadership | None) -> Scheduler:
    settings = Settings(
        home=home,
        artifact_root=str(home / "artifacts"),
        shared_write_roots=str(home.parent / "data"),
        auth=False,
        team_max_running=1,
    )
    return Scheduler(settings, make_sessionmaker(make_engine(url)), ray, leadership)  # type: ignore[arg-type]


def test_two_schedulers_at_once_never_fill_a_slot_twice_nor_start_a_job_twice(
    pg_url: str, tmp_path: Path
) -> None:
    """Both believe they lead (no election: the worst case of a leader that has not yet noticed
    it lost its lead). With a team limit of 1 and ten queued jobs, dispatching from both at once,
    over and over, Ray gets exactly one job; freeing its slot lets exactly one more through."""
    ray = FakeRay()
    one, two = (_scheduler(pg_url, tmp_path / n, ray, None) for n in ("a", "b"))
    with one.sessions() as s:
        ids = [
            crud.create_job(
                s,
                kind="curate",
                spec=_spec(tmp_path, f"o{i}"),
                state=JobState.queued,
                team="red",
            ).id
            for i in range(10)
        ]
        s.commit()

    def race() -> None:
        barrier = threading.Barrier(2)

        def run(scheduler: Scheduler) -> None:
            barrier.wait()
            for _ in range(5):
                scheduler.dispatch()

        threads = [threading.Thread(target=run, args=(s,)) for s in (one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    started: list[str] = []
    for _ in range(4):
        race()
        with one.sessions() as s:
            active = [j for j in crud.jobs_in_states(s, states=[JobState.pending])]
            assert len(active) == 1, [j.id for j in active]
            assert queue.active_count(s, team="red") == 1
            started.append(active[0].id)
            crud.set_state(s, job=active[0], state=JobState.succeeded)
            s.commit()
    assert len(ray.submitted) == 4 == len(set(started))
    assert len(ray.attempts) == 4  # no scheduler even tried a job the other had claimed
    assert started == ids[:4]  # in queue order
    assert sorted(ray.submitted) == sorted(f"llmforge-{i}" for i in started)


def test_a_submission_ray_has_but_the_store_missed_is_adopted_not_run_twice(
    pg_url: str, tmp_path: Path
) -> None:
    """A leader died after Ray accepted the job and before its commit: the job is still QUEUED in
    the store. The next leader's submission is refused by Ray; it adopts that run, and the job's
    token (from the run's environment) is the one the store now accepts."""
    ray = FakeRay(delay_s=0)
    scheduler = _scheduler(pg_url, tmp_path / "home", ray, None)
    with scheduler.sessions() as s:
        job = crud.create_job(
            s,
            kind="curate",
            spec=_spec(tmp_path, "o"),
            state=JobState.queued,
            team="red",
        )
        s.commit()
        job_id = job.id
    ray.submitted[f"llmforge-{job_id}"] = {"env": {"LLMFORGE_JOB_TOKEN": "lfj_earlier"}}
    scheduler.dispatch()
    with scheduler.sessions() as s:
        adopted = s.get(Job, job_id)
        assert adopted is not None and adopted.state == JobState.pending.value
        assert adopted.ray_submission_id == f"llmforge-{job_id}"
        assert adopted.token_hash == hash_token("lfj_earlier")
    assert len(ray.submitted) == 1


def test_a_standby_scheduler_does_nothing(pg_url: str, tmp_path: Path) -> None:
    ray = FakeRay(delay_s=0)
    engine = make_engine(pg_url)
    leader, standby = Leadership(engine), Leadership(engine)
    try:
        assert leader.lead()
        scheduler = _scheduler(pg_url, tmp_path / "home", ray, standby)
        with scheduler.sessions() as s:
            crud.create_job(
                s,
                kind="curate",
                spec=_spec(tmp_path, "o"),
                state=JobState.queued,
            )
            s.commit()
        scheduler.dispatch()
        scheduler.tick()
        assert ray.submitted == {}
        leader.release()
        time.sleep(1.1)  # the standby's retry interval
        scheduler.tick()
        assert len(ray.submitted) == 1
    finally:
        leader.release()
        standby.release()
        engine.dispose()


def test_every_ray_job_carries_its_llmforge_metadata(pg_url: str, tmp_path: Path) -> None:
    ray = FakeRay(delay_s=0)
    scheduler = _scheduler(pg_url, tmp_path / "home", ray, None)
    scheduler.settings.job_driver_num_cpus = 0.5
    scheduler.settings.job_driver_memory_mb = 512
    with scheduler.sessions() as s:
        pipeline = crud.create_pipeline(s, name="p")
        job = crud.create_job(
            s,
            kind="curate",
            spec=_spec(tmp_path, "o"),
            state=JobState.queued,
            team="red",
            owner="key123",
            name="clean",
            pipeline_id=pipeline.id,
            stage="curate",
        )
        s.commit()
        job_id, pipeline_id = job.id, pipeline.id
    scheduler.dispatch()
    sent = ray.submitted[f"llmforge-{job_id}"]
    assert sent["metadata"] == {
        "llmforge_job_id": job_id,
        "llmforge_kind": "curate",
        "llmforge_team": "red",
        "llmforge_pipeline": pipeline_id,
        "llmforge_stage": "curate",
        "llmforge_user": "key123",
        "llmforge_name": "clean",
        "llmforge_attempt": "0",
    }
    assert sent["entrypoint_num_cpus"] == 0.5
    assert sent["entrypoint_memory"] == 512 * 1024 * 1024


def test_only_the_leader_generates_rating_campaigns(pg_engine: Engine, tmp_path: Path) -> None:
    """A campaign left generating is resumed by the leader only: a standby neither resumes nor
    takes one submitted to it, until it becomes the leader (models no longer registered keep
    it cheap: the generation records why each cannot be served, and ends)."""
    sessions = make_sessionmaker(pg_engine)
    with sessions() as s:
        campaign = campaign_store.create_campaign(
            s, team="red", owner=None, name=None, models=["gone-a", "gone-b"],
            prompts=[("hi", None, None)], params={"max_tokens": 2, "temperature": 0, "top_p": 1},
            chat=False, seed=0, task=None, ratings_per_pair=None,
        )  # fmt: skip
        s.commit()
        campaign_id = campaign.id

    def state() -> tuple[str, list[dict[str, Any]]]:
        with sessions() as s:
            found = campaign_store.get_campaign(s, campaign_id=campaign_id)
            assert found is not None
            return found.state, found.errors

    leader, standby = Leadership(pg_engine, retry_s=0.05), Leadership(pg_engine, retry_s=0.05)
    serving = Serving(Settings(home=tmp_path))
    runner = CampaignRunner(sessions, serving, standby, poll_s=0.05)
    try:
        assert leader.lead()
        runner.start()
        assert runner.submit(campaign_id) is None
        time.sleep(0.3)
        assert state() == (CampaignState.generating.value, [])
        leader.release()
        deadline = time.monotonic() + 10
        while state()[0] == CampaignState.generating.value and time.monotonic() < deadline:
            time.sleep(0.05)
        now, errors = state()
        assert now != CampaignState.generating.value and standby.is_leader
        assert {e["model"] for e in errors} == {"gone-a", "gone-b"}
        assert all("no longer in the registry" in e["error"] for e in errors)
    finally:
        runner.stop()
        serving.close()
        leader.release()
        standby.release()
