"""CurateSpec validation: every bad parameter is a pydantic error (the API's 422)."""

import json
import pickle
from pathlib import Path
from typing import Any, get_args

import pyarrow as pa
import pytest
from pydantic import ValidationError

from contracts.curate import CurateSpec
from contracts.curate_steps import STEP_MODELS
from llm.data.pii import PII_TYPES, PIIType
from llm.data.registry import BLOCKS

QUALITY: dict[str, Any] = {"kind": "quality_classifier", "model_path": "quality.bin"}
TOP_HALF = QUALITY | {"top_fraction": 0.5}


def _spec(steps: list[dict[str, Any]], **extra: Any) -> CurateSpec:
    return CurateSpec.model_validate({"input": "in", "output": "out", "steps": steps, **extra})


def test_every_per_document_step_builds_its_block() -> None:
    kinds = ["normalize", "length", "gopher_quality", "gopher_repetition", "c4_quality"]
    kinds += ["c4_badwords", "fineweb_quality", "language", "pii"]
    spec = _spec(
        [{"kind": k} for k in kinds] + [{"kind": "exact_dedup"}, {"kind": "minhash_dedup"}]
    )
    blocks = [step.document_block() for step in spec.document_steps()]
    assert [type(b).__name__ for b in blocks][:2] == ["Normalizer", "LengthFilter"]
    assert len(blocks) == len(kinds)


@pytest.mark.parametrize(
    ("steps", "extra", "message"),
    [
        ([{"kind": "exact_dedup"}, {"kind": "length"}], {}, "after every per-document step"),
        ([{"kind": "minhash_dedup"}, {"kind": "minhash_dedup"}], {}, "may appear once"),
        ([{"kind": "minhash_dedup", "bands": 20, "rows": 9}], {}, "exceeds num_perm"),
        ([{"kind": "language", "threshold": 1.5}], {}, "less than or equal to 1"),
        ([{"kind": "pii", "types": ["EMAIL", "SHOE_SIZE"]}], {}, "SHOE_SIZE"),
        ([{"kind": "gopher_quality", "min_stop_word": 2}], {}, "Extra inputs"),
        ([{"kind": "decontaminate", "eval_sets": []}], {}, "at least 1"),
        ([{"kind": "quality_filter"}], {}, "does not match any of the expected tags"),
        ([{"kind": "quality_classifier"}], {}, "model_path"),
        ([QUALITY], {}, "exactly one of threshold and top_fraction"),
        ([QUALITY | {"threshold": 0.5, "top_fraction": 0.5}], {}, "exactly one of"),
        ([QUALITY | {"top_fraction": 0}], {}, "greater than 0"),
        ([QUALITY | {"threshold": 1.5}], {}, "less than or equal to 1"),
        ([TOP_HALF, {"kind": "length"}], {}, "after every per-document step"),
        ([TOP_HALF, {"kind": "exact_dedup"}, TOP_HALF], {}, "may appear once"),
        ([], {"input_format": "csv"}, "input_format"),
        ([], {"max_doc_bytes": 0}, "greater than 0"),
    ],
)
def test_bad_parameters_are_rejected(
    steps: list[dict[str, Any]], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _spec(steps, **extra)


def test_quality_threshold_runs_per_document_and_top_fraction_over_the_corpus() -> None:
    threshold = QUALITY | {"threshold": 0.5}
    spec = _spec([threshold, {"kind": "length"}, {"kind": "exact_dedup"}, TOP_HALF])
    steps = spec.document_steps()
    assert [s.kind for s in steps] == ["quality_classifier", "length"]
    block = steps[0].document_block()
    assert type(block).__name__ == "QualityClassifierFilter"
    assert block.threshold == 0.5  # type: ignore[attr-defined]


def test_pii_choices_match_the_library() -> None:
    assert set(get_args(PIIType)) == set(PII_TYPES)


def test_decontaminate_reads_named_fields_of_eval_jsonl(tmp_path: Path) -> None:
    question = "which of these would help to prevent infections from spreading in a hospital ward"
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": {"stem": question}}) + "\n")
    eval_set = {"name": "arc", "path": str(tmp_path / "eval.jsonl"), "fields": ["question"]}
    spec = _spec([{"kind": "decontaminate", "eval_sets": [eval_set], "n": 8}])
    (block,) = [step.document_block() for step in spec.steps]
    batch = pa.table(
        {
            "id": ["a", "b"],
            "text": [f"Quiz: {question}?", "unrelated text"],
            "reason": [None, None],
        },
        schema=pa.schema([("id", pa.string()), ("text", pa.string()), ("reason", pa.string())]),
    )
    assert block.apply(batch).column("reason").to_pylist() == ["decontaminated:arc", None]


def test_every_block_is_a_step_whose_schema_keeps_constraints_and_descriptions() -> None:
    assert list(STEP_MODELS) == list(BLOCKS)
    schema = CurateSpec.model_json_schema()["$defs"]
    threshold = schema["MinHashDedupStep"]["properties"]["threshold"]
    assert threshold["exclusiveMinimum"] == 0 and threshold["maximum"] == 1
    assert threshold["description"] == "Jaccard similarity to verify"
    assert schema["EvalSet"]["properties"]["name"]["pattern"] == r"^[\w.-]+$"
    assert schema["EvalSet"]["additionalProperties"] is False
    assert schema["QualityClassifierStep"]["required"] == ["model_path"]


@pytest.mark.parametrize(
    ("eval_set", "message"),
    [
        ({"name": "a/b", "path": "x"}, "should match pattern"),
        ({"name": "a", "path": "x", "y": 1}, "Extra"),
    ],
)
def test_nested_parameters_are_checked_like_steps(eval_set: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _spec([{"kind": "decontaminate", "eval_sets": [eval_set]}])


def test_a_spec_pickles_by_reference_for_ray_tasks() -> None:
    eval_set = {"name": "arc", "path": "eval.jsonl"}
    spec = _spec([{"kind": "decontaminate", "eval_sets": [eval_set]}, {"kind": "minhash_dedup"}])
    assert pickle.loads(pickle.dumps(spec)) == spec
    params = spec.steps[0].params()
    assert type(params).__name__ == "DecontaminateParams"
    assert type(params.eval_sets[0]).__name__ == "EvalSet"  # nested models become dataclasses
