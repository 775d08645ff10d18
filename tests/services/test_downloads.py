"""Downloading a job's output and registry files through the API: who may, which paths, ranges.

A real control plane (TestClient, keys on, SQLite), real files on disk, and moto's S3 server for
an output on object storage.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.settings import Settings
from services.store import crud
from services.store import registry as store
from services.store.models import ArtifactCategory
from tests.s3 import s3_server

Client = tuple[TestClient, dict[str, str]]
BIG = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: several chunks


@pytest.fixture()
def app_home(tmp_path: Path) -> Iterator[Client]:
    settings = Settings(
        home=tmp_path / "home", ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60
    )
    with TestClient(create_app(settings)) as client:
        key = (tmp_path / "home" / ADMIN_KEY_FILE).read_text().strip()
        yield client, {"Authorization": f"Bearer {key}"}


def _key(client: TestClient, admin: dict[str, str], role: str, team: str) -> dict[str, str]:
    r = client.post("/api/v1/keys", json={"name": "k", "role": role, "team": team}, headers=admin)
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["key"]}


def _job(client: TestClient, output: str, team: str = "red") -> str:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        job = crud.create_job(
            session, kind="curate", spec={"input": "in", "output": output}, team=team
        )
        session.commit()
        return job.id


@pytest.fixture()
def output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "stats.json").write_text('{"kept": 3}')
    (out / "data" / "part-0.bin").write_bytes(BIG)
    (tmp_path / "secret.txt").write_text("admin key")
    (out / "escape").symlink_to(tmp_path / "secret.txt")
    (out / "inside").symlink_to(out / "stats.json")
    (out / "dirlink").symlink_to(tmp_path)
    return out


def test_a_team_downloads_its_jobs_files_and_others_do_not(app_home: Client, output: Path) -> None:
    client, admin = app_home
    reader = _key(client, admin, "read_only", "red")
    blue = _key(client, admin, "member", "blue")
    job = _job(client, str(output))
    url = f"/api/v1/jobs/{job}/artifacts"
    r = client.get(f"{url}/stats.json", headers=reader)
    assert r.status_code == 200, r.text
    assert r.content == b'{"kept": 3}'
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["accept-ranges"] == "bytes" and r.headers["content-length"] == "11"
    assert "stats.json" in r.headers["content-disposition"]
    assert client.get(f"{url}/data/part-0.bin", headers=admin).content == BIG
    assert client.get(f"{url}/inside", headers=reader).content == b'{"kept": 3}'
    # another team: the job does not exist for them
    r = client.get(f"{url}/stats.json", headers=blue)
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    assert client.get(f"{url}/nope.json", headers=reader).status_code == 404
    assert client.get(f"{url}/data", headers=reader).status_code == 404  # a folder
    unreadable = output / "locked.bin"
    unreadable.write_bytes(b"x")
    unreadable.chmod(0)
    if not os.access(unreadable, os.R_OK):  # not as root
        r = client.get(f"{url}/locked.bin", headers=reader)
        assert r.status_code == 502 and "cannot read" in r.json()["detail"]
    # the listing route stays
    assert client.get(url, headers=reader).json()["output"] == str(output)
    assert client.get(f"{url}/stats.json").status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "%2E%2E/secret.txt",  # arrives as ../secret.txt
        "data/%2e%2e/%2e%2e/secret.txt",
        "%252e%252e/secret.txt",  # double-encoded: arrives as %2e%2e/secret.txt
        "..%5Csecret.txt",  # a backslash
        "%2Fetc%2Fpasswd",  # an absolute path
        "%EF%BC%8E%EF%BC%8E/secret.txt",  # full-width dots
        "%E2%80%A5/secret.txt",  # the two-dot leader
        "data//part-0.bin",
        "%2E/stats.json",
        "stats.json%00.txt",
        "escape",  # a symlink out of the output
        "dirlink/secret.txt",
    ],
)
def test_traversal_is_refused(app_home: Client, output: Path, path: str) -> None:
    client, admin = app_home
    member = _key(client, admin, "member", "red")
    job = _job(client, str(output))
    r = client.get(f"/api/v1/jobs/{job}/artifacts/{path}", headers=member)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert "admin key" not in r.text
    if r.status_code == 400:
        assert r.json()["detail"].startswith("refused path")


def test_ranges_return_the_exact_bytes(app_home: Client, output: Path) -> None:
    client, admin = app_home
    url = f"/api/v1/jobs/{_job(client, str(output))}/artifacts/data/part-0.bin"
    size = len(BIG)
    for header, (first, last) in {
        "bytes=0-0": (0, 0),
        "bytes=5-1048580": (5, 1048580),  # across a chunk boundary
        f"bytes={size - 10}-": (size - 10, size - 1),
        "bytes=-7": (size - 7, size - 1),
        f"bytes=100-{size + 99}": (100, size - 1),  # clipped to the end
    }.items():
        r = client.get(url, headers={**admin, "Range": header})
        assert r.status_code == 206, (header, r.text)
        assert r.content == BIG[first : last + 1], header
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert r.headers["content-length"] == str(last - first + 1)
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        r = client.get(url, headers={**admin, "Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{size}"
    for ignored in ("bytes=0-1,4-5", "items=0-1", "bytes=9-3"):  # served whole (RFC 9110)
        r = client.get(url, headers={**admin, "Range": ignored})
        assert r.status_code == 200 and r.content == BIG, ignored


def test_registry_files_download_for_the_team(app_home: Client, output: Path) -> None:
    client, admin = app_home
    red = _key(client, admin, "read_only", "red")
    blue = _key(client, admin, "read_only", "blue")
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        dataset = store.create_artifact(
            session, category=ArtifactCategory.dataset, kind="documents", name="d",
            uri=str(output), team="red",
        )  # fmt: skip
        model = store.create_artifact(
            session, category=ArtifactCategory.model, kind="exported", name="m",
            uri=str(output / "data" / "part-0.bin"), team="red",
        )  # fmt: skip
        session.commit()
        ids = dataset.id, model.id
    r = client.get(f"/api/v1/datasets/{ids[0]}/files/stats.json", headers=red)
    assert r.status_code == 200 and r.content == b'{"kept": 3}'
    r = client.get(
        f"/api/v1/models/{ids[1]}/files/part-0.bin", headers={**red, "Range": "bytes=1-2"}
    )
    assert r.status_code == 206 and r.content == BIG[1:3]
    assert (
        client.get(f"/api/v1/datasets/{ids[0]}/files/stats.json", headers=blue).status_code == 404
    )
    assert client.get(f"/api/v1/models/{ids[0]}/files/stats.json", headers=red).status_code == 404
    r = client.get(f"/api/v1/datasets/{ids[0]}/files/escape", headers=red)
    assert r.status_code == 400


def test_an_output_on_s3_downloads_with_ranges(
    app_home: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client, admin = app_home
    with s3_server("llmforge-dl") as s3:
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        s3.client.put_object(Bucket="llmforge-dl", Key="job/out/data/part-0.bin", Body=BIG)
        s3.client.put_object(Bucket="llmforge-dl", Key="secret.txt", Body=b"admin key")
        job = _job(client, "s3://llmforge-dl/job/out")
        url = f"/api/v1/jobs/{job}/artifacts"
        r = client.get(f"{url}/data/part-0.bin", headers=admin)
        assert r.status_code == 200 and r.content == BIG
        r = client.get(
            f"{url}/data/part-0.bin", headers={**admin, "Range": "bytes=1048570-1048590"}
        )
        assert r.status_code == 206 and r.content == BIG[1048570:1048591]
        assert client.get(f"{url}/%2E%2E/%2E%2E/secret.txt", headers=admin).status_code == 400
        assert client.get(f"{url}/data/none", headers=admin).status_code == 404
        assert client.get(f"{url}/data", headers=admin).status_code == 404


def test_cli_download_resumes(app_home: Client, output: Path, tmp_path: Path) -> None:
    """``llmforge download`` against the app (its HTTP client swapped for the TestClient)."""
    from services.cli import download
    from services.cli.api import Api

    client, admin = app_home
    job = _job(client, str(output))
    target = tmp_path / "part.bin"
    target.write_bytes(BIG[:1000])
    client.headers.update(admin)
    api = Api(client)
    assert download.fetch(api, Api.job_file(job, "data/part-0.bin"), target, True)
    assert target.read_bytes() == BIG
    assert os.path.getsize(target) == len(BIG)
    # already complete: the server answers 416 and the file stays as it is
    assert download.fetch(api, Api.job_file(job, "data/part-0.bin"), target, True)
    assert target.read_bytes() == BIG
    other = tmp_path / "stats.json"
    assert download.fetch(api, Api.job_file(job, "stats.json"), other, False)
    assert other.read_text() == '{"kept": 3}'
    assert not download.fetch(api, Api.job_file(job, "none"), tmp_path / "n", False)
    assert not (tmp_path / "n").exists()
