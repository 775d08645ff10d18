"""The fastText quality classifier: training on real example sets, its report, and the step."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from llm.data.quality import (
    ExampleSet,
    TrainParams,
    fasttext_line,
    is_held_out,
    load_model,
    read_examples,
    train_classifier,
)
from llm.data.quality_filter import (
    QUALITY_SCORE,
    QualityClassifierFilter,
    reject_below_cut,
    top_fraction_count,
    top_fraction_cut,
)
from tests.llm.data.batches import make_batch
from tests.llm.data.quality_examples import boilerplate_pages, reuters_stories

# Small and quick, and enough epochs for a few hundred examples (fastText's 5 underfit them).
PARAMS = TrainParams(epoch=20, lr=0.5, dim=16, bucket=20_000)


@pytest.fixture(scope="module")
def examples(shared_data: Path) -> dict[str, list[str]]:
    return {"positive": reuters_stories(shared_data), "negative": boilerplate_pages(shared_data)}


@pytest.fixture(scope="module")
def trained(
    examples: dict[str, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    model = tmp_path_factory.mktemp("quality") / "quality.bin"
    positive, negative = ExampleSet(examples["positive"]), ExampleSet(examples["negative"])
    return model, train_classifier(positive, negative, model, holdout=0.2, params=PARAMS)


def test_held_out_precision_and_recall_on_real_text(trained: tuple[Path, dict[str, Any]]) -> None:
    _, report = trained
    held = report["held_out"]
    assert report["sides"]["positive"]["held_out"] >= 50
    assert report["sides"]["negative"]["held_out"] >= 50
    assert held["precision"] >= 0.9 and held["recall"] >= 0.9, held
    assert held["f1"] == pytest.approx(
        2 * held["precision"] * held["recall"] / (held["precision"] + held["recall"])
    )


def test_report_counts_add_up_and_is_written_beside_the_model(
    trained: tuple[Path, dict[str, Any]], examples: dict[str, list[str]]
) -> None:
    model, report = trained
    for side in ("positive", "negative"):
        counts = report["sides"][side]
        assert counts["train"] + counts["held_out"] == counts["examples"] == len(examples[side])
    held = report["held_out"]
    positives_held = report["sides"]["positive"]["held_out"]
    assert held["true_positive"] + held["false_negative"] == positives_held
    assert json.loads(model.with_suffix(".json").read_text()) == report
    assert report["model_bytes"] == model.stat().st_size < 10_000_000  # small bucket, small file


def test_training_is_reproducible(
    trained: tuple[Path, dict[str, Any]], examples: dict[str, list[str]], tmp_path: Path
) -> None:
    model, _ = trained
    again = tmp_path / "again.bin"
    positive, negative = ExampleSet(examples["positive"]), ExampleSet(examples["negative"])
    train_classifier(positive, negative, again, holdout=0.2, params=PARAMS)
    assert again.read_bytes() == model.read_bytes()


def test_held_out_split_follows_the_text_not_the_order() -> None:
    texts = [f"document number {i}" for i in range(2000)]
    held = [t for t in texts if is_held_out(t, 0.1)]
    assert 150 < len(held) < 250
    assert held == [t for t in reversed(texts) if is_held_out(t, 0.1)][::-1]


def test_fasttext_line_joins_lines_like_dclm() -> None:
    assert (
        fasttext_line("  Title\n\nFirst line.\r\nSecond line.\n")
        == "Title  First line. Second line."
    )


def test_malformed_records_are_counted_with_their_position(tmp_path: Path) -> None:
    good = {"body": "A complete sentence about the weather."}
    lines = [json.dumps(good), "{not json", json.dumps({"other": "x"}), "", '{"body": " "}']
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.txt").write_bytes(b"one example\n\nanother example\n\xff\xfe broken\n")
    found = read_examples([tmp_path], text_field="body")
    assert found.texts == [good["body"], "one example\n", "another example\n"]
    assert found.malformed == 3 and found.empty == 1
    assert found.malformed_positions[0] == "a.jsonl:2 (malformed: invalid json)"
    assert found.malformed_positions[2].startswith("b.txt:4 (malformed: not UTF-8")


def test_bad_inputs_name_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        read_examples([tmp_path / "missing.jsonl"])
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"data\.csv"):
        read_examples([tmp_path / "data.csv"])
    side = ExampleSet(["some text"])
    with pytest.raises(ValueError, match="no usable negative examples"):
        train_classifier(side, ExampleSet(malformed=2), tmp_path / "m.bin")
    with pytest.raises(ValueError, match=r"\.bin"):
        train_classifier(side, side, tmp_path / "m.model")


def test_bad_model_paths_are_named(trained: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    model, _ = trained
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.bin"))):
        load_model(tmp_path / "none.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.bin"):
        load_model(tmp_path / "junk.bin")
    with pytest.raises(ValueError, match=r"no label 'good' \(labels: \['"):
        load_model(model, label="good")


def test_step_annotates_kept_rows_and_rejects_below_the_threshold(
    trained: tuple[Path, dict[str, Any]], shared_data: Path, examples: dict[str, list[str]]
) -> None:
    model, _ = trained
    story = reuters_stories(shared_data, skip=1000, limit=1)[0]  # never seen in training
    page = next(t for t in examples["negative"] if is_held_out(t, 0.2))
    batch = make_batch([story, page, story], reasons=[None, None, "gopher_quality:short_doc"])
    out = QualityClassifierFilter(model, threshold=0.5).apply(batch)
    scores = out.column(QUALITY_SCORE).to_pylist()
    assert scores[0] > 0.5 > scores[1] and scores[2] is None
    assert out.column("reason").to_pylist() == [
        None,
        "quality_classifier",
        "gopher_quality:short_doc",
    ]
    annotated_only = QualityClassifierFilter(model).apply(batch)
    assert annotated_only.column("reason").to_pylist() == batch.column("reason").to_pylist()
    assert annotated_only.column(QUALITY_SCORE).to_pylist() == scores


def test_top_fraction_count_rounds_to_nearest() -> None:
    assert [top_fraction_count(10, f) for f in (0.3, 0.25, 0.24, 1.0)] == [3, 3, 2, 10]
    assert top_fraction_count(0, 0.5) == 0


def _scored(scores: list[float | None], reasons: list[str | None]) -> pa.Table:
    batch = make_batch([f"t{i}" for i in range(len(scores))], reasons=reasons)
    batch = batch.append_column(QUALITY_SCORE, pa.array(scores, pa.float64()))
    return batch.append_column("_order", pa.array(range(len(scores)), pa.int64()))


def test_top_fraction_cut_breaks_ties_by_input_order() -> None:
    scores = [0.9, 0.5, 0.5, 0.5, 0.1, None]
    batch = _scored(scores, [None] * 5 + ["earlier"])
    kept = batch.slice(0, 5).select([QUALITY_SCORE, "_order"])
    ranked = kept.sort_by([(QUALITY_SCORE, "descending"), ("_order", "ascending")])
    batches = [ranked.slice(0, 2), ranked.slice(2)]  # the cut falls in the second batch
    cut = top_fraction_cut(batches, 3, "_order")
    assert cut == (0.5, 2)
    reasons = reject_below_cut(batch, cut, "_order").column("reason").to_pylist()
    assert reasons == [None, None, None, "quality_classifier", "quality_classifier", "earlier"]
    none_kept = reject_below_cut(batch, None, "_order").column("reason").to_pylist()
    assert none_kept == ["quality_classifier"] * 5 + ["earlier"]
    with pytest.raises(ValueError, match="fewer than the 6"):
        top_fraction_cut([ranked], 6, "_order")
