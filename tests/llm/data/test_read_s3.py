"""s3:// inputs through pyarrow's S3 filesystem, against moto's in-process S3 server."""

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm.data.read_parquet import read_parquet
from llm.data.readers import list_input_files, read_jsonl
from services.ray_head import free_port

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def bucket(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")):
        monkeypatch_module.setenv(name, value)
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="corpus")
    lines = [json.dumps({"id": f"d{i}", "text": f"document {i}"}) for i in range(3)]
    s3.put_object(Bucket="corpus", Key="web/a.jsonl", Body="\n".join(lines).encode())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": ["p1"], "text": ["from parquet"]}), sink)
    s3.put_object(Bucket="corpus", Key="web/b.parquet", Body=sink.getvalue().to_pybytes())
    monkeypatch_module.setenv("AWS_ENDPOINT_URL", endpoint)
    yield "corpus"
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_list_and_read_s3_inputs(bucket: str) -> None:
    files = list_input_files(f"s3://{bucket}/web", None)
    assert files == [
        "s3://corpus/web/a.jsonl",
        "s3://corpus/web/b.parquet",
    ]
    jsonl = pa.concat_tables(read_jsonl(files[0]))
    assert jsonl["id"].to_pylist() == ["d0", "d1", "d2"]
    assert jsonl["position"][0].as_py() == "a.jsonl:1"
    parquet = pa.concat_tables(read_parquet(files[1]))
    assert parquet["text"].to_pylist() == ["from parquet"]
