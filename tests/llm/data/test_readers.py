import gzip
import json
import os
import random
import re
from pathlib import Path

import pyarrow as pa
import pytest
import zstandard

from llm.data.readers import FieldMap, list_input_files, read_jsonl
from llm.data.schema import DOC_SCHEMA, empty_batch
from tests.shared import DATA

DOLMA_DIR = DATA / "web" / "cc_dolma_sample"

NOT_A_STRING = "malformed: field 'text' is not a valid string"

# (line bytes, expected reason or None); line numbers start at 1.
LINES: list[tuple[bytes, str | None]] = [
    (b'{"id": "a", "text": "hello world"}', None),
    (b"{not json", "malformed: invalid json"),
    (b"[1, 2, 3]", "malformed: not a json object"),
    (b'{"id": "d"}', "malformed: missing field 'text'"),
    (b'{"id": "e", "text": 5}', NOT_A_STRING),
    (b'{"id": "f", "text": "caf\xff\xfe"}', "malformed: invalid utf-8"),
    (b'{"id": "g", "text": "' + b"x" * 200 + b'"}', "malformed: line over 100 bytes"),
    (b"", None),  # blank: no document, no row
    (b'{"text": "no id here"}', None),
    (b'{"id": 7, "text": "integer id"}', None),
    (b'{"id": "k", "text": "lone \\ud800 surrogate"}', NOT_A_STRING),
    (b'{"id": ["l"], "text": "list id"}', "malformed: field 'id' is not a string or integer"),
    (b'{"id": "m", "text": "last line, no newline"}', None),
]


def _write(path: Path, lines: list[bytes]) -> Path:
    data = b"\n".join(lines)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _read_all(path: Path, **kwargs: object) -> pa.Table:
    batches = list(read_jsonl(str(path), **kwargs))  # type: ignore[arg-type]
    for batch in batches:
        assert batch.schema == DOC_SCHEMA
    return pa.concat_tables(batches) if batches else empty_batch()


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz"])
def test_every_line_becomes_a_row_with_its_reason(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, [line for line, _ in LINES])
    table = _read_all(path, max_doc_bytes=100, batch_size=4)

    expected = {f"{name}:{i}": reason for i, (line, reason) in enumerate(LINES, 1) if line}
    got = dict(zip(table["position"].to_pylist(), table["reason"].to_pylist(), strict=True))
    assert got == expected
    assert set(table["source"].to_pylist()) == {name}
    rows = {row["position"]: row for row in table.to_pylist()}
    assert rows[f"{name}:1"]["id"] == "a"
    assert rows[f"{name}:1"]["text"] == "hello world"
    assert rows[f"{name}:9"]["id"] == f"{name}:9"
    assert rows[f"{name}:10"]["id"] == "7"
    assert rows[f"{name}:2"]["text"] == "{not json"
    assert rows[f"{name}:6"]["text"].startswith('{"id": "f", "text": "caf')
    # Only the start of an over-long line is ever read into memory.
    assert LINES[6][0].decode().startswith(rows[f"{name}:7"]["text"])
    assert len(rows[f"{name}:7"]["text"]) > 100


def test_malformed_raw_text_is_truncated(tmp_path: Path) -> None:
    path = _write(tmp_path / "long.jsonl", [b"garbage " * 500])
    (row,) = _read_all(path).to_pylist()
    assert row["reason"] == "malformed: invalid json"
    assert len(row["text"]) == 1000


def test_line_longer_than_skip_chunk_does_not_disturb_the_next_line(tmp_path: Path) -> None:
    huge = b'{"id": "big", "text": "' + b"y" * 2_500_000 + b'"}'
    path = _write(tmp_path / "huge.jsonl", [huge, b'{"id": "next", "text": "small"}'])
    table = _read_all(path, max_doc_bytes=1000)
    assert table["reason"].to_pylist() == ["malformed: line over 1000 bytes", None]
    assert table["id"].to_pylist() == ["huge.jsonl:1", "next"]
    assert table["position"].to_pylist() == ["huge.jsonl:1", "huge.jsonl:2"]


@pytest.mark.parametrize("num_parts", [1, 2, 3, 5, 20])
def test_parts_cover_every_line_exactly_once(tmp_path: Path, num_parts: int) -> None:
    lines = [json.dumps({"id": f"d{i}", "text": f"doc {i}"}).encode() for i in range(17)]
    path = _write(tmp_path / "split.jsonl.gz", lines)
    seen: list[str] = []
    for part in range(num_parts):
        table = _read_all(path, part=part, num_parts=num_parts, batch_size=3)
        for position in table["position"].to_pylist():
            assert int(position.split(":")[1]) % num_parts == part
        seen += table["id"].to_pylist()
    assert sorted(seen) == sorted(f"d{i}" for i in range(17))


def test_bad_part_arguments_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.jsonl", [b'{"text": "a"}'])
    with pytest.raises(ValueError, match="part"):
        list(read_jsonl(str(path), part=2, num_parts=2))


def test_field_map_and_source(tmp_path: Path) -> None:
    lines = [b'{"doc_id": "x1", "content": "first"}', b'{"content": "second"}']
    path = _write(tmp_path / "mapped.jsonl", lines)
    table = _read_all(path, field_map=FieldMap(text="content", id="doc_id"), source="wiki")
    assert table["id"].to_pylist() == ["x1", "mapped.jsonl:2"]
    assert table["text"].to_pylist() == ["first", "second"]
    assert table["source"].to_pylist() == ["wiki", "wiki"]

    derived = _read_all(path, field_map=FieldMap(text="content", id=None))
    assert derived["id"].to_pylist() == ["mapped.jsonl:1", "mapped.jsonl:2"]


def _truncated_gzip(path: Path, n_lines: int) -> Path:
    rng = random.Random(0)
    lines = [
        json.dumps({"id": f"d{i}", "text": " ".join(str(rng.random()) for _ in range(50))})
        for i in range(n_lines)
    ]
    data = gzip.compress("\n".join(lines).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_gzip_yields_rows_read_and_one_malformed_row(tmp_path: Path) -> None:
    path = _truncated_gzip(tmp_path / "cut.jsonl.gz", 400)
    table = _read_all(path, batch_size=50)
    reasons = table["reason"].to_pylist()
    assert 0 < reasons.count(None) < 400
    assert reasons[:-1] == [None] * (len(reasons) - 1)
    assert reasons[-1].startswith("malformed: truncated or corrupt stream")
    assert table["position"][-1].as_py() == f"cut.jsonl.gz:{len(reasons)}"

    # Split readers see the same damage but only one of them reports it.
    parts = [_read_all(path, part=p, num_parts=3) for p in range(3)]
    reported = [r for part in parts for r in part["reason"].to_pylist() if r is not None]
    assert len(reported) == 1
    assert sum(part.num_rows for part in parts) == table.num_rows


def test_missing_or_unreadable_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        list(read_jsonl(str(missing)))
    with pytest.raises(OSError, match=re.escape(str(tmp_path))):
        list(read_jsonl(str(tmp_path)))


def test_zst_jsonl_is_read_like_plain_jsonl(tmp_path: Path) -> None:
    lines = b"".join(b'{"id": "z%d", "text": "zstd line %d"}\n' % (i, i) for i in range(3))
    path = tmp_path / "x.jsonl.zst"
    cut = lines.index(b"\n") + 1  # two frames, as concatenated .zst files are
    frames = [zstandard.ZstdCompressor().compress(part) for part in (lines[:cut], lines[cut:])]
    path.write_bytes(b"".join(frames))
    table = pa.concat_tables(read_jsonl(str(path)))
    assert table["id"].to_pylist() == ["z0", "z1", "z2"]
    assert table["text"][2].as_py() == "zstd line 2" and table["reason"].null_count == 3
    path.write_bytes(zstandard.ZstdCompressor().compress(lines)[:-8])  # damaged at the end
    reasons = pa.concat_tables(read_jsonl(str(path)))["reason"].to_pylist()
    assert reasons[-1].startswith("malformed")


def test_list_input_files(tmp_path: Path) -> None:
    for rel in ["b/two.jsonl.gz", "a.jsonl", "b/c/three.jsonl.zst", "b/four.json.gz", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = list_input_files(str(tmp_path))
    expected = ["a.jsonl", "b/c/three.jsonl.zst", "b/four.json.gz", "b/two.jsonl.gz"]
    assert found == [os.path.join(tmp_path, rel) for rel in expected]
    assert list_input_files(f"file://{tmp_path}/a.jsonl") == [f"{tmp_path}/a.jsonl"]

    with pytest.raises(FileNotFoundError, match="missing"):
        list_input_files(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        list_input_files(str(tmp_path / "empty"))


@pytest.mark.skipif(not DOLMA_DIR.is_dir(), reason="shared data not mounted")
def test_real_dolma_sample_reads_697_documents() -> None:
    (path,) = list_input_files(str(DOLMA_DIR))
    table = pa.concat_tables(read_jsonl(path, batch_size=256))
    assert table.num_rows == 697
    assert table["reason"].null_count == 697
    assert table["id"][0].as_py() == "blj5uzvcoa4iybpd5o6kom5nir6ngmoj"
    assert len(set(table["id"].to_pylist())) == 697
