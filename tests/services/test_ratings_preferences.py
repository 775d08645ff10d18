"""/api/v1/ratings/preferences: stored ratings as DPO preference records, the finetune spec
that reads them (method "dpo") through the in-process API, and the model it registers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from llm.finetune.data import DataOptions
from llm.finetune.preferences import prepare_preferences
from llm.tokenizer.bpe import eos_id, train_bpe
from services import job_outputs
from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.settings import Settings
from services.store import crud
from services.store.models import JobState

Api = tuple[TestClient, dict[str, str], Path]


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / ADMIN_KEY_FILE).read_text().strip()}"}
        yield client, admin, Path(settings.resolved_artifact_root)


def _key(client: TestClient, admin: dict[str, str], team: str, role: str = "member") -> Any:
    r = client.post("/api/v1/keys", json={"name": team, "team": team, "role": role}, headers=admin)
    return {"X-API-Key": r.json()["key"]}


def _rate(client: TestClient, who: dict[str, str], **fields: Any) -> None:
    body = {
        "prompt": "Name a colour.",
        "model_a": "small",
        "model_b": "large",
        "completion_a": "red",
        "completion_b": "blue",
        "winner": "a",
        **fields,
    }
    assert client.post("/api/v1/ratings", json=body, headers=who).status_code == 201


def test_ratings_export_as_preferences_per_team(api: Api) -> None:
    client, admin, artifacts = api
    red, blue = _key(client, admin, "red"), _key(client, admin, "blue")
    _rate(client, red, task="colours")
    _rate(client, red, winner="b", task="colours")
    _rate(client, red, winner="tie", task="colours")
    _rate(client, red, completion_b="red", task="colours")  # the same text on both sides
    _rate(client, red, prompt="Name a fruit.", completion_a="pear", completion_b="rock")
    _rate(client, blue, prompt="blue's own", completion_a="x", completion_b="y")

    r = client.get("/api/v1/ratings/preferences", params={"task": "colours"}, headers=red)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["ratings"] == 4 and got["count"] == 2 and not got["truncated"]
    assert got["dropped"] == {"tie": 1, "identical_completions": 1}
    assert [(d["chosen"], d["rejected"], d["chosen_model"]) for d in got["data"]] == [
        ("red", "blue", "small"),
        ("blue", "red", "large"),
    ]
    # a team sees its own ratings only; an admin any team's, or all
    mine = client.get("/api/v1/ratings/preferences", headers=red).json()
    assert mine["ratings"] == 5 and "blue's own" not in {d["prompt"] for d in mine["data"]}
    theirs = client.get("/api/v1/ratings/preferences", params={"team": "red"}, headers=blue)
    assert {d["prompt"] for d in theirs.json()["data"]} == {"blue's own"}
    assert client.get("/api/v1/ratings/preferences", headers=admin).json()["ratings"] == 6
    limited = client.get("/api/v1/ratings/preferences", params={"limit": 2}, headers=red).json()
    assert limited["ratings"] == 2 and limited["truncated"]

    # written as JSONL in the team's area, where a finetune spec reads it
    r = client.post("/api/v1/ratings/preferences", json={"output": "prefs/all.jsonl"}, headers=red)
    assert r.status_code == 201, r.text
    written = r.json()
    path = artifacts / "teams" / "red" / "prefs" / "all.jsonl"
    assert written["output"] == str(path) and written["count"] == 3
    assert written["dropped"] == {"tie": 1, "identical_completions": 1}
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["chosen"] for r in records] == ["red", "blue", "pear"]

    tok = train_bpe(["red blue pear rock name a colour fruit"] * 10, vocab_size=280)
    data = prepare_preferences(
        path, tok, eos_id(tok), block_size=512, options=DataOptions(val_fraction=0)
    )
    assert data.stats["kept"] == 3 and data.stats["rejected"] == 0


def test_export_outside_the_team_roots_is_refused(api: Api, tmp_path: Path) -> None:
    client, admin, artifacts = api
    red = _key(client, admin, "red")
    _rate(client, red)
    for output in (str(tmp_path / "elsewhere.jsonl"), str(artifacts / "teams" / "blue" / "x")):
        r = client.post("/api/v1/ratings/preferences", json={"output": output}, headers=red)
        assert r.status_code == 403, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "output"]
    r = client.post("/api/v1/ratings/preferences", json={"output": "../up.jsonl"}, headers=red)
    assert r.status_code == 422 and "'..'" in r.text
    (artifacts / "teams" / "red" / "prefs").mkdir(parents=True)
    (artifacts / "teams" / "red" / "prefs" / "a.jsonl").write_text("")
    for folder in ("prefs", ".", "prefs/a.jsonl/b.jsonl"):  # folders, and a file as a folder
        r = client.post("/api/v1/ratings/preferences", json={"output": folder}, headers=red)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "output"], r.text
    reader = _key(client, admin, "red", role="read_only")
    r = client.post("/api/v1/ratings/preferences", json={"output": "p.jsonl"}, headers=reader)
    assert r.status_code == 403
    assert not (tmp_path / "elsewhere.jsonl").exists()


DPO_SPEC = {"checkpoint": "ckpt", "data": "prefs/all.jsonl", "method": "dpo"}


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        ({"method": "ppo"}, ["body", "spec", "method"], "'full', 'lora' or 'dpo'"),
        ({"dpo": {"beta": 0}}, ["body", "spec", "dpo", "beta"], "greater than 0"),
        ({"dpo": {"label_smoothing": 0.5}}, ["body", "spec", "dpo", "label_smoothing"], "0.5"),
        ({"dpo": {"betta": 1}}, ["body", "spec", "dpo", "betta"], "Extra inputs"),
        ({"method": "full", "dpo": {}}, ["body", "spec"], "dpo: settings for method 'dpo'"),
        ({"train_on_prompt": True}, ["body", "spec"], "train_on_prompt"),
        ({"fields": {"output": "answer"}}, ["body", "spec"], "fields: unknown fields"),
    ],
)
def test_bad_dpo_specs_are_422_naming_the_field(
    api: Api, change: dict[str, Any], loc: list[Any], message: str
) -> None:
    client, admin, _ = api
    body = {"kind": "finetune", "spec": {**DPO_SPEC, **change}}
    r = client.post("/api/v1/jobs", json=body, headers=admin)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert loc in [e["loc"] for e in errors]
    assert any(message in e["msg"] for e in errors), errors


def test_a_dpo_spec_is_valid_with_its_defaults() -> None:
    from contracts.specs import FinetuneSpec

    spec = FinetuneSpec.model_validate({**DPO_SPEC, "output": "o", "fields": {"chosen": "win"}})
    assert spec.method == "dpo" and spec.dpo is None
    tuned = FinetuneSpec.model_validate({**DPO_SPEC, "output": "o", "dpo": {"beta": 0.3}})
    assert tuned.dpo is not None and tuned.dpo.beta == 0.3 and tuned.dpo.label_smoothing == 0
    assert FinetuneSpec.model_validate({**DPO_SPEC, "method": "full", "output": "o"}).dpo is None


def test_a_dpo_model_is_registered_with_its_reward_figures(
    session: Session, tmp_path: Path
) -> None:
    figures = {"reward_accuracy": 0.9, "reward_margin": 1.5, "val_reward_accuracy": 0.8}
    tuned = {"steps": 4, "checkpoint": f"{tmp_path}/dpo/checkpoints/step_00000004", "dpo": figures}
    spec = {**DPO_SPEC, "checkpoint": "/base", "output": str(tmp_path / "dpo")}
    job = crud.create_job(session, kind="finetune", spec=spec, state=JobState.succeeded)
    job.result = tuned
    [model] = job_outputs.register_outputs(session, job)
    assert model.kind == "finetuned" and model.stats["dpo"] == figures
