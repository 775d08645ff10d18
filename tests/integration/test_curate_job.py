"""ray_jobs.curate end to end on local Ray: real JSONL, WARC, WET and Parquet inputs together.

One corpus covers every promise: planted exact and near duplicates of a real document, broken
JSON and a truncated WARC file (malformed rows with their position), counts that add up per step,
byte-identical output from a second run, and a resumed run after markers were deleted. Then the
quality classifier (trained through ``llmforge quality-train``) in a job, and a job whose Ray
worker is killed by PID while it runs a part.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.specs import CurateSpec
from llm.data.filters import GopherQualityFilter, split_words
from llm.data.pii import sum_pii_counts
from ray_jobs.curate.job import run
from ray_jobs.entrypoint import JobError
from tests.llm.data.quality_examples import boilerplate_pages, reuters_stories, write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("shared_ray")]
REPO = Path(__file__).resolve().parents[2]
STEPS: list[dict[str, Any]] = [
    {"kind": "normalize"},
    {"kind": "length"},
    {"kind": "gopher_quality"},
    {"kind": "pii"},
    {"kind": "exact_dedup"},
    {"kind": "minhash_dedup"},
]
CONTACT = " Write to jane.doe@example.com or call (555) 123-4567 before noon."


def _source_doc(dolma: Path) -> dict[str, Any]:
    """A long English dolma document that passes the Gopher rules: the one duplicates copy."""
    with gzip.open(dolma, "rt", encoding="utf-8") as lines:
        for line in lines:
            doc = json.loads(line)
            if (
                len(split_words(doc["text"])) > 400
                and GopherQualityFilter().check(doc["text"]) is None
            ):
                return dict(doc)
    raise AssertionError("no suitable document in the dolma sample")


def _near_copy(text: str) -> str:
    words = text.split(" ")
    for i in range(10, len(words), 97):  # about one word in a hundred changed
        words[i] = "changed"
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("curate-in")
    dolma = next((shared_data / "web" / "cc_dolma_sample").iterdir())
    warc = next((shared_data / "web" / "cc_warc_sample").iterdir())
    shutil.copy(dolma, root / dolma.name)
    shutil.copy(warc, root / "sample.warc.gz")
    shutil.copy(shared_data / "web" / "whirlwind" / "whirlwind.warc.wet.gz", root)
    (root / "truncated.warc.gz").write_bytes(warc.read_bytes()[: warc.stat().st_size // 2])
    source = _source_doc(dolma)
    planted = [
        json.dumps({"id": "zz-exact", "text": source["text"]}),
        json.dumps({"id": "zz-near", "text": _near_copy(source["text"])}),
        "{not json",
        json.dumps({"id": "zz-pii", "text": source["text"][len(source["text"]) // 2 :] + CONTACT}),
    ]
    (root / "planted.jsonl").write_text("\n".join(planted) + "\n")
    pq.write_table(
        pa.table({"id": ["pq-1", "pq-2"], "text": [source["text"][:400], None]}),
        root / "extra.parquet",
    )
    return {"root": root, "source": source["id"]}


def _spec(root: Path, out: Path, steps: list[dict[str, Any]], **extra: Any) -> CurateSpec:
    return CurateSpec.model_validate(
        {"input": str(root), "output": str(out), "steps": steps, **extra}
    )


def _run(corpus: dict[str, Any], out: Path) -> dict[str, Any]:
    spec = _spec(corpus["root"], out, STEPS, parts_per_file=2)
    return dict(run(spec)["stats"])


@pytest.fixture(scope="module")
def first(corpus: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("curate-out-1")
    return out, _run(corpus, out)


def _rows(out: Path, name: str) -> dict[str, dict[str, Any]]:
    return {row["position"]: row for row in pq.read_table(out / name).to_pylist()}


def _digests(out: Path) -> dict[str, str]:
    files = sorted((out / "data").glob("*.parquet")) + sorted((out / "rejected").glob("*.parquet"))
    return {f"{f.parent.name}/{f.name}": hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_counts_add_up_per_step_and_overall(first: tuple[Path, Any]) -> None:
    out, stats = first
    removed = sum(v["documents"] for v in stats["removed"].values())
    assert stats["documents"] == stats["kept"]["documents"] + removed
    # 697 dolma lines + 3 planted + 2 Parquet rows + 16 WARC responses + 1 WET + truncated ones
    assert stats["documents"] == stats["read"]["documents"] > 697 + 3 + 2 + 16 + 1
    assert pq.read_table(out / "data").num_rows == stats["kept"]["documents"]
    assert pq.read_table(out / "rejected").num_rows == removed
    assert [s["step"] for s in stats["steps"]] == [s["kind"] for s in STEPS]
    kept_so_far = stats["read"]["kept"]["documents"]
    for step in stats["steps"]:
        assert step["in"]["documents"] == kept_so_far
        step_removed = sum(v["documents"] for v in step["removed"].values())
        assert step["kept"]["documents"] + step_removed == step["in"]["documents"]
        assert step["seconds"] >= 0
        kept_so_far = step["kept"]["documents"]
    assert kept_so_far == stats["kept"]["documents"]


def test_pii_redactions_are_counted_in_the_funnel(first: tuple[Path, Any]) -> None:
    """The PII step removes nothing; its funnel says what it redacted, and the counts equal
    those on the rows it saw: the kept ones and those that later steps (dedup) removed."""
    out, stats = first
    [pii] = [step for step in stats["steps"] if step["step"] == "pii"]
    assert pii["removed"] == {} and pii["kept"]["documents"] == pii["in"]["documents"]
    later = {"exact_duplicate", "minhash_duplicate"}
    rows = [*_rows(out, "data").values()]
    rows += [row for row in _rows(out, "rejected").values() if row["reason"] in later]
    counts = [row["pii_counts"] for row in rows]
    assert pii["redacted"]["by_type"] == sum_pii_counts(counts)
    assert pii["redacted"]["documents"] == sum(1 for c in counts if c not in (None, "{}"))
    assert pii["redacted"]["by_type"]["EMAIL"] >= 1 and pii["redacted"]["by_type"]["PHONE"] >= 1
    assert stats["redacted"] == pii["redacted"]
    [planted] = [row for row in rows if row["id"] == "zz-pii"]
    assert "jane.doe@example.com" not in planted["text"]
    assert json.loads(planted["pii_counts"]) == {"EMAIL": 1, "PHONE": 1}


def test_planted_duplicates_point_at_the_kept_document(
    first: tuple[Path, Any], corpus: dict[str, Any]
) -> None:
    out, stats = first
    rejected = {row["id"]: row for row in _rows(out, "rejected").values()}
    assert rejected["zz-exact"]["reason"] == "exact_duplicate"
    assert rejected["zz-near"]["reason"] == "minhash_duplicate"
    assert (
        rejected["zz-exact"]["duplicate_of"]
        == rejected["zz-near"]["duplicate_of"]
        == corpus["source"]
    )
    kept = {row["id"]: row for row in _rows(out, "data").values()}
    assert kept[corpus["source"]]["minhash_cluster"] == corpus["source"]
    assert stats["removed"]["minhash_duplicate"]["documents"] >= 1


def test_malformed_input_is_counted_with_its_position(first: tuple[Path, Any]) -> None:
    out, stats = first
    rejected = _rows(out, "rejected")
    assert rejected["planted.jsonl:3"]["reason"] == "malformed: invalid json"
    assert rejected["extra.parquet:2"]["reason"] == "malformed: field 'text' is null"
    truncated = [r for p, r in rejected.items() if p.startswith("truncated.warc.gz:")]
    assert any(r["reason"].startswith("malformed: truncated record") for r in truncated)
    malformed = sum(
        v["documents"] for k, v in stats["read"]["removed"].items() if k.startswith("malformed")
    )
    assert malformed == len([r for r in rejected.values() if r["reason"].startswith("malformed")])
    warc_kept = [r for r in _rows(out, "data").values() if r["source"] == "sample.warc.gz"]
    assert all(r["id"].startswith("urn:uuid:") for r in warc_kept)


def test_rerun_skips_finished_parts_and_writes_identical_bytes(
    first: tuple[Path, Any], corpus: dict[str, Any]
) -> None:
    """A resumed run redoes some parts and all of phase 2: the same bytes prove both determinism
    (phase 2 recomputed from scratch) and resume (skipped parts reused)."""
    out, stats = first
    before = _digests(out)
    rejected_before = _rows(out, "rejected")
    shutil.rmtree(out / "data")
    shutil.rmtree(out / "rejected")
    markers = sorted((out / "_done").glob("*.json"))
    for marker in markers[::3]:
        marker.unlink()
    resumed = _run(corpus, out)
    assert stats["parts_skipped"] == 0
    assert resumed["parts_skipped"] == len(markers) - len(markers[::3])
    assert _digests(out) == before and len(before) == 2
    assert _rows(out, "rejected") == rejected_before
    assert resumed["removed"] == stats["removed"] and resumed["kept"] == stats["kept"]


# --- the quality classifier, trained through the CLI and used by a job --------------------------

QUALITY_STEP: dict[str, Any] = {"kind": "quality_classifier", "model_path": ""}
TRAIN_OPTIONS = ["--epoch", "20", "--lr", "0.5", "--dim", "16", "--bucket", "20000"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "services.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def quality_model(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``llmforge quality-train`` on Reuters stories against boilerplate-heavy web pages."""
    root = tmp_path_factory.mktemp("quality")
    positive = write_jsonl(root / "positive.jsonl", reuters_stories(shared_data))
    negative = write_jsonl(root / "negative.jsonl", boilerplate_pages(shared_data))
    model = root / "quality.bin"
    done = _cli(
        "quality-train", "--positive", str(positive), "--negative", str(negative),
        "--output", str(model), "--holdout", "0.2", *TRAIN_OPTIONS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["held_out"]["precision"] >= 0.9 and report["held_out"]["recall"] >= 0.9
    assert model.is_file() and json.loads(model.with_suffix(".json").read_text()) == report
    return model


def test_quality_train_cli_names_a_missing_input(tmp_path: Path) -> None:
    done = _cli("quality-train", "--positive", str(tmp_path / "none.jsonl"), "--negative",
                str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "m.bin"))  # fmt: skip
    assert done.returncode == 1
    assert f"example file not found: {tmp_path / 'none.jsonl'}" in done.stderr


def test_quality_step_scores_rejects_and_keeps_the_top_fraction(
    quality_model: Path, shared_data: Path, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(next((shared_data / "web" / "cc_dolma_sample").iterdir()), root / "web.jsonl.gz")
    stories = reuters_stories(shared_data, skip=1000, limit=40)  # never seen in training
    write_jsonl(root / "news.jsonl", stories)
    step = QUALITY_STEP | {"model_path": str(quality_model)}
    steps: list[dict[str, Any]] = [{"kind": "length"}, step | {"threshold": 0.1}]
    steps.append(step | {"top_fraction": 0.5})
    spec = _spec(root, tmp_path / "out", steps)
    stats = run(spec)["stats"]
    threshold, top = stats["steps"][1], stats["steps"][2]
    assert top["in"] == threshold["kept"]
    assert top["kept"]["documents"] == round(0.5 * threshold["kept"]["documents"])
    kept = pq.read_table(tmp_path / "out" / "data").to_pylist()
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    cut = [r["quality_score"] for r in rejected if r["reason"] == "quality_classifier"]
    removed = [s["removed"].get("quality_classifier", {"documents": 0}) for s in (threshold, top)]
    assert len(cut) == removed[0]["documents"] + removed[1]["documents"]
    assert len([score for score in cut if score < 0.1]) == removed[0]["documents"]
    assert min(r["quality_score"] for r in kept) >= max(cut)
    kept_news = [r for r in kept if r["source"] == "news.jsonl"]
    assert len(kept_news) >= 0.9 * len(stories)


def test_a_missing_quality_model_fails_the_job_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "quality.bin"
    write_jsonl(tmp_path / "in.jsonl", ["A document."])
    step = QUALITY_STEP | {"model_path": str(missing), "threshold": 0.5}
    spec = _spec(tmp_path, tmp_path / "out", [step])
    with pytest.raises(JobError, match=re.escape(str(missing))):
        run(spec)


# --- a Ray worker killed in the middle of a job ------------------------------------------------

PART_TASK = "ray::Map(_run_part_row)"  # the process title of a worker running a curate part


@pytest.fixture(scope="module")
def books(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 Gutenberg books: each part takes seconds, long enough to be caught running."""
    root = tmp_path_factory.mktemp("books")
    source = shared_data / "text" / "gutenberg_books" / "gutenberg_books.jsonl.gz"
    with gzip.open(source, "rt", encoding="utf-8") as lines:
        (root / "books.jsonl").write_text("".join(itertools.islice(lines, 16)))
    return root


def _books_job(root: Path, out: Path) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"kind": "gopher_quality"}, {"kind": "gopher_repetition"}]
    steps.append({"kind": "exact_dedup"})
    spec = _spec(root, out, steps, parts_per_file=4)
    return dict(run(spec)["stats"])


def _running_part_workers() -> list[psutil.Process]:
    """This test process's Ray workers (Ray runs inside it) that are running a curate part."""
    running = []
    for process in psutil.Process().children(recursive=True):
        try:
            title = process.cmdline()
        except psutil.Error:
            continue  # exited while we looked
        if title and title[0].startswith(PART_TASK):
            running.append(process)
    return running


def _kill_a_running_part(job: threading.Thread, timeout_s: float = 300) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while job.is_alive() and time.monotonic() < deadline:
        for worker in _running_part_workers():
            os.kill(worker.pid, signal.SIGKILL)
            return worker
        time.sleep(0.05)
    pytest.fail(f"no Ray worker was seen running a curate part within {timeout_s} s")


def test_a_worker_killed_mid_job_leaves_the_output_unchanged(books: Path, tmp_path: Path) -> None:
    clean = _books_job(books, tmp_path / "clean")
    outcome: dict[str, Any] = {}

    def job() -> None:
        try:
            outcome["stats"] = _books_job(books, tmp_path / "killed")
        except Exception as e:  # reported by the assertion below
            outcome["error"] = e

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    killed = _kill_a_running_part(thread)
    thread.join(timeout=600)
    assert not thread.is_alive(), "the job did not finish after its worker was killed"
    assert "error" not in outcome, outcome.get("error")
    assert not killed.is_running()
    stats = outcome["stats"]
    assert stats["parts_skipped"] == 0 and stats["documents"] == clean["documents"] == 16
    assert stats["kept"] == clean["kept"] and stats["removed"] == clean["removed"]
    assert _digests(tmp_path / "killed") == _digests(tmp_path / "clean")
