"""LoRA at the control plane: the finetune spec's method and lora settings (422s naming the
field), a LoRA job's output registered as an adapter linked to its base, and an adapter
registered by hand only onto the base it was trained on (422 otherwise)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.orm import Session

from contracts.specs import FinetuneSpec
from services import job_outputs
from services.api.app import create_app
from services.ray_head import free_port
from services.settings import Settings
from services.store import crud
from services.store.models import Job, JobState

SPEC = {"checkpoint": "/m/base", "data": "/d/sft.jsonl", "output": "/o/lora"}


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_lora_settings_default_and_validate() -> None:
    spec = FinetuneSpec.model_validate({**SPEC, "method": "lora"})
    assert spec.method == "lora" and spec.lora is None  # the job uses LoraSpec's defaults
    spec = FinetuneSpec.model_validate({**SPEC, "method": "lora", "lora": {"r": 16}})
    assert spec.lora is not None
    assert (spec.lora.r, spec.lora.alpha) == (16, 16.0)
    assert spec.lora.target_modules == ["qkv", "proj", "fc"]
    assert FinetuneSpec.model_validate(SPEC).method == "full"
    with pytest.raises(ValidationError, match="settings for method 'lora'"):
        FinetuneSpec.model_validate({**SPEC, "lora": {"r": 4}})


@pytest.mark.parametrize(
    ("lora", "loc", "says"),
    [
        ({"r": 0}, ["r"], "greater than 0"),
        ({"dropout": 1}, ["dropout"], "less than 1"),
        ({"rank": 4}, ["rank"], "rank"),
        ({"target_modules": []}, ["target_modules"], "at least 1"),
        ({"target_modules": ["q-proj"]}, ["target_modules", 0], "pattern"),
    ],
)
def test_bad_lora_values_are_422_naming_the_field(
    client: TestClient, lora: dict[str, Any], loc: list[Any], says: str
) -> None:
    spec = {**SPEC, "method": "lora", "lora": lora}
    r = client.post("/api/v1/jobs", json={"kind": "finetune", "spec": spec})
    assert r.status_code == 422, r.text
    assert ["body", "spec", "lora", *loc] in [e["loc"] for e in r.json()["detail"]], r.text
    assert says in r.text


def test_an_unknown_method_is_422(client: TestClient) -> None:
    spec = {**SPEC, "method": "qlora"}
    r = client.post("/api/v1/jobs", json={"kind": "finetune", "spec": spec})
    assert r.status_code == 422, r.text
    assert ["body", "spec", "method"] in [e["loc"] for e in r.json()["detail"]], r.text


def _succeeded(session: Session, kind: str, spec: dict[str, Any]) -> Job:
    return crud.create_job(session, kind=kind, spec=spec, state=JobState.succeeded, team="red")


def test_a_lora_job_registers_an_adapter_linked_to_its_base(session: Session) -> None:
    base = _succeeded(session, "train", {"data": "/t", "output": "/m/base"})
    base.result = {
        "steps": 10, "tokens_seen": 1, "checkpoint": "/m/base/checkpoints/step_00000010",
        "parameters": 1000,
    }  # fmt: skip
    [model] = job_outputs.register_outputs(session, base)
    step = "/m/base/checkpoints/step_00000010"
    result = {"steps": 4, "epochs": 1, "checkpoint": "/o/lora/checkpoints/step_00000004",
              "parameters": 1100, "trainable_parameters": 100, "method": "lora",
              "base_checkpoint": step}  # fmt: skip
    job = _succeeded(session, "finetune", {**SPEC, "method": "lora"})
    job.result = result
    [adapter] = job_outputs.register_outputs(session, job)
    assert (adapter.category, adapter.kind, adapter.parent_id) == ("model", "adapter", model.id)
    assert adapter.stats["base"] == {"checkpoint": step, "model_id": model.id}
    assert adapter.stats["trainable_parameters"] == 100 and adapter.stats["method"] == "lora"


def _adapter(folder: Path, base: str) -> Path:
    step = folder / "checkpoints" / "step_00000004"
    step.mkdir(parents=True)
    config = {"format": "llmforge.lora/1", "base_checkpoint": base, "r": 8}
    (step / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_an_adapter_is_registered_only_onto_its_base(client: TestClient, tmp_path: Path) -> None:
    def register(body: dict[str, Any]) -> Any:
        return client.post("/api/v1/models", json={"name": "m", **body})

    area = tmp_path / "artifacts" / "teams" / "default"  # the team's own area
    for name in ("base", "other", "nothing"):
        (area / name).mkdir(parents=True)
    base = register({"kind": "checkpoint", "uri": str(area / "base")}).json()
    other = register({"kind": "checkpoint", "uri": str(area / "other")}).json()
    adapter = _adapter(area / "sft", f"{area}/base/checkpoints/step_00000010")
    body = {"kind": "adapter", "uri": str(adapter)}
    r = register({**body, "parent_id": other["id"]})
    assert r.status_code == 422, r.text
    assert ["body", "uri"] in [e["loc"] for e in r.json()["detail"]]
    assert f"was trained on the base {area}/base/checkpoints/step_00000010" in r.text
    r = register(body)
    assert r.status_code == 422 and "an adapter's parent_id is its base model" in r.text
    r = register({**body, "uri": str(area / "nothing"), "parent_id": base["id"]})
    assert r.status_code == 422 and "holds no LoRA adapter" in r.text
    r = register({**body, "parent_id": base["id"]})
    assert r.status_code == 201, r.text
    assert (r.json()["kind"], r.json()["parent_id"]) == ("adapter", base["id"])
