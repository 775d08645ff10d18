"""An ablation spec expands into its arms and one pipeline; ``POST /api/v1/experiments/ablation``
creates that pipeline, and a bad spec is a 422 naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from contracts.ablation import AblationSpec
from services.api.app import create_app
from services.ray_head import free_port
from services.settings import Settings

STEPS = [
    {"kind": "length", "min_chars": 50},
    {"kind": "language", "languages": ["en"]},
    {"kind": "gopher_quality"},
    {"kind": "pii"},
    {"kind": "exact_dedup"},
    {"kind": "minhash_dedup"},
]


def _spec(**overrides: Any) -> dict[str, Any]:
    return {"corpus": "corpus", "steps": STEPS, "train": {"steps": 20}} | overrides


def test_the_arms_differ_only_in_curation() -> None:
    arms = AblationSpec.model_validate(_spec(grid=True)).arms()
    kinds = {arm: [s["kind"] for s in steps] for arm, steps in arms.items()}
    assert kinds == {
        "raw": ["exact_dedup"],
        "full": ["length", "language", "gopher_quality", "pii", "exact_dedup", "minhash_dedup"],
        "no_heuristics": ["language", "pii", "exact_dedup", "minhash_dedup"],
        "no_language": ["length", "gopher_quality", "pii", "exact_dedup", "minhash_dedup"],
        "no_minhash": ["length", "language", "gopher_quality", "pii", "exact_dedup"],
    }  # no quality classifier among the steps: no no_quality arm
    assert arms["full"][0] == {"kind": "length", "min_chars": 50}  # parameters kept


def test_the_pipeline_shares_one_tokenizer_one_budget_and_the_evaluation() -> None:
    body = AblationSpec.model_validate(_spec(seeds=[3, 4], output="/out/abl")).pipeline()
    stages = {s["name"]: s for s in body["stages"]}
    assert list(stages) == [
        "curate_raw", "curate_full", "tokenize_raw", "tokenize_full",
        "train_raw_s3", "evaluate_raw_s3", "train_raw_s4", "evaluate_raw_s4",
        "train_full_s3", "evaluate_full_s3", "train_full_s4", "evaluate_full_s4", "compare",
    ]  # fmt: skip
    assert stages["tokenize_raw"]["spec"] == {
        "input": "${curate_raw.output}", "output": "/out/abl/tokenize_raw", "vocab_size": 4096,
    }  # fmt: skip
    full = stages["tokenize_full"]
    assert full["spec"]["tokenizer"] == "${tokenize_raw.output}/tokenizer.json"
    assert full["after"] == ["curate_full", "tokenize_raw"]
    trains = [s["spec"] for n, s in stages.items() if n.startswith("train_")]
    assert {t["steps"] for t in trains} == {20} and sorted(t["seed"] for t in trains) == [
        3,
        3,
        4,
        4,
    ]
    evals = [s["spec"] for n, s in stages.items() if n.startswith("evaluate_")]
    assert all(e["tasks"] == ["wikitext2", "blimp", "hellaswag", "arc_easy"] for e in evals)
    compare = stages["compare"]
    assert compare["spec"]["baseline"] == "raw" and len(compare["after"]) == 8
    assert compare["spec"]["runs"]["full_s4"] == {
        "arm": "full", "seed": 4,
        "train": "${train_full_s4.output}", "evaluate": "${evaluate_full_s4.output}",
    }  # fmt: skip


def test_a_given_tokenizer_serves_every_arm() -> None:
    body = AblationSpec.model_validate(_spec(tokenizer="/tok/tokenizer.json")).pipeline()
    tokenize = [s for s in body["stages"] if s["kind"] == "tokenize"]
    assert all(s["spec"]["tokenizer"] == "/tok/tokenizer.json" for s in tokenize)
    assert all(s["after"] == [f"curate_{s['name'].split('_')[1]}"] for s in tokenize)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": [{"kind": "length"}]}, "must include exact_dedup"),
        ({"seeds": [1, 1]}, "seeds repeat"),
        ({"seeds": []}, "at least 1"),
        ({"train": {"seed": 3}}, "train: seed are set by the experiment"),
        ({"evaluate": {"tasks": ["blimp"]}}, "evaluate: tasks are set by the experiment"),
        ({"steps": [{"kind": "no_such_step"}]}, "no_such_step"),
    ],
)
def test_bad_specs_say_what_to_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AblationSpec.model_validate(_spec(**overrides))


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_api_creates_the_experiments_pipeline(client: TestClient) -> None:
    r = client.post("/api/v1/experiments/ablation", json=_spec(seeds=[0], name="abl"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "abl"
    stages = [j["stage"] for j in body["jobs"]]
    assert stages[-1] == "compare" and len(stages) == 9  # 2 curate, 2 tokenize, 2 × 2, compare
    # the same pipeline as POST /api/v1/pipelines: its stages write in the pipeline's folder
    compare = client.get(f"/api/v1/jobs/{body['jobs'][-1]['id']}").json()
    assert compare["spec"]["output"].endswith(f"/pipelines/{body['id']}/compare")


def test_the_api_names_the_field_to_fix(client: TestClient) -> None:
    r = client.post("/api/v1/experiments/ablation", json=_spec(seeds=[2, 2]))
    assert r.status_code == 422 and "seeds repeat" in r.text
    r = client.post("/api/v1/experiments/ablation", json=_spec(train={"steps": -1}))
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"][:3] == ["body", "stages", 4] and "stage train_raw_s0" in detail["msg"]
