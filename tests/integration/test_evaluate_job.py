"""An evaluate job with benchmark tasks over REST on the shared local Ray head: items of each
task are sharded over two Ray workers, and the merged result equals one unsharded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm.eval.runner import evaluate_tasks
from llm.model.config import ModelConfig
from llm.train.data import TokenShards
from llm.train.pretrain import TrainConfig, train
from services.server import BackgroundServer
from tests.integration.test_train_job import TINY_MODEL, job_body, tiny_shards, wait_for_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TASKS, LIMIT = ["arc_easy", "blimp"], 100


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("eval-job")
    shards = tiny_shards(work / "shards")
    vocab = TokenShards(shards, "train", verify=False).vocab_size
    cfg = TrainConfig(steps=20, batch_size=8, seq_len=64, log_every=10, eval_every=20,
                      eval_batches=2, checkpoint_every=20, warmup_steps=2)  # fmt: skip
    train(cfg, ModelConfig(vocab_size=vocab, **TINY_MODEL), shards, work / "train")
    return shards, work


@pytest.fixture(scope="module")
def job(control_plane: BackgroundServer, trained: tuple[Path, Path]) -> dict[str, Any]:
    shards, work = trained
    spec = {
        "checkpoint": str(work / "train"),
        "data": str(shards),
        "output": str(work / "eval"),
        "tasks": TASKS,
        "limit": LIMIT,
        "workers": 2,
        "max_batches": 2,
        "max_new_tokens": 8,
    }
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        r = client.post("/api/v1/jobs", json=job_body("evaluate", spec))
        assert r.status_code == 201, r.text
        body = wait_for_job(client, r.json()["id"])
        body["metrics"] = client.get(f"/api/v1/jobs/{body['id']}/metrics").json()["records"]
    return body


def test_sharded_tasks_equal_one_unsharded_run(
    job: dict[str, Any], trained: tuple[Path, Path]
) -> None:
    assert job["state"] == "SUCCEEDED", job["message"]
    shards, work = trained
    result = json.loads((work / "eval" / "eval.json").read_text())
    tasks = result["tasks"]
    assert set(tasks["results"]) == {"arc_easy", *tasks["group_members"]["blimp"]}
    assert len(tasks["group_members"]["blimp"]) == 67
    assert tasks["results"]["arc_easy"]["rows"] == [0, LIMIT]
    tokenizer = shards / json.loads((shards / "manifest.json").read_text())["tokenizer"]["file"]
    whole = evaluate_tasks(str(work / "train"), str(tokenizer), TASKS, limit=LIMIT)
    checked = [("arc_easy", "acc"), ("arc_easy", "acc_norm"), ("blimp_passive_1", "acc")]
    for name, metric in checked:  # blimp scores acc only, as lm-eval's does
        got = tasks["results"][name]["metrics"][metric]["value"]
        assert got == pytest.approx(whole["results"][name]["metrics"][metric]["value"])
    blimp = tasks["groups"]["blimp"]["metrics"]["acc"]["value"]
    assert blimp == pytest.approx(whole["groups"]["blimp"]["metrics"]["acc"]["value"])
    assert (work / "eval" / "leaderboard.md").read_text().startswith("| Model |")
    assert "val_loss" in result and isinstance(result["completion"], str)


def test_task_metrics_reach_the_api(job: dict[str, Any]) -> None:
    names = {r["name"] for r in job["metrics"]}
    assert {"arc_easy/acc_norm", "blimp/acc", "val_loss"} <= names
    assert job["result"]["metrics"]["arc_easy/acc_norm"] >= 0


def test_a_bad_task_fails_the_job_naming_it(
    control_plane: BackgroundServer, trained: tuple[Path, Path]
) -> None:
    _, work = trained
    spec = {"checkpoint": str(work / "train"), "output": str(work / "bad"), "tasks": ["nope"]}
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        r = client.post("/api/v1/jobs", json={"kind": "evaluate", "spec": spec})
        body = wait_for_job(client, r.json()["id"])
    assert body["state"] == "FAILED"
    assert "unknown task 'nope'" in body["message"]


def test_nothing_to_do_is_a_422(control_plane: BackgroundServer, tmp_path: Path) -> None:
    spec = {"checkpoint": str(tmp_path), "output": str(tmp_path / "o")}
    r = httpx.post(f"{control_plane.url}/api/v1/jobs", json={"kind": "evaluate", "spec": spec})
    assert r.status_code == 422
    assert "give tasks to run" in r.text


def _llmforge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "llmforge"
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_the_cli_evaluates_through_rest_and_locally(
    control_plane: BackgroundServer, trained: tuple[Path, Path]
) -> None:
    shards, work = trained
    common = ["--tasks", "arc_easy", "--limit", "20", "--tokenizer", str(shards)]
    remote = _llmforge(
        "eval", str(work / "train"), *common, "--output", str(work / "cli-rest"), "--wait",
        env={"LLMFORGE_API_URL": control_plane.url},
    )  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    assert "| Model |" in remote.stdout and '"state": "SUCCEEDED"' in remote.stdout
    local = _llmforge("eval", str(work / "train"), *common, "--output", str(work / "cli-local"),
                      "--local")  # fmt: skip
    assert local.returncode == 0, local.stderr
    rest_result = json.loads((work / "cli-rest" / "eval.json").read_text())["tasks"]
    local_result = json.loads((work / "cli-local" / "eval.json").read_text())["tasks"]
    acc = [r["results"]["arc_easy"]["metrics"]["acc"]["value"] for r in (rest_result, local_result)]
    assert acc[0] == pytest.approx(acc[1])
    table = _llmforge("eval-table", str(work / "cli-rest" / "eval.json"),
                      str(work / "cli-local" / "eval.json"))  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "| cli-rest |" in table.stdout and "| cli-local |" in table.stdout
