from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm.data.read_parquet import read_parquet
from llm.data.readers import FieldMap, list_input_files
from llm.data.schema import DOC_SCHEMA


def _write(path: Path) -> str:
    table = pa.table({"body": ["a", "b", None, "dddd", "e"], "key": [1, 2, 3, None, 5]})
    pq.write_table(table, path, row_group_size=2)
    return str(path)


def _read(path: str, **kwargs: object) -> pa.Table:
    tables = list(read_parquet(path, field_map=FieldMap("body", "key"), **kwargs))  # type: ignore[arg-type]
    return pa.concat_tables(tables) if tables else DOC_SCHEMA.empty_table()


def test_field_map_positions_and_malformed_rows(tmp_path: Path) -> None:
    rows = _read(_write(tmp_path / "x.parquet"), max_doc_bytes=3).to_pylist()
    assert [r["id"] for r in rows] == ["1", "2", "3", "x.parquet:4", "5"]
    assert [r["position"] for r in rows] == [f"x.parquet:{n}" for n in range(1, 6)]
    assert rows[2]["reason"] == "malformed: field 'body' is null"
    assert rows[3]["reason"] == "malformed: text over 3 bytes"
    assert [r["reason"] for r in rows if r["text"]] == [None, None, None]


def test_parts_take_row_groups_in_turn(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.parquet")
    parts = [_read(path, part=k, num_parts=2)["position"].to_pylist() for k in range(2)]
    assert parts == [["x.parquet:1", "x.parquet:2", "x.parquet:5"], ["x.parquet:3", "x.parquet:4"]]


def test_missing_text_column_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no column 'text'"):
        list(read_parquet(_write(tmp_path / "x.parquet")))


def test_listing_by_format(tmp_path: Path) -> None:
    for name in ["a.parquet", "b.jsonl", "c.warc.gz", "d.warc.wet.gz", "e.warc.wat.gz"]:
        (tmp_path / name).write_bytes(b"")
    names = [Path(p).name for p in list_input_files(str(tmp_path), None)]
    assert names == ["a.parquet", "b.jsonl", "c.warc.gz", "d.warc.wet.gz"]
    assert [Path(p).name for p in list_input_files(str(tmp_path), "wet")] == ["d.warc.wet.gz"]
