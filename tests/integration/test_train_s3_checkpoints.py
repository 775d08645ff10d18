"""Train and evaluate jobs whose data and output are on S3 (moto's server over HTTP on
loopback), with the endpoint and credentials in the cluster's environment only.

A DDP run on S3 loses a worker AND its node's scratch (checkpoint staging and downloads, the
shard cache) mid-run: the restarted group resumes from the checkpoint on S3 and ends with the
losses of the same run on local disk. An FSDP run writes sharded (DCP) checkpoints to S3 from
both ranks and resumes from them. S3 keeps the newest keep_last checkpoints plus the best, and
an evaluate job reads a checkpoint and token shards from S3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from contracts.specs import TrainSpec
from ray_jobs.fault_injection import FAIL_MARKER
from services.server import BackgroundServer
from tests.integration.test_train_job import TINY_MODEL, run_with_env, tiny_shards
from tests.s3 import S3, s3_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BUCKET = "llmforge-ckpt"
STEPS, EVERY, FAIL_AT = 20, 10, 15
COMMON = {
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
    "seed": 7,
    "model": TINY_MODEL,
}
FAIL_AND_WIPE = {"debug": {"fail_at_step": FAIL_AT, "wipe_local_checkpoints": True}}


@pytest.fixture(scope="module")
def s3(control_plane: BackgroundServer) -> Iterator[S3]:
    # the control plane (in this process) reads each job's result.json from S3 too: on a
    # cluster it has the same environment as the jobs
    with s3_server(BUCKET) as server, pytest.MonkeyPatch.context() as env:
        for name, value in server.env.items():
            env.setenv(name, value)
        # the bucket is a root the shared control plane's team may read and write, granted by
        # an admin as a team's would be
        root = {"uri": f"s3://{BUCKET}", "mode": "write"}
        url = f"{control_plane.url}/api/v1/teams/default/roots"
        httpx.put(url, json=root, timeout=30).raise_for_status()
        try:
            yield server
        finally:
            httpx.request("DELETE", url, params={"uri": root["uri"]}, timeout=30)


@pytest.fixture(scope="module")
def shards(s3: S3, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same token shards on local disk and on S3."""
    local = tiny_shards(tmp_path_factory.mktemp("s3-shards") / "shards")
    return local, s3.upload_folder(local, BUCKET, "shards")


def _object(s3: S3, key: str) -> Any:
    return s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _losses(metrics_jsonl: str) -> dict[int, float]:
    """The loss per step, the latest record of a replayed step winning."""
    records = [json.loads(line) for line in metrics_jsonl.splitlines()]
    return {r["step"]: r["value"] for r in records if r["name"] == "loss"}


def _complete(s3: S3, prefix: str) -> set[str]:
    """The step folders under prefix whose completion marker is there."""
    return {k.split("/")[-2] for k in s3.keys(BUCKET, prefix) if k.endswith("/trainer_state.json")}


@pytest.fixture(scope="module")
def local_run(
    control_plane: BackgroundServer, shards: tuple[Path, str], tmp_path_factory
) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("train-local") / "out"
    job = run_with_env(control_plane, {"data": str(shards[0]), "output": str(out), **COMMON}, {})
    return job, out


@pytest.fixture(scope="module")
def s3_run(control_plane: BackgroundServer, s3: S3, shards: tuple[Path, str]) -> dict[str, Any]:
    spec = {"data": shards[1], "output": f"s3://{BUCKET}/runs/ddp", **COMMON, **FAIL_AND_WIPE}
    return run_with_env(control_plane, spec, s3.env)


def test_the_s3_run_resumes_from_s3_and_matches_the_local_run(
    s3_run: dict[str, Any], local_run: tuple[dict[str, Any], Path], s3: S3
) -> None:
    local_job, out = local_run
    assert local_job["state"] == "SUCCEEDED", local_job["message"]
    assert s3_run["state"] == "SUCCEEDED", s3_run["message"]
    assert f"injected failure at step {FAIL_AT}" in s3_run["logs"]
    marker = json.loads(_object(s3, f"runs/ddp/{FAIL_MARKER}"))
    assert marker == {"step": FAIL_AT, "wiped_checkpoints": True}
    # the node's scratch was wiped: the step-10 checkpoint came back from S3
    assert (
        f"fetching checkpoint s3://{BUCKET}/runs/ddp/checkpoints/step_00000010" in (s3_run["logs"])
    )
    result, expected = s3_run["result"], local_job["result"]
    assert result["steps"] == STEPS
    assert result["checkpoint"] == f"s3://{BUCKET}/runs/ddp/checkpoints/step_{STEPS:08d}"
    assert len(result["nodes"]) == 2
    # the same seed gives the same losses, through a failure and a resume from S3
    remote = _losses(_object(s3, "runs/ddp/metrics.jsonl").decode())
    assert sorted(remote) == list(range(5, STEPS + 1, 5))
    assert remote == pytest.approx(_losses((out / "metrics.jsonl").read_text()), rel=1e-5)
    assert result["first_loss"] == pytest.approx(expected["first_loss"], rel=1e-5)
    assert result["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-5)


def test_s3_keeps_the_newest_checkpoint_and_the_best(s3_run: dict[str, Any], s3: S3) -> None:
    assert s3_run["state"] == "SUCCEEDED", s3_run["message"]
    best = json.loads(_object(s3, "runs/ddp/checkpoints/best.json"))
    assert best == s3_run["result"]["best_checkpoint"]
    # keep_last=1: all but the newest complete checkpoint were deleted, except the best
    assert _complete(s3, "runs/ddp/checkpoints/") == {f"step_{STEPS:08d}", best["path"]}
    keys = s3.keys(BUCKET, "runs/ddp/")
    assert "runs/ddp/train_summary.json" in keys
    assert any(k.startswith("runs/ddp/ray/") for k in keys)  # Ray Train's run folder


@pytest.fixture(scope="module")
def fsdp_run(control_plane: BackgroundServer, s3: S3, shards: tuple[Path, str]) -> dict[str, Any]:
    spec = {
        "data": shards[1],
        "output": f"s3://{BUCKET}/runs/fsdp",
        "parallelism": "fsdp",
        **COMMON,
        "keep_last": None,
        **FAIL_AND_WIPE,
    }
    return run_with_env(control_plane, spec, s3.env)


def test_a_sharded_checkpoint_is_written_by_both_ranks_and_resumed(
    fsdp_run: dict[str, Any], s3: S3
) -> None:
    assert fsdp_run["state"] == "SUCCEEDED", fsdp_run["message"]
    assert f"injected failure at step {FAIL_AT}" in fsdp_run["logs"]
    assert (
        f"fetching checkpoint s3://{BUCKET}/runs/fsdp/checkpoints/step_00000010"
        in (fsdp_run["logs"])
    )
    assert fsdp_run["result"]["steps"] == STEPS
    for step in (EVERY, STEPS):
        names = {
            k.rsplit("/", 1)[1] for k in s3.keys(BUCKET, f"runs/fsdp/checkpoints/step_{step:08d}/")
        }
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer_state.json"} <= names
    # the steps replayed after the resume logged the losses of the first attempt
    remote = _losses(_object(s3, "runs/fsdp/metrics.jsonl").decode())
    assert sorted(remote) == list(range(5, STEPS + 1, 5))


def test_evaluate_reads_a_checkpoint_and_shards_from_s3(
    control_plane: BackgroundServer, s3_run: dict[str, Any], s3: S3, shards: tuple[Path, str]
) -> None:
    assert s3_run["state"] == "SUCCEEDED", s3_run["message"]
    spec = {
        "checkpoint": f"s3://{BUCKET}/runs/ddp",  # a train output: its latest checkpoint
        "data": shards[1],
        "output": f"s3://{BUCKET}/eval",
        "max_batches": 2,
        "max_new_tokens": 4,
    }
    job = run_with_env(control_plane, spec, s3.env, kind="evaluate")
    assert job["state"] == "SUCCEEDED", job["message"]
    assert job["result"]["checkpoint"] == s3_run["result"]["checkpoint"]
    assert len(job["result"]["nodes"]) == 1
    result = json.loads(_object(s3, "eval/eval.json"))
    assert result["val_loss"] == pytest.approx(job["result"]["val_loss"])


def test_checkpoint_storage_is_refused_with_what_to_do_instead() -> None:
    with pytest.raises(ValidationError, match="checkpoints always live at <output>/checkpoints"):
        TrainSpec.model_validate({"data": "d", "output": "o", "checkpoint_storage": "s3://b/p"})
    spec = TrainSpec.model_validate({"data": "d", "output": "o", "placement_strategy": "SPREAD"})
    assert spec.placement_strategy == "SPREAD"
    with pytest.raises(ValidationError, match="placement_strategy"):
        TrainSpec.model_validate({"data": "d", "output": "o", "placement_strategy": "ANY"})
