"""High availability, with real processes: two control planes (``python -m services.cli serve``)
on one PostgreSQL database, and one Ray head that this module starts (and stops, for the last
test), as two replicas of the control-plane Deployment would run on a cluster.

- With a team limit of 1 and ten queued jobs, never more than one runs at a time: the store is
  sampled while they run, and Ray's own start and end times of the ten runs do not overlap.
- The leader's process is killed (SIGKILL) in the middle of a two-stage pipeline, a stage on
  Ray: the standby reports itself leader within 15 s and the pipeline completes, every job once
  (one Ray submission per job, found through the llmforge metadata every Ray job carries; no
  retry).
- With Ray stopped, ``GET /api/v1/jobs`` answers 200 and readiness stays up.

Each run gets a database of its own (``CREATE DATABASE llmforge_ha_<random>``), dropped at the
end. The jobs are cheap: curate jobs whose input is missing (they fail within seconds) for the
limit, and two chained curate stages over a six-document file for the pipeline.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from services.ray_auth import RayToken
from services.ray_client import RayJobs
from services.ray_head import LocalRayHead, free_port
from services.store.models import Job
from services.store.queue import ACTIVE
from tests.services.conftest import POSTGRES_URL

pytestmark = [pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}
ADMIN_KEY = f"lf_{secrets.token_hex(24)}"  # the deployment's key (a Secret, on a cluster)
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
TAKEOVER_S = 15


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh PostgreSQL database's URL; dropped afterwards."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as e:
        admin.dispose()
        if os.environ.get("CI") == "true":
            raise AssertionError(f"PostgreSQL must answer under CI: {e}") from e
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}")
    name = f"llmforge_ha_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayHead]:
    root = tmp_path_factory.mktemp("ha-ray")
    token_file = root / "ray-token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    token = RayToken(token_file.read_text(), str(token_file), token_file)

    def start() -> LocalRayHead:
        head = LocalRayHead(
            gcs_port=None,
            dashboard_port=free_port(),
            num_cpus=2,
            object_store_mb=128,
            log_path=root / "head.log",
            token=token,
        )
        head.start()
        # The dashboard answers before the raylet has registered; on a busy machine the node's
        # start-up can still time out then. Only a node listed ALIVE is a cluster.
        try:
            head.wait_node_id(120)
        except (RuntimeError, httpx.HTTPError):
            head.stop()
            raise
        return head

    try:
        head = start()
    except (RuntimeError, httpx.HTTPError):  # one more try, with fresh ports
        head = start()
    try:
        yield head
    finally:
        head.stop()


@dataclass
class ControlPlane:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=HEADERS, timeout=30)

    def role(self) -> str | None:
        """'leader' or 'standby' (readiness's scheduler check), None if it does not answer."""
        try:
            r = httpx.get(f"{self.url}/api/v1/health/ready", timeout=5)
        except httpx.HTTPError:
            return None
        return str(r.json()["checks"]["scheduler"]) if r.status_code == 200 else None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _start(name: str, root: Path, database: str, head: LocalRayHead) -> ControlPlane:
    port = free_port()
    home = root / f"home-{name}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMFORGE_", "RAY_"))} | {
        "PYTHONPATH": str(REPO),
        "LLMFORGE_HOME": str(home),
        "LLMFORGE_DATABASE_URL": database,
        "LLMFORGE_ARTIFACT_ROOT": str(root / "artifacts"),
        "LLMFORGE_SHARED_WRITE_ROOTS": str(root / "data"),
        "LLMFORGE_API_PORT": str(port),
        "LLMFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LLMFORGE_JOB_PYTHON": sys.executable,
        "LLMFORGE_POLL_INTERVAL_S": "0.3",
        "LLMFORGE_LEADER_RETRY_S": "0.5",
        "LLMFORGE_TEAM_MAX_RUNNING": "1",
        "LLMFORGE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "RAY_ADDRESS": head.dashboard_url,
        "RAY_AUTH_TOKEN_PATH": str(head.token.path),
    }
    log = root / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    plane = ControlPlane(name, port, process, log)
    deadline = time.monotonic() + 120
    while plane.role() is None:
        if process.poll() is not None or time.monotonic() > deadline:
            plane.stop()
            raise AssertionError(f"control plane {name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    return plane


@pytest.fixture(scope="module")
def planes(
    database: str, ray_head: LocalRayHead, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[ControlPlane], Path]]:
    root = tmp_path_factory.mktemp("ha")
    (root / "data").mkdir()
    started: list[ControlPlane] = []
    try:
        # Both at once, on an empty database: migrations and the admin key take turns.
        threads = [
            threading.Thread(target=lambda n=n: started.append(_start(n, root, database, ray_head)))
            for n in ("a", "b")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(started) == 2, "a control plane did not start (see the log above)"
        yield started, root
    finally:
        for plane in started:
            plane.stop()
        for plane in started:
            print(f"--- {plane.name} ---\n{plane.log.read_text()[-4000:]}")


def _leader_and_standby(planes: list[ControlPlane]) -> tuple[ControlPlane, ControlPlane]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        roles = {p.name: p.role() for p in planes if p.process.poll() is None}
        leaders = [p for p in planes if roles.get(p.name) == "leader"]
        if len(leaders) == 1 and len(roles) == 2:
            return leaders[0], next(p for p in planes if p is not leaders[0])
        assert len(leaders) <= 1, f"two leaders: {roles}"
        time.sleep(0.3)
    raise AssertionError(f"no single leader: {roles}")


def _wait(client: httpx.Client, path: str, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(path).raise_for_status().json()
        if body["state"] in TERMINAL:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{path} did not end in {timeout_s}s: {body}")


def _ray_runs(head: LocalRayHead) -> dict[str, list[Any]]:
    """llmforge job id -> its Ray runs, by the metadata every Ray job carries."""
    runs: dict[str, list[Any]] = {}
    for info in RayJobs(head.dashboard_url, head.token).client.list_jobs():
        job_id = (info.metadata or {}).get("llmforge_job_id")
        if job_id:
            runs.setdefault(job_id, []).append(info)
    return runs


def test_a_team_limit_of_one_holds_across_two_control_planes(
    planes: tuple[list[ControlPlane], Path], database: str, ray_head: LocalRayHead
) -> None:
    (a, b), root = planes
    leader, standby = _leader_and_standby([a, b])
    # Submitted through the standby: it stores them; only the leader hands them to Ray.
    with standby.client() as client:
        jobs = []
        # four runs: three hand-overs of the single slot, each from one finished run to the next
        for i in range(4):
            spec = {"input": str(root / "data" / "missing"), "output": str(root / "data" / f"q{i}")}
            r = client.post("/api/v1/jobs", json={"kind": "curate", "spec": spec})
            assert r.status_code == 201, r.text
            jobs.append(r.json())
        assert all(j["state"] == "QUEUED" for j in jobs)
        ids = [j["id"] for j in jobs]

        most, stop = [0], threading.Event()

        def sample() -> None:
            engine = create_engine(database)
            query = select(func.count()).select_from(Job).where(Job.state.in_(ACTIVE))
            with engine.connect() as conn:
                while not stop.is_set():
                    most[0] = max(most[0], int(conn.execute(query).scalar() or 0))
                    conn.rollback()
                    time.sleep(0.05)
            engine.dispose()

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            ended = [_wait(client, f"/api/v1/jobs/{i}") for i in ids]
        finally:
            stop.set()
            sampler.join()
    assert most[0] == 1, f"{most[0]} jobs held the team's single slot at once"
    assert all(j["state"] == "FAILED" and "missing" in (j["message"] or "") for j in ended)
    runs = _ray_runs(ray_head)
    assert all(len(runs[i]) == 1 for i in ids), {i: len(runs.get(i, [])) for i in ids}
    spans = sorted((runs[i][0].start_time, runs[i][0].end_time) for i in ids)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two runs overlapped on Ray: {spans}"
    assert leader.role() == "leader" and standby.role() == "standby"


def _pipeline(root: Path, stages: int) -> dict[str, Any]:
    corpus = root / "data" / "corpus.jsonl"
    words = "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun"
    corpus.write_text(
        "".join(json.dumps({"id": str(i), "text": f"{words} {i}. " * 3}) + "\n" for i in range(6))
    )
    body: dict[str, Any] = {"name": "ha", "stages": []}
    for i in range(stages):
        stage = {
            "name": f"c{i}",
            "kind": "curate",
            "spec": {
                "input": str(corpus),
                "output": str(root / "data" / f"curated-{i}"),
                "parts_per_file": 1,
                "steps": [{"kind": "length"}],
            },
        }
        if i:
            stage["after"] = [f"c{i - 1}"]
        body["stages"].append(stage)
    return body


def test_killing_the_leader_mid_pipeline_the_standby_finishes_it_once(
    planes: tuple[list[ControlPlane], Path], database: str, ray_head: LocalRayHead
) -> None:
    (a, b), root = planes
    leader, standby = _leader_and_standby([a, b])
    with standby.client() as client:
        r = client.post("/api/v1/pipelines", json=_pipeline(root, 2))
        assert r.status_code == 201, r.text
        pipeline_id = r.json()["id"]

        def stages() -> dict[str, dict[str, Any]]:
            body = client.get(f"/api/v1/pipelines/{pipeline_id}").raise_for_status().json()
            return {s["stage"]: s for s in body["jobs"]}

        deadline = time.monotonic() + 120
        while not {"PENDING", "RUNNING"} & {j["state"] for j in stages().values()}:
            assert time.monotonic() < deadline, stages()
            time.sleep(0.2)
        # Mid-pipeline: a stage on Ray (the dead leader submitted it, the new one must see it
        # end), c1 not yet submitted if it is c0 (the new leader must submit it, once).
        leader.kill()
        killed = time.monotonic()
        while standby.role() != "leader":
            assert time.monotonic() - killed < TAKEOVER_S, "the standby did not take over"
            time.sleep(0.2)
        took_over_s = time.monotonic() - killed
        final = _wait(client, f"/api/v1/pipelines/{pipeline_id}", timeout_s=240)
        jobs = stages()
    print(f"the standby took over {took_over_s:.1f} s after the leader was killed")
    assert final["state"] == "SUCCEEDED", jobs
    assert all(j["state"] == "SUCCEEDED" and j["attempts"] == 0 for j in jobs.values()), jobs
    runs = _ray_runs(ray_head)
    assert {s: len(runs.get(j["id"], [])) for s, j in jobs.items()} == {
        f"c{i}": 1 for i in range(2)
    }
    for stage, job in jobs.items():
        meta = runs[job["id"]][0].metadata
        assert meta["llmforge_pipeline"] == pipeline_id and meta["llmforge_stage"] == stage
        assert meta["llmforge_kind"] == "curate" and meta["llmforge_team"] == "default"
    # The dead leader's replacement joins as a standby.
    replacement = _start(f"{leader.name}2", root, database, ray_head)
    try:
        assert replacement.role() == "standby" and standby.role() == "leader"
    finally:
        replacement.stop()


def test_reads_and_readiness_do_not_need_ray(
    planes: tuple[list[ControlPlane], Path], ray_head: LocalRayHead
) -> None:
    (a, b), _ = planes
    live = [p for p in (a, b) if p.process.poll() is None]
    ray_head.stop()
    for plane in live:
        with plane.client() as client:
            r = client.get("/api/v1/jobs")
            assert r.status_code == 200 and r.json()["data"], r.text
            assert client.get(f"/api/v1/jobs/{r.json()['data'][0]['id']}").status_code == 200
        ready = httpx.get(f"{plane.url}/api/v1/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["store"] == "ok"
        assert ready.json()["checks"]["ray"].startswith("unreachable")
