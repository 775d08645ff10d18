"""The whole journey through the REST API on a real local Ray cluster, then on a two-node one.

curate → tokenize → train (Ray Train, 2 CPU workers, DDP over gloo) → evaluate, on the Common
Crawl sample in ../shared/data; then the outputs are checked against each other.

The same stages then run on a team cluster made on this machine (``tests.cluster``): two Ray
nodes that share no disk, each with its own scratch folder, wiped between stages, and moto's S3
server over HTTP as the only storage they share, with the control plane's artifact root on it.
Their outputs must equal the local-disk run's, their work must have run on both nodes, and a
training job whose worker node dies must finish on the other from its checkpoint on S3.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from contracts.jobs import JOB_TYPES, JobKind
from llm import storage
from llm.tokenizer.shards import read_manifest
from ray_jobs.fault_injection import PAUSE_MARKER
from services.demo import pipeline_body
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings
from services.store import crud
from services.store.models import JobState
from tests.cluster import Cluster, ray_cluster
from tests.s3 import s3_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TRAIN_STEPS = 40
BUCKET = "llmforge-team"


def _wait(client: httpx.Client, path: str, done: set[str], timeout_s: float = 600) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(path).raise_for_status().json()
        if body["state"] in done:
            return body
        time.sleep(1)
    raise AssertionError(f"{path} did not reach {done} in {timeout_s}s: {body}")


def _body(corpus: str, work: str) -> dict[str, Any]:
    body = pipeline_body(corpus, work, steps=TRAIN_STEPS, workers=2)
    body["stages"][1]["spec"]["vocab_size"] = 1024
    body["stages"][2]["spec"].update(
        log_every=5,
        eval_every=20,
        checkpoint_every=20,
        model={"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
    )
    return body


@pytest.fixture(scope="module")
def pipeline(
    control_plane: BackgroundServer, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("pipeline")
    corpus = shared_data / "web" / "cc_dolma_sample"
    body = _body(str(corpus), str(work))
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        r = client.post("/api/v1/pipelines", json=body)
        assert r.status_code == 201, r.text
        final = _wait(client, f"/api/v1/pipelines/{r.json()['id']}", {"SUCCEEDED", "FAILED"})
    return final, work


def _jobs(pipeline: tuple[dict[str, Any], Path]) -> dict[str, dict[str, Any]]:
    return {j["stage"]: j for j in pipeline[0]["jobs"]}


def test_pipeline_succeeds_and_every_job_shows_in_ray(
    pipeline: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    final, _ = pipeline
    assert final["state"] == "SUCCEEDED", [(j["stage"], j["message"]) for j in final["jobs"]]
    for job in final["jobs"]:  # what ${stage.result.…} placeholders are checked against
        JOB_TYPES[JobKind(job["kind"])].result.model_validate(job["result"])
    ray = control_plane.app.state.ray
    submitted = {j.submission_id for j in ray.client.list_jobs()}
    assert {j["ray_submission_id"] for j in final["jobs"]} <= submitted


def test_curate_counts_add_up(pipeline: tuple[dict[str, Any], Path]) -> None:
    _, work = pipeline
    stats = json.loads((work / "curated" / "stats.json").read_text())
    removed = sum(v["documents"] for v in stats["removed"].values())
    assert stats["documents"] == 697 == stats["kept"]["documents"] + removed
    kept = pq.read_table(work / "curated" / "data")
    rejected = pq.read_table(work / "curated" / "rejected")
    assert kept.num_rows == stats["kept"]["documents"]
    assert rejected.num_rows == removed
    assert set(kept.column("id").to_pylist()).isdisjoint(rejected.column("id").to_pylist())
    assert all(rejected.column("reason").to_pylist())
    assert "gopher_quality:short_doc" in stats["removed"]
    assert [s["step"] for s in stats["steps"]] == [
        "length",
        "language",
        "gopher_quality",
        "pii",
        "exact_dedup",
        "minhash_dedup",
    ]
    assert any(reason.startswith("language:") for reason in stats["removed"])
    assert stats["redacted"]["documents"] > 0 and stats["redacted"]["by_type"]


def test_token_shards_are_consistent(pipeline: tuple[dict[str, Any], Path]) -> None:
    _, work = pipeline
    manifest = read_manifest(work / "tokens", verify=True)
    stats = json.loads((work / "tokens" / "stats.json").read_text())
    kept = pq.read_table(work / "curated" / "data").num_rows
    docs = sum(s["documents"] for s in manifest["splits"].values())
    assert docs == kept
    assert manifest["vocab_size"] == 1024 and manifest["dtype"] == "uint16"
    assert stats["splits"]["val"]["tokens"] == manifest["splits"]["val"]["tokens"] > 0


def test_training_loss_fell_and_metrics_arrived(
    pipeline: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    jobs = _jobs(pipeline)
    train = jobs["train"]
    result = train["result"]
    assert result["steps"] == TRAIN_STEPS
    assert result["final_loss"] < result["first_loss"] - 0.3
    r = httpx.get(
        f"{control_plane.url}/api/v1/jobs/{train['id']}/metrics",
        params={"name": "loss"},
        timeout=30,
    ).json()
    assert [m["step"] for m in r["records"]] == list(range(5, TRAIN_STEPS + 1, 5))
    tps = httpx.get(
        f"{control_plane.url}/api/v1/jobs/{train['id']}/metrics",
        params={"name": "tokens_per_s"},
        timeout=30,
    ).json()["records"]
    assert tps and all(m["value"] > 0 for m in tps)
    checkpoints = sorted(p.name for p in (pipeline[1] / "train" / "checkpoints").iterdir())
    assert checkpoints == ["best.json", "step_00000020", "step_00000040"]


def test_evaluation_reports_perplexity_and_a_sample(
    pipeline: tuple[dict[str, Any], Path],
) -> None:
    ev = _jobs(pipeline)["evaluate"]["result"]
    assert ev["val_ppl"] > 1 and abs(ev["val_loss"] - math.log(ev["val_ppl"])) < 1e-6
    assert isinstance(ev["completion"], str) and ev["checkpoint"].endswith("step_00000040")


def _registered_with_lineage(url: str, jobs: dict[str, dict[str, Any]], output: str) -> None:
    """The registry recorded the run's model, read from its output (local or on S3), with its
    evaluation and the chain of datasets that made it."""
    with httpx.Client(base_url=url, timeout=60) as api:
        params = {"job_id": jobs["train"]["id"]}
        [model] = api.get("/api/v1/models", params=params).json()["data"]
        assert model["kind"] == "checkpoint" and model["uri"] == output
        assert model["stats"]["parameters"] > 0 and model["stats"]["steps"] == TRAIN_STEPS
        assert model["stats"]["checkpoint"].endswith(f"step_{TRAIN_STEPS:08d}")
        [evaluation] = model["evaluations"]
        assert evaluation["job_id"] == jobs["evaluate"]["id"]
        assert evaluation["metrics"]["val_ppl"] > 1
        lineage = api.get(f"/api/v1/models/{model['id']}/lineage").json()
    assert [a["kind"] for a in lineage["chain"]] == ["checkpoint", "token_shards", "documents"]
    assert [a["job_id"] for a in lineage["chain"]] == [
        jobs["train"]["id"],
        jobs["tokenize"]["id"],
        jobs["curate"]["id"],
    ]
    tokens, documents = lineage["chain"][1], lineage["chain"][2]
    assert tokens["stats"]["vocab_size"] == 1024 and tokens["stats"]["tokens"] > 0
    assert documents["stats"]["documents_in"] == 697
    assert documents["stats"]["documents"] + sum(documents["stats"]["removed"].values()) == 697
    assert tokens["stats"]["documents"] == documents["stats"]["documents"]


def test_the_pipeline_registers_its_datasets_and_model_with_lineage(
    pipeline: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    _registered_with_lineage(control_plane.url, _jobs(pipeline), str(pipeline[1] / "train"))


def _exports_to_hugging_face(url: str, jobs: dict[str, dict[str, Any]], out: Path) -> None:
    """``models export-hf``'s work: the registered model as a transformers folder whose logits
    equal the checkpoint's."""
    import torch
    import transformers

    from llm.train.checkpoint.full import load_model
    from llm.train.checkpoint.location import fetch
    from services.cli.api import Api
    from services.cli.export_hf import export_model

    with httpx.Client(base_url=url, timeout=60) as http:
        [model] = http.get("/api/v1/models", params={"job_id": jobs["train"]["id"]}).json()["data"]
        report = export_model(Api(http), model["id"], out)
    assert report["files"] == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]  # fmt: skip
    assert report["checkpoint"] == model["stats"]["checkpoint"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("The cat sat on the mat.")["input_ids"]])
    ours = load_model(fetch(model["stats"]["checkpoint"]))
    with torch.no_grad():
        theirs, mine = hf(ids).logits, ours(ids)[0]
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=1e-4)


def test_the_registered_model_exports_to_hugging_face_from_the_cli(
    pipeline: tuple[dict[str, Any], Path],
    control_plane: BackgroundServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli import main

    jobs = _jobs(pipeline)
    _exports_to_hugging_face(control_plane.url, jobs, tmp_path / "hf")
    monkeypatch.setenv("LLMFORGE_API_URL", control_plane.url)
    with httpx.Client(base_url=control_plane.url, timeout=60) as http:
        [model] = http.get("/api/v1/models", params={"job_id": jobs["train"]["id"]}).json()["data"]
    capsys.readouterr()
    assert main(["models", "export-hf", model["id"], "-o", str(tmp_path / "cli")]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == str(tmp_path / "cli")
    assert main(["models", "export-hf", "no-such-model", "-o", str(tmp_path / "x")]) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "not_found"


def test_missing_input_fails_the_job_naming_the_path(
    control_plane: BackgroundServer, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-corpus"
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        job = client.post(
            "/api/v1/jobs",
            json={
                "kind": "curate",
                "spec": {"input": str(missing), "output": str(tmp_path / "out")},
            },
        ).json()
        final = _wait(client, f"/api/v1/jobs/{job['id']}", {"SUCCEEDED", "FAILED"}, 300)
    assert final["state"] == "FAILED"
    assert str(missing) in final["message"]


def test_a_job_ray_forgot_is_failed_not_left_running(control_plane: BackgroundServer) -> None:
    """The reconciler's view after a Ray restart: the store says RUNNING, Ray has no record."""
    with control_plane.app.state.sessions() as session:
        job = crud.create_job(
            session, kind="curate", spec={"input": "x", "output": "y"}, state=JobState.running
        )
        job.ray_submission_id = "llmforge-never-submitted"
        session.commit()
        job_id = job.id
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        final = _wait(client, f"/api/v1/jobs/{job_id}", {"FAILED"}, 60)
    assert final["message"].startswith("lost:")


# --- the same stages on two nodes that share no disk ---------------------------------------


@dataclass
class TeamCluster:
    cluster: Cluster
    url: str
    work: str  # the s3:// prefix the stages write under
    root_uri: str  # the control plane's artifact root
    home: Path  # the control plane's own folder
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _resolve(spec: dict[str, Any], outputs: dict[str, str]) -> dict[str, Any]:
    """The stage's spec with ``${stage.output}`` placeholders replaced by that stage's output."""
    text = re.sub(r"\$\{(\w+)\.output\}", lambda m: outputs[m.group(1)], json.dumps(spec))
    resolved: dict[str, Any] = json.loads(text)
    return resolved


@pytest.fixture(scope="module")
def team(
    pipeline: tuple[dict[str, Any], Path],
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TeamCluster]:
    """The demo's stages submitted one by one to a control plane whose artifact root is on S3
    and whose Ray cluster has two nodes; both nodes' scratch is wiped before every stage."""
    root = tmp_path_factory.mktemp("team")
    with (
        s3_server(BUCKET) as s3,
        pytest.MonkeyPatch.context() as patch,
        ray_cluster(root, s3.env) as cluster,
    ):
        for name, value in s3.env.items():  # the control plane reads S3 with the same settings
            patch.setenv(name, value)
        patch.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.head.ray.token.path))
        settings = Settings(
            home=root / "home",
            ray_address=cluster.head.ray.dashboard_url,
            artifact_root=f"s3://{BUCKET}/llmforge",
            # the team's storage roots: it reads the corpus and writes its work there
            shared_roots=f"s3://{BUCKET}/corpus",
            shared_write_roots=f"s3://{BUCKET}/work",
            job_python=sys.executable,
            api_port=free_port(),
            poll_interval_s=0.3,
            auth=False,
        )
        server = BackgroundServer(settings)
        server.start()
        try:
            corpus = f"s3://{BUCKET}/corpus/cc_dolma_sample"
            storage.upload(shared_data / "web" / "cc_dolma_sample", corpus)
            team = TeamCluster(
                cluster,
                server.url,
                f"s3://{BUCKET}/work",
                settings.resolved_artifact_root,
                settings.home,
            )
            body = _body(corpus, team.work)
            # one training worker on each node
            body["stages"][2]["spec"]["placement_strategy"] = "STRICT_SPREAD"
            outputs: dict[str, str] = {}
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for stage in body["stages"]:
                    cluster.wipe_scratch()
                    spec = _resolve(stage["spec"], outputs)
                    r = client.post("/api/v1/jobs", json={"kind": stage["kind"], "spec": spec})
                    assert r.status_code == 201, r.text
                    job = _wait(client, f"/api/v1/jobs/{r.json()['id']}", {"SUCCEEDED", "FAILED"})
                    assert job["state"] == "SUCCEEDED", (stage["name"], job["message"])
                    team.jobs[stage["name"]] = job
                    outputs[stage["name"]] = spec["output"]
            yield team
        finally:
            server.stop()


def _kept_ids(folder: str) -> list[str]:
    filesystem, path = storage.filesystem(storage.join(folder, "curated", "data"))
    return sorted(pq.read_table(path, filesystem=filesystem).column("id").to_pylist())


def test_two_nodes_give_the_local_run_s_results(
    pipeline: tuple[dict[str, Any], Path], team: TeamCluster
) -> None:
    local = _jobs(pipeline)
    assert _kept_ids(team.work) == _kept_ids(str(pipeline[1]))
    s3_tokens = team.jobs["tokenize"]["result"]["stats"]["splits"]
    assert s3_tokens == local["tokenize"]["result"]["stats"]["splits"]
    s3_train, local_train = team.jobs["train"]["result"], local["train"]["result"]
    assert s3_train["steps"] == local_train["steps"] == TRAIN_STEPS
    for key in ("first_loss", "final_loss"):
        assert s3_train[key] == pytest.approx(local_train[key], rel=1e-4)
    assert team.jobs["evaluate"]["result"]["val_loss"] == pytest.approx(
        local["evaluate"]["result"]["val_loss"], rel=1e-4
    )


def test_the_registry_reads_the_runs_records_from_s3(team: TeamCluster, tmp_path: Path) -> None:
    _registered_with_lineage(team.url, team.jobs, storage.join(team.work, "train"))
    _exports_to_hugging_face(team.url, team.jobs, tmp_path / "hf")  # files from S3, via the API


def test_the_work_ran_on_both_nodes(team: TeamCluster) -> None:
    both = {node.node_id for node in team.cluster.nodes}
    assert set(team.jobs["curate"]["result"]["nodes"]) == both
    assert set(team.jobs["tokenize"]["result"]["nodes"]) <= both
    ranks = team.jobs["train"]["result"]["nodes"]
    assert len(ranks) == 2 and set(ranks) == both  # rank 0 on one node, rank 1 on the other


def test_every_artifact_is_on_s3(team: TeamCluster) -> None:
    files = {e.uri.removeprefix(team.work + "/") for e in storage.list_files(team.work)}
    for stage in ("curated", "tokens", "train", "eval"):
        assert f"{stage}/result.json" in files
    assert "tokens/manifest.json" in files and "tokens/tokenizer.json" in files
    assert any(re.fullmatch(r"train/checkpoints/step_\d+/.+", f) for f in files)
    assert f"jobs/{team.jobs['train']['id']}/spec.json" in {
        e.uri.removeprefix(team.root_uri + "/") for e in storage.list_files(team.root_uri)
    }
    assert not (team.home / "artifacts").exists()  # nothing on the control plane's disk


def _steps(client: httpx.Client, job_id: str) -> list[int]:
    records = client.get(f"/api/v1/jobs/{job_id}/metrics", params={"name": "loss"}).json()
    return [int(r["step"]) for r in records["records"]]


NODE_LOSS_STEPS, PAUSE_AT = 30, 15


def test_a_dead_worker_node_and_training_finishes_from_s3(team: TeamCluster) -> None:
    """The worker node is killed mid-run; the job resumes on the head from its S3 checkpoint."""
    spec = _resolve(
        _body("unused", team.work)["stages"][2]["spec"],
        {"tokenize": storage.join(team.work, "tokens")},
    )
    spec.update(
        output=storage.join(team.work, "train-node-loss"),
        steps=NODE_LOSS_STEPS,
        checkpoint_every=10,
        eval_every=100,
        placement_strategy="SPREAD",
        max_failures=3,
        # rank 0 holds still at step 15 (once): the kill below lands mid-run however fast the
        # machine is (an unpaused 60-step run once ended between step 15's report and the kill)
        debug={"pause_at_step": PAUSE_AT, "pause_s": 300},
    )
    pause = storage.join(spec["output"], PAUSE_MARKER)
    with httpx.Client(base_url=team.url, timeout=30) as client:
        r = client.post("/api/v1/jobs", json={"kind": "train", "spec": spec})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        # Rank 0 paused at step 15: the step-10 checkpoint was written (training waits for it)
        # and the run is 5 steps past it.
        deadline = time.monotonic() + 300
        while not storage.exists(pause):
            state = client.get(f"/api/v1/jobs/{job_id}").json()["state"]
            assert state in ("QUEUED", "PENDING", "RUNNING") and time.monotonic() < deadline
            time.sleep(0.5)
        assert storage.read_json(pause)["step"] == PAUSE_AT
        assert storage.is_dir(storage.join(spec["output"], "checkpoints", "step_00000010"))
        worker = team.cluster.workers[0]
        team.cluster.kill(worker)
        team.cluster.wipe_scratch()  # nothing of the first attempt is left on any node's disk
        job = _wait(client, f"/api/v1/jobs/{job_id}", {"SUCCEEDED", "FAILED"})
        steps = _steps(client, job_id)
    assert job["state"] == "SUCCEEDED", job["message"]
    result = job["result"]
    assert result["steps"] == NODE_LOSS_STEPS and math.isfinite(result["final_loss"])
    assert set(result["nodes"]) == {team.cluster.head.node_id}  # both ranks ended on the head
    # the restarted group went on from the step-10 checkpoint: step 15 ran twice, the rest once
    assert sorted(set(steps)) == list(range(5, NODE_LOSS_STEPS + 1, 5))
    assert [s for s in set(steps) if steps.count(s) > 1] == [PAUSE_AT]
