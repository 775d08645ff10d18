"""A train job whose checkpoints Ray Train keeps on S3 (moto's server over HTTP on loopback)
loses a worker AND its local checkpoints mid-run: the restarted group copies the latest
checkpoint back from S3 and finishes; S3 holds the newest keep_last checkpoints and the best."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from ray_jobs.fault_injection import FAIL_MARKER
from services.ray_head import free_port
from services.server import BackgroundServer
from tests.integration.test_train_job import TINY_MODEL, run_with_env, tiny_shards

moto_server = pytest.importorskip("moto.server")
pytestmark = [pytest.mark.ray, pytest.mark.slow]
BUCKET = "llmforge-ckpt"
STEPS, EVERY, FAIL_AT = 30, 10, 25


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, Any]]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture(scope="module")
def job(
    control_plane: BackgroundServer, s3: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    endpoint, _ = s3
    work = tmp_path_factory.mktemp("train-s3")
    spec = {
        "data": str(tiny_shards(work / "shards")),
        "output": str(work / "out"),
        "checkpoint_storage": f"s3://{BUCKET}/runs/tiny",
        "keep_last": 1,
        "steps": STEPS,
        "workers": 2,
        "batch_size": 4,
        "warmup_steps": 5,
        "log_every": 5,
        "eval_every": EVERY,
        "eval_batches": 2,
        "checkpoint_every": EVERY,
        "max_failures": 1,
        "tensorboard": False,
        "model": TINY_MODEL,
        "debug": {"fail_at_step": FAIL_AT, "wipe_local_checkpoints": True},
    }
    # the cluster's S3 endpoint and credentials, as an operator's environment would give them
    cluster_env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    body = run_with_env(control_plane, spec, cluster_env)
    return body, work / "out"


def test_the_restarted_group_resumes_from_s3(job: tuple[dict[str, Any], Path]) -> None:
    body, out = job
    assert body["state"] == "SUCCEEDED", body["message"]
    assert json.loads((out / FAIL_MARKER).read_text()) == {
        "step": FAIL_AT,
        "wiped_checkpoints": True,
    }
    # the local disk lost steps 10 and 20; step 20 came back from S3, then 30 was written
    assert "restored the step-20 checkpoint from" in body["logs"]
    assert body["result"]["steps"] == STEPS
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert f"step_{STEPS:08d}" in kept and "step_00000010" not in kept


def test_s3_holds_the_newest_checkpoint_and_the_best(
    job: tuple[dict[str, Any], Path], s3: tuple[str, Any]
) -> None:
    body, _ = job
    _, client = s3
    keys = [
        o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/tiny/")["Contents"]
    ]
    states = [k for k in keys if k.endswith("trainer_state.json") and "/best/" not in k]
    # keep_last=1: Ray Train pruned all but the newest persisted checkpoint
    assert len(states) == 1, states
    state_key = states[0]
    state = json.loads(client.get_object(Bucket=BUCKET, Key=state_key)["Body"].read())
    assert state["step"] == STEPS
    best = json.loads(client.get_object(Bucket=BUCKET, Key="runs/tiny/best.json")["Body"].read())
    assert best == {**body["result"]["best_checkpoint"], "uri": best["uri"]}
    assert best["uri"] == f"s3://{BUCKET}/runs/tiny/best/{best['path']}"
    best_files = {k.rsplit("/", 1)[1] for k in keys if f"/best/{best['path']}/" in k}
    assert {"config.json", "model.safetensors", "trainer_state.json"} <= best_files


def test_checkpoint_storage_takes_s3_or_a_path_only() -> None:
    from pydantic import ValidationError

    from contracts.specs import TrainSpec

    base = {"data": "d", "output": "o"}
    assert TrainSpec(**base, checkpoint_storage="s3://b/p").checkpoint_storage == "s3://b/p"
    assert TrainSpec(**base, checkpoint_storage="/shared/ckpt").checkpoint_storage
    with pytest.raises(ValidationError, match="checkpoint_storage"):
        TrainSpec(**base, checkpoint_storage="gs://bucket/x")
    with pytest.raises(ValidationError, match="keep_last"):
        TrainSpec(**base, keep_last=0)
