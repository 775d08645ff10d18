"""The finetune spec's classification block and the evaluate spec's judges: what they accept,
the 422 each mistake gives (naming the field), and the judge URIs the storage roots check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from contracts.jobs import JOB_TYPES, JobKind
from contracts.roots import Roots, violations
from contracts.spec_base import uri_paths
from contracts.specs import EvaluateSpec, FinetuneSpec
from services.api.app import create_app
from services.ray_head import free_port
from services.settings import Settings

FINETUNE = {"checkpoint": "/c", "data": "/d.jsonl", "output": "/o"}
EVALUATE = {"checkpoint": "/c", "output": "/o", "tasks": ["/t.yaml"]}


def _error(spec_type: type, body: dict[str, Any]) -> tuple[list[tuple[Any, ...]], str]:
    with pytest.raises(ValidationError) as info:
        spec_type.model_validate(body)
    return [tuple(e["loc"]) for e in info.value.errors()], str(info.value)


def test_a_classification_block_and_its_mistakes() -> None:
    block = {"label_field": "sentiment", "labels": ["neg", "pos"], "pooling": "mean"}
    spec = FinetuneSpec.model_validate({**FINETUNE, "classification": block})
    assert spec.classification is not None and spec.classification.labels == ["neg", "pos"]
    assert FinetuneSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert FinetuneSpec.model_validate(FINETUNE).classification is None  # instruction tuning
    for bad, loc in [
        ({"pooling": "max"}, ("classification", "pooling")),
        ({"labelz": ["a", "b"]}, ("classification", "labelz")),
        ({"labels": ["a"]}, ("classification", "labels")),
        ({"text_field": ""}, ("classification", "text_field")),
    ]:
        locs, _ = _error(FinetuneSpec, {**FINETUNE, "classification": bad})
        assert locs == [loc], bad
    _, text = _error(FinetuneSpec, {**FINETUNE, "classification": {"labels": ["a", "a"]}})
    assert "labels repeat" in text
    same = {"text_field": "x", "label_field": "x"}
    assert "must differ" in _error(FinetuneSpec, {**FINETUNE, "classification": same})[1]
    sft_only = {**FINETUNE, "classification": {}, "template": "{instruction}", "samples": 2}
    assert "samples, template: instruction tuning's" in _error(FinetuneSpec, sft_only)[1]
    with_dpo = {**FINETUNE, "classification": {}, "method": "dpo"}
    assert "not with method 'dpo'" in _error(FinetuneSpec, with_dpo)[1]


def test_judges_and_their_mistakes() -> None:
    judge = {"model": "/m/cls-out", "labels": ["good"]}
    spec = EvaluateSpec.model_validate({**EVALUATE, "judges": [judge]})
    assert spec.judges[0].metric_name == "cls-out" and spec.judges[0].kind == "classifier"
    assert EvaluateSpec.model_validate(spec.model_dump(mode="json")) == spec
    for bad, loc in [
        ({**judge, "kind": "reward"}, ("judges", 0, "kind")),
        ({**judge, "lables": ["good"]}, ("judges", 0, "lables")),
        ({**judge, "name": "a b"}, ("judges", 0, "name")),
        ({"labels": ["good"]}, ("judges", 0, "model")),
    ]:
        locs, _ = _error(EvaluateSpec, {**EVALUATE, "judges": [bad]})
        assert locs == [loc], bad
    for bad, message in [
        ({**judge, "mode": "yes_probability"}, "mode applies to kind 'loglik' only"),
        ({**judge, "kind": "loglik"}, "labels apply to kind 'classifier' only"),
        ({**judge, "template": "{{ prompt "}, "template: "),
    ]:
        assert message in _error(EvaluateSpec, {**EVALUATE, "judges": [bad]})[1], bad
    twice = {**EVALUATE, "judges": [judge, {"model": "/n/cls-out"}]}
    assert "the metric names ['cls-out'] repeat" in _error(EvaluateSpec, twice)[1]
    no_tasks = {"checkpoint": "/c", "output": "/o", "data": "/s", "judges": [judge]}
    assert (
        "judges score the completions of generate_until tasks" in _error(EvaluateSpec, no_tasks)[1]
    )


def test_judge_uris_are_checked_against_the_roots(tmp_path: Path) -> None:
    paths = uri_paths(EvaluateSpec)
    assert {("judges", "*", "model"), ("judges", "*", "tokenizer")} <= set(paths.read)
    assert JOB_TYPES[JobKind.evaluate].uri_paths == paths
    inside = str(tmp_path / "team")
    judges = [{"model": f"{inside}/cls"}, {"model": "/etc", "tokenizer": "/root/tok.json"}]
    spec = EvaluateSpec.model_validate(
        {"checkpoint": f"{inside}/lm", "output": f"{inside}/out", "tasks": [f"{inside}/t.yaml"],
         "judges": judges}
    ).model_dump(mode="json")  # fmt: skip
    found = violations(spec, paths, Roots.of([], [inside]))
    assert {v.field for v in found} == {"judges.1.model", "judges.1.tokenizer"}


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_api_answers_422_naming_the_field(client: TestClient) -> None:
    body = {**FINETUNE, "classification": {"pooling": "max"}}
    r = client.post("/api/v1/jobs", json={"kind": "finetune", "spec": body})
    assert r.status_code == 422
    assert ["body", "spec", "classification", "pooling"] in [e["loc"] for e in r.json()["detail"]]
    body = {**EVALUATE, "judges": [{"model": "/m", "mode": "mean_logprob"}]}
    r = client.post("/api/v1/jobs", json={"kind": "evaluate", "spec": body})
    assert r.status_code == 422 and "mode applies to kind 'loglik' only" in r.text
