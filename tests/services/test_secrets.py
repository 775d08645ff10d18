"""Secrets stay secret: the database password, API keys, job tokens and cloud credentials never
show in settings output, health answers, logs or a Ray job's environment, and a job's token
stops working when the job ends."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_client import RayJobs
from services.ray_head import free_port
from services.redact import redact
from services.roots import team_roots
from services.scheduler import JOB_TOKEN_PREFIX, Scheduler, hash_token, issue_token
from services.settings import Settings
from services.store import crud
from services.store.db import make_engine, make_sessionmaker
from services.store.models import Job, JobState
from tests.services.conftest import postgres_schema_url

PASSWORD = "pw-Xy7-s3cret"
DB_URL = f"postgresql+psycopg://llm:{PASSWORD}@db.internal:5432/llmforge"


def test_settings_show_the_database_url_masked() -> None:
    settings = Settings(database_url=DB_URL)
    for shown in (repr(settings), str(settings), str(settings.public())):
        assert PASSWORD not in shown
    assert (
        settings.public()["database_url"]
        == "postgresql+psycopg://llm:***@db.internal:5432/llmforge"
    )
    assert settings.public()["resolved_database_url"].startswith("postgresql+psycopg://llm:***@")


def test_redact_masks_url_passwords_keys_tokens_and_bearer_values() -> None:
    key, token = "lf_" + "a" * 43, JOB_TOKEN_PREFIX + "b" * 43
    text = f"url {DB_URL} key {key} token {token} header Authorization: Bearer abc.def"
    clean = redact(text)
    for secret in (PASSWORD, key, token, "abc.def"):
        assert secret not in clean
    assert "llm:***@db.internal" in clean and "Bearer ***" in clean


@pytest.fixture()
def postgres_with_password() -> Iterator[str]:
    """The local PostgreSQL (trust auth, so any password is accepted) by a URL with a password."""
    for url in postgres_schema_url():
        yield url.replace(
            "postgresql+psycopg://postgres@", f"postgresql+psycopg://postgres:{PASSWORD}@"
        )


def test_password_never_reaches_logs_settings_or_health(
    postgres_with_password: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(
        home=tmp_path,
        database_url=postgres_with_password,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / ADMIN_KEY_FILE).read_text().strip()}"}
        shown = client.get("/api/v1/settings", headers=admin)
        assert shown.status_code == 200 and "postgres:***@" in shown.json()["database_url"]
        assert client.get("/api/v1/settings").status_code == 401
        ready = client.get("/api/v1/health/ready")
        assert ready.json()["checks"]["store"] == "ok"
        # A submission that fails (Ray is down) logs its traceback; a message quoting the URL.
        client.post(
            "/api/v1/jobs",
            json={"kind": "curate", "spec": {"input": "x", "output": "y"}},
            headers=admin,
        )
        logging.getLogger("llmforge.test").info("store at %s", postgres_with_password)
        try:
            raise RuntimeError(f"cannot connect to {postgres_with_password}")
        except RuntimeError:
            logging.getLogger("llmforge.test").exception("failed")
    for answer in (shown.text, ready.text):
        assert PASSWORD not in answer
    assert "store: postgresql+psycopg://postgres:***@" in caplog.text
    assert "submitting job" in caplog.text and "cannot connect to" in caplog.text
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_job_env_carries_its_token_and_no_other_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-123")
    monkeypatch.setenv("LLMFORGE_API_KEY", "lf_" + "k" * 43)
    settings = Settings(home=tmp_path, database_url=DB_URL, data_root=str(tmp_path / "evaldata"))
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    scheduler = Scheduler(settings, make_sessionmaker(engine), RayJobs("http://127.0.0.1:1", None))
    with scheduler.sessions() as session:
        job = crud.create_job(session, kind="curate", spec={"input": "x", "output": "y"})
        token = issue_token(job)
        allowed = team_roots(settings, session, "default")
        env = scheduler.job_env(job, token, allowed)
    engine.dispose()
    assert set(env) == {
        "LLMFORGE_API_URL",
        "LLMFORGE_JOB_ID",
        "LLMFORGE_JOB_TOKEN",
        "LLMFORGE_READ_ROOTS",
        "LLMFORGE_WRITE_ROOTS",
        "LLMFORGE_DATA_ROOT",  # the evaluation data, every team's to read
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
    }
    # the job's roots: its team's area, never the control plane's home itself
    assert json.loads(env["LLMFORGE_WRITE_ROOTS"]) == [settings.team_area("default")]
    assert str(tmp_path.resolve()) not in json.loads(env["LLMFORGE_READ_ROOTS"])
    assert token.startswith(JOB_TOKEN_PREFIX) and job.token_hash == hash_token(token)
    values = " ".join(env.values())
    for secret in (PASSWORD, "aws-secret-value-123", "lf_kkkk"):
        assert secret not in values


def test_job_token_works_for_its_job_only_and_dies_when_the_job_ends(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60
    )
    record = {"records": [{"step": 1, "name": "loss", "value": 2.0, "time": 0.0}]}
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / ADMIN_KEY_FILE).read_text().strip()}"}
        with client.app.state.sessions() as s:  # type: ignore[attr-defined]
            jobs = [
                crud.create_job(s, kind="train", spec={}, state=JobState.running) for _ in range(3)
            ]
            tokens = [issue_token(j) for j in jobs]
            ids = [j.id for j in jobs]
            s.commit()

        def post(job_id: str, token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return client.post(
                f"/api/v1/jobs/{job_id}/metrics", json=record, headers=headers
            ).status_code

        assert post(ids[0], tokens[0]) == 202
        assert post(ids[1], tokens[0]) == 401  # another job's token
        with client.app.state.sessions() as s:  # type: ignore[attr-defined]
            first = s.get(Job, ids[0])
            crud.set_state(s, job=first, state=JobState.succeeded)  # as the poller records it
            s.commit()
        assert post(ids[0], tokens[0]) == 401
        assert client.post(f"/api/v1/jobs/{ids[1]}/cancel", headers=admin).status_code == 200
        assert post(ids[1], tokens[1]) == 401
        assert post(ids[2], tokens[2]) == 202


def test_credentials_in_a_spec_uri_are_refused_and_not_stored(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60, auth=False
    )
    spec = {"input": "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/corpus", "output": "s3://bucket/out"}
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/jobs", json={"kind": "curate", "spec": spec})
        assert r.status_code == 422 and "credentials are not allowed" in r.text
        assert "wJalrXUtnFEMI" not in r.text
        assert client.get("/api/v1/jobs").json()["count"] == 0
