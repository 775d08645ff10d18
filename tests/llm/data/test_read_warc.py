import gzip
from pathlib import Path

import pyarrow as pa
import pytest

from llm.data.read_warc import read_warc
from tests.shared import DATA

WEB = DATA / "web"
WARC = WEB / "cc_warc_sample" / "CC-MAIN-20200808165417-20200808195417-00395.sample.warc.gz"
WET = WEB / "whirlwind" / "whirlwind.warc.wet.gz"
pytestmark = pytest.mark.skipif(not WARC.is_file(), reason="shared data not mounted")


def _read(path: Path, **kwargs: object) -> pa.Table:
    return pa.concat_tables(read_warc(str(path), **kwargs))  # type: ignore[arg-type]


def test_each_response_record_is_a_document_with_its_record_id_and_offset() -> None:
    table = _read(WARC)
    assert table.num_rows == 16 and table["reason"].null_count == 16
    first = table.to_pylist()[0]
    assert first["id"] == "urn:uuid:c4c112a5-3503-4483-abf8-51a0dd86dd53"
    assert first["position"] == f"{WARC.name}:940"
    assert "<" not in first["text"] and "广东" in first["text"]


def test_parts_split_the_records_exactly() -> None:
    ids = [set(_read(WARC, part=k, num_parts=3)["id"].to_pylist()) for k in range(3)]
    assert sum(len(s) for s in ids) == 16 and len(set.union(*ids)) == 16


def test_wet_conversion_record_is_read_as_text() -> None:
    (row,) = _read(WET, kind="wet").to_pylist()
    assert row["id"] == "urn:uuid:ba729a40-ff84-4085-8d48-0a5b2ee0c42d"
    assert row["text"].startswith("Escopete - Biquipedia")


def test_truncated_file_keeps_earlier_records_and_flags_the_cut_one(tmp_path: Path) -> None:
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(WARC.read_bytes()[: WARC.stat().st_size // 2])
    table = _read(cut)
    reasons = table["reason"].to_pylist()
    assert reasons[:-1] == [None] * (len(reasons) - 1)
    assert reasons[-1].startswith("malformed: truncated record")
    assert table["position"][-1].as_py() == "cut.warc.gz:61090"


def test_corrupt_bytes_fail_the_block_digest(tmp_path: Path) -> None:
    raw = bytearray(gzip.decompress(WARC.read_bytes()))
    middle = len(raw) // 3
    raw[middle : middle + 200] = b"x" * 200
    bad = tmp_path / "bad.warc"
    bad.write_bytes(bytes(raw))
    reasons = _read(bad)["reason"].to_pylist()
    assert reasons.count("malformed: block digest mismatch") == 1
    assert reasons.count(None) == len(reasons) - 1


def test_corrupt_gzip_stream_becomes_one_malformed_row(tmp_path: Path) -> None:
    data = bytearray(WARC.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 200] = b"x" * 200
    bad = tmp_path / "bad.warc.gz"
    bad.write_bytes(bytes(data))
    table = _read(bad)
    assert table["reason"][-1].as_py().startswith("malformed: unreadable stream")
    assert table["position"][-1].as_py().startswith("bad.warc.gz:after:")


def test_oversized_record_is_malformed_not_read() -> None:
    reasons = _read(WARC, max_doc_bytes=1000)["reason"].to_pylist()
    assert set(reasons) == {"malformed: record over 1000 bytes"}
