"""POST /api/v1/plan: Chinchilla-optimal planning over REST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llm.model.sizing import flops_per_token
from services.api.app import create_app
from services.settings import Settings


def test_plan_endpoint(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, ray_address="http://127.0.0.1:1", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/plan", json={"flops": 5.76e23})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["params"] == pytest.approx(70e9, rel=0.15)
        assert body["tokens"] == pytest.approx(1.4e12, rel=0.15)
        assert "nearest config" in body["table"]
        assert body["memory_bytes"]["total"] > 0
        r = client.post("/api/v1/plan", json={"flops": 1e20, "gpu_hours": 3})
        assert r.status_code == 422
        r = client.post("/api/v1/plan", json={"flops": 1e20, "n_layers": 3})
        assert r.status_code == 422 and "n_layers" in r.text


def test_a_fixed_data_plan_writes_a_train_spec_that_submits(tmp_path: Path) -> None:
    from contracts.specs import TrainSpec

    settings = Settings(
        home=tmp_path, ray_address="http://127.0.0.1:1", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as client:
        body = {"tokens": 2e9, "overtrain": 4, "data": "/data/shards", "block_size": 256}
        r = client.post("/api/v1/plan", json=body)
        assert r.status_code == 200, r.text
        plan = r.json()
        assert plan["mode"] == "data" and plan["tokens"] == 2e9 and plan["overtrain"] == 4
        assert "over-trained x4" in plan["table"]
        spec = plan["train_spec"]
        assert spec["tokens"] == 2_000_000_000 and spec["data"] == "/data/shards"
        assert "vocab_size" not in spec["model"]  # the tokenizer's
        train = TrainSpec.model_validate({**spec, "output": str(tmp_path / "out")})
        assert train.train.steps == -(-2_000_000_000 // (8 * 256 * 2))
        for bad, says in [
            ({"tokens": 1e9, "flops": 1e20}, "exactly one of flops, gpu_hours and tokens"),
            ({"flops": 1e20, "overtrain": 2}, "overtrain applies to a fixed-data plan"),
            ({"tokens": 1e9, "overtrain": 0.5}, "greater than or equal to 1"),
        ]:
            r = client.post("/api/v1/plan", json=bad)
            assert r.status_code == 422 and says in r.text, (bad, r.text)


def test_cli_plan_prints_and_writes_the_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    out = tmp_path / "train.json"
    assert main(["plan", "--tokens", "1e9", "--block-size", "128", "--spec-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "data (tokens)" in printed and "train spec written" in printed
    spec = json.loads(out.read_text())
    assert spec["tokens"] == 1_000_000_000 and spec["model"]["block_size"] == 128
    assert main(["plan", "--tokens", "1e9", "--submit"]) == 1  # no --data to train on
    assert "--submit needs --data" in capsys.readouterr().err


def test_a_train_spec_takes_a_token_or_compute_budget_instead_of_steps(tmp_path: Path) -> None:
    from contracts.specs import TrainSpec

    tiny = {"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64}
    base = {"data": "/d", "output": "/o", "model": tiny, "batch_size": 4, "workers": 2}
    spec = TrainSpec.model_validate({**base, "tokens": 100_000})
    assert spec.tokens_per_step == 4 * 64 * 2 and spec.train.steps == 196  # ceil(100000/512)
    # the stored spec (budget and the steps it came to) reads back as it was
    assert TrainSpec.model_validate(spec.model_dump(mode="json")) == spec
    with_gbt = TrainSpec.model_validate({**base, "tokens": 100_000, "global_batch_tokens": 1024})
    assert with_gbt.train.steps == 98
    flops = TrainSpec.model_validate({**base, "model": {**tiny, "vocab_size": 512}, "flops": 1e12})
    per_token = flops_per_token(flops.model)
    assert flops.train.steps == -(-int(1e12 // per_token) // 512)

    settings = Settings(
        home=tmp_path, ray_address="http://127.0.0.1:1", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as client:
        for bad, says in [
            ({"tokens": 100}, "less than one optimizer step's 512 tokens"),
            ({"tokens": 100_000, "steps": 7}, "give one of steps, tokens and flops"),
            ({"tokens": 100_000, "flops": 1e12}, "not tokens and flops"),
            ({"flops": 1e12}, "give model.vocab_size"),
            ({"tokens": 0}, "greater than 0"),
        ]:
            r = client.post("/api/v1/jobs", json={"kind": "train", "spec": {**base, **bad}})
            assert r.status_code == 422 and says in r.text, (bad, r.text)
