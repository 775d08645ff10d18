"""Task files, data reading, malformed records and few-shot prompts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from llm.eval.data import DATA_ROOT_ENV, DataNotFoundError, read_records
from llm.eval.task import LoadedTask
from llm.eval.task_config import TaskError, builtin_tasks, parse_file, resolve_tasks

MC_TASK = {
    "task": "quiz",
    "output_type": "multiple_choice",
    "doc_to_text": "Question: {{ question }}\nAnswer:",
    "doc_to_choice": "choices",
    "doc_to_target": "{{ gold }}",
}
ROWS = [
    {"question": f"What is {i} plus one?", "choices": [str(i + 1), str(i + 2)], "gold": 0}
    for i in range(8)
]


def write_task(
    tmp: Path, rows: list, extra: dict | None = None, raw_lines: list[str] | None = None
) -> Path:
    data = tmp / "quiz.jsonl"
    lines = [json.dumps(r) for r in rows] + (raw_lines or [])
    data.write_text("\n".join(lines) + "\n")
    path = tmp / "quiz.yaml"
    path.write_text(yaml.safe_dump({**MC_TASK, "data": str(data), **(extra or {})}))
    return path


def load(path: Path) -> LoadedTask:
    [cfg], _ = resolve_tasks([path])
    return LoadedTask.load(cfg)


def test_missing_field_names_the_file_and_the_field(tmp_path):
    path = write_task(tmp_path, ROWS)
    doc = yaml.safe_load(path.read_text())
    del doc["doc_to_choice"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TaskError, match=r"quiz\.yaml \(task quiz\): missing field 'doc_to_choice'"):
        parse_file(path)


def test_unknown_key_and_bad_output_type_are_named(tmp_path):
    path = write_task(tmp_path, ROWS, {"doc_to_txt": "x"})
    with pytest.raises(TaskError, match=r"unknown fields \['doc_to_txt'\]"):
        parse_file(path)
    path = write_task(tmp_path, ROWS, {"output_type": "multiple-choice"})
    with pytest.raises(TaskError, match="output_type must be one of"):
        parse_file(path)


def test_template_with_an_unknown_column_names_field_column_and_item(tmp_path):
    path = write_task(tmp_path, ROWS, {"doc_to_text": "Q: {{ questoin }}"})
    with pytest.raises(TaskError) as err:
        load(path)
    message = str(err.value)
    for part in ("quiz.yaml", "'doc_to_text'", "questoin", "row 0", "line 1", "'question'"):
        assert part in message


def test_missing_data_file_names_the_path(tmp_path, monkeypatch):
    path = write_task(tmp_path, ROWS, {"data": "nowhere/quiz.jsonl"})
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "root"))
    with pytest.raises(
        DataNotFoundError, match=r"quiz\.yaml: data file .*root/nowhere/quiz\.jsonl"
    ):
        load(path)


def test_relative_data_paths_resolve_under_the_data_root(tmp_path, monkeypatch):
    (tmp_path / "root" / "sets").mkdir(parents=True)
    (tmp_path / "root" / "sets" / "q.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "root"))
    task = load(write_task(tmp_path, ROWS, {"data": "sets/q.jsonl"}))
    assert len(task.records.good) == len(ROWS)


def test_malformed_rows_are_counted_with_line_and_reason(tmp_path):
    rows = [*ROWS[:3], {"question": "q", "choices": "not a list", "gold": 0}, ROWS[3]]
    rows.append({"question": "q", "choices": ["a", "b"], "gold": 5})
    path = write_task(tmp_path, rows, raw_lines=["{broken json", "[1, 2]", json.dumps(ROWS[4])])
    items, malformed = load(path).items()
    assert [i.line for i in items] == [1, 2, 3, 5, 9]
    reasons = {m.line: m.reason for m in malformed}
    assert sorted(reasons) == [4, 6, 7, 8]
    assert "not a non-empty list" in reasons[4]
    assert "target 5 is not a choice index" in reasons[6]
    assert reasons[7].startswith("invalid JSON")
    assert "not a JSON object" in reasons[8]


def test_shards_cover_rows_and_their_malformed_records(tmp_path):
    path = write_task(tmp_path, ROWS, raw_lines=["{broken"])
    task = load(path)
    first, bad_a = task.items(rows=slice(0, 5))
    second, bad_b = task.items(rows=slice(5, None))
    whole, bad = task.items()
    assert first + second == whole
    assert bad_a + bad_b == bad and len(bad) == 1


def test_fewshot_is_deterministic_and_never_the_item_itself(tmp_path):
    path = write_task(tmp_path, ROWS, {"num_fewshot": 3, "fewshot_seed": 7})
    task = load(path)
    items, _ = task.items()
    again, _ = load(path).items()
    assert [i.context for i in items] == [i.context for i in again]
    for item in items:
        blocks = item.context.split("\n\n")
        assert len(blocks) == 4  # 3 examples, then the item
        own = blocks[-1]
        assert all(not b.startswith(own) for b in blocks[:-1])
        # examples carry the target delimiter and the gold choice
        assert all(b.split("\nAnswer:")[1].startswith(" ") for b in blocks[:-1])
    other_seed, _ = load(write_task(tmp_path, ROWS, {"num_fewshot": 3, "fewshot_seed": 8})).items()
    assert [i.context for i in other_seed] != [i.context for i in items]


def test_fewshot_skips_duplicates_of_the_item(tmp_path):
    rows = [ROWS[0], ROWS[0], ROWS[1], ROWS[2]]
    items, _ = load(write_task(tmp_path, rows, {"num_fewshot": 2})).items()
    own = items[0].context.split("\n\n")[-1]
    assert all(not b.startswith(own) for b in items[0].context.split("\n\n")[:-1])


def test_a_shard_gets_the_prompts_of_the_whole_run(tmp_path):
    task = load(write_task(tmp_path, ROWS, {"num_fewshot": 2}))
    whole, _ = task.items()
    shard, _ = load(write_task(tmp_path, ROWS, {"num_fewshot": 2})).items(rows=slice(4, 6))
    assert shard == whole[4:6]


def test_fewshot_from_a_separate_split(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"question": "Is water wet?", "choices": ["yes", "no"], "gold": 0}))
    items, _ = load(
        write_task(tmp_path, ROWS, {"num_fewshot": 1, "fewshot_data": str(train)})
    ).items()
    assert all(i.context.startswith("Question: Is water wet?\nAnswer: yes\n\n") for i in items)


def test_parquet_and_json_array_and_gzip_jsonl_read_alike(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "q.parquet")
    (tmp_path / "q.json").write_text(json.dumps(ROWS))
    with gzip.open(tmp_path / "q.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in ROWS))
    for name in ("q.parquet", "q.json", "q.jsonl.gz"):
        records = read_records(str(tmp_path / name))
        assert [r.data for r in records.good] == ROWS and not records.malformed


def test_text_documents_split_where_wikitext_articles_begin(tmp_path):
    start = builtin_tasks()["wikitext2"].document_start  # type: ignore[union-attr]
    text = (
        " \n = One = \n \n text a \n = = Sub = = \n more , as\n = 1 k = \n shown \n"
        " \n = Two = \n \n b \n"
    )
    (tmp_path / "w.txt").write_text(text)
    records = read_records(str(tmp_path / "w.txt"), document_start=start)
    assert [r.line for r in records.good] == [1, 9]
    first = records.good[0].data["text"]
    assert " = = Sub = = " in first and " = 1 k = " in first  # a section, an equation line
    assert records.good[1].data["text"] == " \n = Two = \n \n b \n"


def test_every_builtin_task_file_parses():
    index = builtin_tasks()
    for name in (
        "hellaswag",
        "arc_easy",
        "arc_challenge",
        "blimp",
        "wikitext2",
        "gutenberg_nltk",
        "alpaca",
        "lambada_austen",
        "arc_easy_mmlu",
        "arc_easy_gen",
        "blimp_two_prefix",
    ):
        assert name in index
    tasks, groups = resolve_tasks(["blimp"])
    assert len(tasks) == 67 and len(groups["blimp"]) == 67


def test_task_data_from_s3(tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from services.ray_head import free_port

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        s3.create_bucket(Bucket="evals")
        body = gzip.compress(("\n".join(json.dumps(r) for r in ROWS) + "\n{bad\n").encode())
        s3.put_object(Bucket="evals", Key="quiz/test.jsonl.gz", Body=body)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        items, malformed = load(
            write_task(tmp_path, [], {"data": "s3://evals/quiz/test.jsonl.gz"})
        ).items()
        assert len(items) == len(ROWS) and [m.line for m in malformed] == [len(ROWS) + 1]
    finally:
        server.stop()


def test_builtin_lambada_task_is_the_last_word_of_each_long_paragraph(shared_data):
    """lambada_austen (loglikelihood) on Emma: one item per paragraph whose first line has 60+
    characters; the context is the paragraph up to its last word, the target that word."""
    task = LoadedTask.load(builtin_tasks()["lambada_austen"])  # type: ignore[arg-type]
    items, malformed = task.items(limit=400)
    assert not malformed and len(items) == 400
    text = (shared_data / "text/gutenberg_nltk/austen-emma.txt").read_text()
    # the first paragraph of the novel proper, by hand
    start = text.index("Emma Woodhouse, handsome, clever, and rich")
    paragraph = " ".join(text[start : text.index("\n\n", start)].split())
    assert paragraph.endswith("to distress or vex her.")
    first = next(i for i in items if i.context.startswith("Emma Woodhouse, handsome"))
    assert first.context == paragraph[: -len("vex her.")] + "vex"
    assert first.references == (" her",)
    for item in items:  # every target is one bare word after a space
        assert len(item.references) == 1 and item.references[0][1:].isalnum(), item
        assert "\n" not in item.context and item.context == item.context.strip()


def test_builtin_mmlu_style_arc_letters_its_choices_with_first_n_shots(shared_data):
    task = LoadedTask.load(builtin_tasks()["arc_easy_mmlu"])  # type: ignore[arg-type]
    rows = [json.loads(line) for line in (shared_data / "eval/arc/arc_easy_test.jsonl").open()]

    def block(row: dict) -> str:
        letters = "".join(f"{'ABCDE'[i]}. {c}\n" for i, c in enumerate(row["choices"]))
        return f"{row['query'].removeprefix('Question: ').strip()}\n{letters}Answer:"

    items, malformed = task.items(limit=8)
    assert not malformed
    item = items[7]  # the first five items are its examples, each with its letter
    shots = "".join(f"{block(r)} {'ABCDE'[r['gold']]}\n\n" for r in rows[:5])
    description = "The following are multiple choice questions (with answers) about science.\n\n"
    assert item.context == description + shots + block(rows[7])
    assert item.choices == tuple("ABCDE"[: len(rows[7]["choices"])])
    assert item.gold == (rows[7]["gold"],)
    # an item among the first five takes the sixth instead of itself
    assert block(rows[0]) not in items[0].context.removesuffix(block(rows[0]))
    assert block(rows[5]) in items[0].context


def test_builtin_generative_arc_extracts_the_letter_it_scores(shared_data):
    """arc_easy_gen: the lettered prompt, the gold letter as target, and lm-eval's filters
    pulling the letter out of planted answers."""
    from llm.eval.filters import apply_filter

    cfg = builtin_tasks()["arc_easy_gen"]
    task = LoadedTask.load(cfg)  # type: ignore[arg-type]
    rows = [json.loads(line) for line in (shared_data / "eval/arc/arc_easy_test.jsonl").open()]
    items, malformed = task.items(limit=7)
    assert not malformed
    assert items[6].references == ("ABCDE"[rows[6]["gold"]],)
    assert items[6].context.endswith("\nAnswer:") and items[6].context.count("Answer: ") == 5
    strict, flexible = cfg.filter_list  # type: ignore[union-attr]
    # answer -> (strict-match, flexible-extract); "I" is no choice letter
    planted = {
        " B. because": ("B", "B"),
        " I think C": ("[invalid]", "C"),
        " so (D)": ("[invalid]", "D"),
    }
    for answer, (want_strict, want_flexible) in planted.items():
        assert apply_filter(strict, [answer]) == want_strict
        assert apply_filter(flexible, [answer]) == want_flexible
    assert cfg.primary_metric == "exact_match,strict-match"  # type: ignore[union-attr]
