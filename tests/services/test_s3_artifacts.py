"""Artifacts on S3, against a real S3-compatible server over HTTP on loopback (moto's server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient

from contracts.specs import CurateSpec
from llm import storage
from ray_jobs.entrypoint import JobError, claim_output, load_spec, write_result
from services.api.app import create_app
from services.ray_head import free_port
from services.settings import Settings

moto_server = pytest.importorskip("moto.server")
BUCKET = "llmforge-test"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def test_storage_round_trip_and_listing(s3: object) -> None:
    storage.write_text(f"s3://{BUCKET}/a/b/one.json", '{"x": 1}')
    storage.write_text(f"s3://{BUCKET}/a/two.txt", "hello")
    assert storage.read_text(f"s3://{BUCKET}/a/b/one.json") == '{"x": 1}'
    files = [vars(e) for e in storage.list_files(f"s3://{BUCKET}/a")]
    assert files == [
        {"uri": f"s3://{BUCKET}/a/b/one.json", "size": 8},
        {"uri": f"s3://{BUCKET}/a/two.txt", "size": 5},
    ]
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        storage.read_text(f"s3://{BUCKET}/missing.json")


def test_control_plane_writes_specs_to_s3_and_lists_artifacts(
    s3: object,
    tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        auth=False,
        artifact_root=f"s3://{BUCKET}/llmforge",
        shared_roots=f"s3://{BUCKET}/corpus",
    )
    output = f"s3://{BUCKET}/llmforge/teams/default/runs/curated"  # the team's area
    storage.write_text(f"{output}/stats.json", json.dumps({"documents": 3}))
    with TestClient(create_app(settings)) as client:
        job = client.post(
            "/api/v1/jobs",
            json={"kind": "curate", "spec": {"input": f"s3://{BUCKET}/corpus", "output": output}},
        ).json()
        # Ray is unreachable here, but the spec was written to S3 before submission.
        spec_uri = f"s3://{BUCKET}/llmforge/jobs/{job['id']}/spec.json"
        assert load_spec(spec_uri, CurateSpec).output == output
        artifacts = client.get(f"/api/v1/jobs/{job['id']}/artifacts").json()
    assert artifacts["files"] == [{"uri": f"{output}/stats.json", "size": 16}]


def _submit(client: TestClient, spec: dict[str, object]) -> tuple[int, str]:
    r = client.post("/api/v1/jobs", json={"kind": "curate", "spec": spec})
    return r.status_code, r.text


def _offline_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        auth=False,
        artifact_root=f"s3://{BUCKET}/llmforge",
        shared_roots=f"s3://no-such-bucket,s3://{BUCKET}/in",
    )


def test_storage_problems_are_422s_before_anything_runs(
    s3: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = f"s3://{BUCKET}/llmforge/teams/default/runs/finished"
    storage.write_json(f"{finished}/result.json", {"stats": {}})
    with TestClient(create_app(_offline_settings(tmp_path))) as client:
        code, text = _submit(client, {"input": "s3://no-such-bucket/in", "output": "x"})
        assert code == 422 and "bucket 'no-such-bucket'" in text and '"input"' in text
        code, text = _submit(client, {"input": f"s3://{BUCKET}/in", "output": finished})
        assert code == 422 and "already holds the results of a finished job" in text
        assert '"output"' in text
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        code, text = _submit(client, {"input": f"s3://{BUCKET}/in", "output": "x"})
        assert code == 422 and "cannot reach the object store" in text
        assert "AWS_ENDPOINT_URL" in text


def test_a_job_claims_its_output_and_refuses_another_job_s_results(
    s3: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = f"s3://{BUCKET}/runs/claimed"
    monkeypatch.setenv("LLMFORGE_JOB_ID", "job-a")
    claim_output(output, "curate")
    assert storage.read_json(f"{output}/job.json")["job_id"] == "job-a"
    write_result(output, {"ok": True})
    claim_output(output, "curate")  # job-a again (a retry): its old marker goes first
    assert not storage.exists(f"{output}/result.json")
    write_result(output, {"ok": True})
    monkeypatch.setenv("LLMFORGE_JOB_ID", "job-b")
    with pytest.raises(JobError, match="already holds the results of job job-a"):
        claim_output(output, "curate")
    with pytest.raises(JobError, match="bucket 'missing-bucket'"):
        claim_output("s3://missing-bucket/out", "curate")


def test_the_old_endpoint_variable_is_refused_naming_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFORGE_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    with pytest.raises(ValueError, match="set AWS_ENDPOINT_URL"):
        Settings(home=tmp_path)


def test_registering_an_s3_uri_checks_roots_and_that_it_exists(s3: object, tmp_path: Path) -> None:
    """An object, or a prefix holding objects, under the team's roots registers; a prefix with
    nothing under it, a missing bucket or another team's area is a 422 at body.uri."""
    settings = Settings(
        home=tmp_path,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        auth=False,
        artifact_root=f"s3://{BUCKET}/llmforge",
        shared_roots=f"s3://{BUCKET}/corpus,s3://no-such-bucket/corpus",
    )
    storage.write_text(f"s3://{BUCKET}/corpus/web/part-0.jsonl", '{"text": "a"}\n')
    with TestClient(create_app(settings)) as client:

        def register(uri: str) -> tuple[int, str]:
            body = {"name": "web", "kind": "raw", "uri": uri}
            r = client.post("/api/v1/datasets", json=body)
            return r.status_code, r.text

        assert register(f"s3://{BUCKET}/corpus/web")[0] == 201
        assert register(f"s3://{BUCKET}/corpus/web/part-0.jsonl")[0] == 201
        for uri, says in [
            (f"s3://{BUCKET}/corpus/empty", "does not exist"),
            (f"s3://{BUCKET}/corpus/we", "does not exist"),  # a prefix of a name is not a folder
            ("s3://no-such-bucket/corpus/web", "does not exist"),
            (f"s3://{BUCKET}/llmforge/teams/red/x", "outside every read root"),
        ]:
            code, text = register(uri)
            assert code == 422 and says in text and '"loc":["body","uri"]' in text, (uri, text)
