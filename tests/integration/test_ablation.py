"""A miniature curation ablation end to end on the shared local Ray cluster: ``POST
/api/v1/experiments/ablation`` with two arms (raw, full curation) over documents of the real
Common Crawl sample, one tokenizer, a tiny model for a few steps, two evaluation tasks; the
compare stage writes the table and the chart, and the registry holds every model's lineage."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.server import BackgroundServer
from tests.integration.test_train_job import head_actors

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STEPS = 8
DOCS = 200
TRAIN = {
    "steps": STEPS,
    "workers": 1,
    "batch_size": 4,
    "log_every": 4,
    "eval_every": 4,
    "eval_batches": 2,
    "checkpoint_every": STEPS,
    "warmup_steps": 1,
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
}


def _corpus(shared_data: Path, folder: Path) -> Path:
    """The sample's first DOCS documents, a tenth of them again (exact duplicates) and a tenth
    of one-line junk: curation has something to remove."""
    [source] = (shared_data / "web" / "cc_dolma_sample").glob("*.jsonl.gz")
    with gzip.open(source, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for _, line in zip(range(DOCS), f, strict=False)]
    docs += [{**d, "id": f"{d['id']}-copy"} for d in docs[:: DOCS // 20]]
    docs += [{"id": f"junk-{i}", "text": f"click here {i}"} for i in range(DOCS // 10)]
    folder.mkdir()
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _wait(client: httpx.Client, path: str, timeout_s: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(path).raise_for_status().json()
        if body["state"] in ("SUCCEEDED", "FAILED"):
            return body
        time.sleep(1)
    raise AssertionError(f"{path} did not end in {timeout_s}s")


@pytest.fixture(scope="module")
def ablation(
    control_plane: BackgroundServer, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("ablation")
    spec = {
        "name": "mini-ablation",
        "corpus": str(_corpus(shared_data, work / "corpus")),
        "output": str(work),
        "curate": {"parts_per_file": 1},
        "steps": [
            {"kind": "length"},
            {"kind": "gopher_quality"},
            {"kind": "exact_dedup"},
            {"kind": "minhash_dedup"},
        ],
        "seeds": [0],
        "vocab_size": 512,
        "train": TRAIN,
        "tasks": ["wikitext2", "arc_easy"],
        "evaluate": {"limit": 6, "workers": 1, "max_new_tokens": 0},
    }
    with httpx.Client(base_url=control_plane.url, timeout=30) as client:
        r = client.post("/api/v1/experiments/ablation", json=spec)
        assert r.status_code == 201, r.text
        final = _wait(client, f"/api/v1/pipelines/{r.json()['id']}")
    return final, work


def test_every_stage_succeeds(ablation: tuple[dict[str, Any], Path]) -> None:
    final, _ = ablation
    assert final["state"] == "SUCCEEDED", [(j["stage"], j["message"]) for j in final["jobs"]]
    assert len(final["jobs"]) == 9


def test_the_arms_differ_in_curation_only(ablation: tuple[dict[str, Any], Path]) -> None:
    jobs = {j["stage"]: j for j in ablation[0]["jobs"]}
    raw, full = (jobs[f"curate_{a}"]["result"]["stats"] for a in ("raw", "full"))
    assert raw["documents"] == full["documents"]  # the same corpus read
    assert set(raw["removed"]) <= {"exact_duplicate"}
    assert full["kept"]["documents"] < raw["kept"]["documents"]
    # one tokenizer: the raw arm's, copied into the full arm's shards
    tokens = {a: jobs[f"tokenize_{a}"]["result"]["stats"] for a in ("raw", "full")}
    assert tokens["full"]["tokenizer_train_seconds"] == 0.0
    work = ablation[1]
    assert (work / "tokenize_raw" / "tokenizer.json").read_bytes() == (
        work / "tokenize_full" / "tokenizer.json"
    ).read_bytes()
    # the same budget: the same steps of the same batch
    trained = [jobs[f"train_{a}_s0"]["result"] for a in ("raw", "full")]
    assert trained[0]["steps"] == trained[1]["steps"] == STEPS
    assert trained[0]["tokens_seen"] == trained[1]["tokens_seen"] > 0


def test_the_compare_stage_writes_the_table_and_the_chart(
    ablation: tuple[dict[str, Any], Path],
) -> None:
    jobs = {j["stage"]: j for j in ablation[0]["jobs"]}
    result = jobs["compare"]["result"]
    assert result["baseline"] == "raw" and set(result["arms"]) == {"raw", "full"}
    assert result["metrics"] == ["wikitext2/bits_per_byte", "arc_easy/acc_norm"]
    bpb = result["arms"]["full"]["metrics"]["wikitext2/bits_per_byte"]
    raw_bpb = result["arms"]["raw"]["metrics"]["wikitext2/bits_per_byte"]["mean"]
    assert bpb["mean"] > 0 and bpb["difference"]["value"] == pytest.approx(bpb["mean"] - raw_bpb)
    acc = result["arms"]["full"]["metrics"]["arc_easy/acc_norm"]
    assert acc["stderr_from"] == "items" and acc["difference"]["stderr"] > 0
    work = ablation[1] / "compare"
    table = (work / "compare.md").read_text()
    assert table.startswith("| arm | seeds | wikitext2/bits_per_byte | arc_easy/acc_norm |")
    assert "| full | 0 |" in table
    assert (work / "curves.png").read_bytes().startswith(b"\x89PNG")
    curves = json.loads((work / "compare.json").read_text())["curves"]
    assert [step for step, _ in curves["raw_s0"]] == [4, 8]


def test_every_model_is_registered_with_its_lineage(
    ablation: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    jobs = {j["stage"]: j for j in ablation[0]["jobs"]}
    with httpx.Client(base_url=control_plane.url, timeout=30) as api:
        for arm in ("raw", "full"):
            params = {"job_id": jobs[f"train_{arm}_s0"]["id"]}
            [model] = api.get("/api/v1/models", params=params).json()["data"]
            [evaluation] = model["evaluations"]
            assert evaluation["job_id"] == jobs[f"evaluate_{arm}_s0"]["id"]
            chain = api.get(f"/api/v1/models/{model['id']}/lineage").json()["chain"]
            assert [a["job_id"] for a in chain] == [
                jobs[f"train_{arm}_s0"]["id"],
                jobs[f"tokenize_{arm}"]["id"],
                jobs[f"curate_{arm}"]["id"],
            ]


def test_parquet_reads_start_no_footer_reader_actors(
    ablation: tuple[dict[str, Any], Path], control_plane: BackgroundServer
) -> None:
    """The curate and tokenize jobs read parquet through Ray Data's first datasource
    (ray_jobs.cluster.init_ray): Ray 2.60's default lists the files on a pool of FooterReader
    actors, a new worker process each, per read."""
    jobs = {j["stage"]: j for j in ablation[0]["jobs"]}
    assert jobs["curate_full"]["result"]["stats"]["kept"]["documents"] > 0
    assert not head_actors(control_plane, "FooterReader")
