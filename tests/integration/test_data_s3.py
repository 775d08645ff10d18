"""The curate and tokenize jobs with input and output on S3 (moto's server over HTTP on
loopback) give what the same jobs give on local disk, byte for byte; a second run is
byte-identical; a missing bucket fails before any work, naming it.

The jobs run in this process under a local Ray started with the S3 environment, as the pods of
a cluster get it from their operator (Ray workers inherit the environment of the Ray instance).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
import ray

from contracts.specs import CurateSpec, TokenizeSpec
from llm import storage
from llm.storage import s3_filesystem as s3fs
from llm.tokenizer.shards import read_manifest
from ray_jobs.curate.job import run as curate
from ray_jobs.tokenize_corpus import run as tokenize
from services.ray_head import free_port
from services.server import BackgroundServer
from tests.cluster import join_as_driver
from tests.s3 import moto_process

pytestmark = [pytest.mark.ray]
BUCKET = "llmforge-data"
STEPS: list[dict[str, Any]] = [
    {"kind": "normalize"},
    {"kind": "length"},
    {"kind": "exact_dedup"},
    {"kind": "minhash_dedup"},
]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, control_plane: BackgroundServer) -> Iterator[Any]:
    with moto_process() as endpoint, pytest.MonkeyPatch.context() as patch:
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            # Each process's own scratch: nothing a step reads may come from another's.
            storage.SCRATCH_ENV: str(tmp_path_factory.mktemp("scratch")),
        }
        for name, value in env.items():
            patch.setenv(name, value)
        # the jobs' tasks on the shared cluster get it as their runtime env
        join_as_driver(control_plane.app.state.ray_head, env)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield client
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory, s3: Any) -> Path:
    """Dolma documents in two files, one with an exact and near copies of the other's."""
    dolma = next((shared_data / "web" / "cc_dolma_sample").iterdir())
    with gzip.open(dolma, "rt", encoding="utf-8") as lines:
        docs = [json.loads(line) for line in lines][:120]
    rng = random.Random(3)
    copies = [{"id": "copy-exact", "text": docs[0]["text"]}]
    for i, doc in enumerate(docs[1:10]):
        words = doc["text"].split()
        edited = [f"edit{rng.random():.6f}" if rng.random() < 0.01 else w for w in words]
        copies.append({"id": f"copy-near-{i}", "text": " ".join(edited)})
    root = tmp_path_factory.mktemp("data-s3-in")
    for name, rows in (("a-originals.jsonl", docs), ("b-copies.jsonl", copies)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage.upload(root, f"s3://{BUCKET}/in")
    return root


def _digests(uri: str, *folders: str) -> dict[str, str]:
    """sha256 of every file under the folders of ``uri``, by name relative to ``uri``."""
    found = {}
    for folder in folders:
        for entry in storage.list_files(storage.join(uri, folder)):
            name = entry.uri[len(uri) + 1 :]
            found[name] = hashlib.sha256(storage.read_bytes(entry.uri)).hexdigest()
    return found


def _curate(source: str, out: str) -> dict[str, Any]:
    spec = {"input": source, "output": out, "steps": STEPS, "parts_per_file": 2}
    return curate(CurateSpec.model_validate(spec))


def _funnel(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: stats[k] for k in ("documents", "kept", "removed", "read", "parts")}


@pytest.fixture(scope="module")
def curated(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    local = str(tmp_path_factory.mktemp("data-s3-local") / "curated")
    remote = f"s3://{BUCKET}/runs/curated"
    return {
        "local": (local, _curate(str(corpus), local)),
        "s3": (remote, _curate(f"s3://{BUCKET}/in", remote)),
    }


def test_curate_on_s3_writes_what_it_writes_on_local_disk(curated: dict[str, Any]) -> None:
    (local, on_disk), (remote, on_s3) = curated["local"], curated["s3"]
    assert _funnel(on_s3["stats"]) == _funnel(on_disk["stats"])
    rejected = pq.read_table(f"{remote.removeprefix('s3://')}/rejected", filesystem=s3fs())
    reasons = dict(zip(rejected["id"].to_pylist(), rejected["reason"].to_pylist(), strict=True))
    assert reasons["copy-exact"] == "exact_duplicate"
    assert on_s3["stats"]["removed"]["minhash_duplicate"]["documents"] >= 5
    digests = _digests(remote, "data", "rejected")
    assert digests == _digests(local, "data", "rejected")
    assert set(digests) == {"data/part-00000.parquet", "rejected/part-00000.parquet"}
    assert on_s3["data"] == f"{remote}/data" and on_s3["nodes"] == [
        ray.get_runtime_context().get_node_id()
    ]
    # The intermediates a later task reads are on S3 too, and the stats come after them.
    assert storage.list_files(f"{remote}/_parts") and storage.list_files(f"{remote}/_done")
    assert storage.read_json(f"{remote}/stats.json") == on_s3["stats"]
    assert storage.is_file(f"{remote}/metrics.jsonl")


def test_a_second_curate_run_on_s3_is_byte_identical(curated: dict[str, Any]) -> None:
    remote, first = curated["s3"]
    before = _digests(remote, "data", "rejected")
    again = _curate(f"s3://{BUCKET}/in", remote)
    # Every part is reused from its marker; phase 2 is redone from scratch.
    assert again["stats"]["parts_skipped"] == again["stats"]["parts"] == 4
    assert _digests(remote, "data", "rejected") == before
    assert _funnel(again["stats"]) == _funnel(first["stats"])


def _tokenize(source: str, out: str) -> dict[str, Any]:
    spec = TokenizeSpec(input=source, output=out, vocab_size=512, val_fraction=0.2, workers=2)
    return tokenize(spec)


@pytest.fixture(scope="module")
def tokenized(curated: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    local = str(tmp_path_factory.mktemp("data-s3-local") / "tokens")
    remote = f"s3://{BUCKET}/runs/tokens"
    return {
        "local": (local, _tokenize(curated["local"][0], local)),
        "s3": (remote, _tokenize(curated["s3"][0], remote)),
    }


def _shard_files(uri: str) -> dict[str, str]:
    return {k: v for k, v in _digests(uri, "").items() if k.endswith((".bin", "tokenizer.json"))}


def test_tokenize_on_s3_writes_what_it_writes_on_local_disk(tokenized: dict[str, Any]) -> None:
    (local, on_disk), (remote, on_s3) = tokenized["local"], tokenized["s3"]
    assert on_s3["stats"]["splits"] == on_disk["stats"]["splits"]
    assert on_s3["stats"]["vocab_used"] == on_disk["stats"]["vocab_used"] > 256
    files = _shard_files(remote)
    assert files == _shard_files(local) and "tokenizer.json" in files
    assert on_s3["manifest"] == f"{remote}/manifest.json" and len(on_s3["nodes"]) == 1
    manifest = read_manifest(remote, verify=True)
    assert manifest | {"source": None} == read_manifest(local, verify=True) | {"source": None}
    assert storage.read_json(f"{remote}/stats.json") == on_s3["stats"]


def test_a_second_tokenize_run_on_s3_is_byte_identical(
    tokenized: dict[str, Any], curated: dict[str, Any]
) -> None:
    remote, first = tokenized["s3"]
    again_uri = f"s3://{BUCKET}/runs/tokens-again"
    again = _tokenize(curated["s3"][0], again_uri)
    assert _shard_files(again_uri) == _shard_files(remote)
    assert again["stats"]["splits"] == first["stats"]["splits"]
    # An existing tokenizer on S3 is taken as it is.
    reused = f"s3://{BUCKET}/runs/tokens-reused"
    spec = TokenizeSpec(
        input=curated["s3"][0], output=reused, tokenizer=f"{remote}/tokenizer.json", workers=1
    )
    assert tokenize(spec)["stats"]["tokenizer_train_seconds"] == 0.0
    assert storage.read_bytes(f"{reused}/tokenizer.json") == storage.read_bytes(
        f"{remote}/tokenizer.json"
    )


def test_a_corrupt_shard_on_s3_is_named(tokenized: dict[str, Any]) -> None:
    remote, _ = tokenized["s3"]
    copy = f"s3://{BUCKET}/runs/tokens-corrupt"
    for entry in storage.list_files(remote):
        storage.write_bytes(copy + entry.uri[len(remote) :], storage.read_bytes(entry.uri))
    victim = storage.read_json(f"{copy}/manifest.json")["splits"]["train"]["shards"][0]["file"]
    data = bytearray(storage.read_bytes(f"{copy}/{victim}"))
    data[0] ^= 0xFF
    storage.write_bytes(f"{copy}/{victim}", bytes(data))
    with pytest.raises(ValueError, match=f"shard {victim}: sha256 mismatch"):
        read_manifest(copy, verify=True)


MISSING = r"bucket 'no-such-bucket' of s3://no-such-bucket/\w+ does not exist"


def test_a_missing_bucket_fails_before_any_work(corpus: Path) -> None:
    with pytest.raises(storage.StorageError, match=MISSING):
        _curate(f"s3://{BUCKET}/in", "s3://no-such-bucket/curated")
    with pytest.raises(storage.StorageError, match=MISSING):
        _curate("s3://no-such-bucket/in", f"s3://{BUCKET}/runs/never")
    with pytest.raises(storage.StorageError, match=MISSING):
        _tokenize("s3://no-such-bucket/curated", f"s3://{BUCKET}/runs/never")
    assert not storage.list_files(f"s3://{BUCKET}/runs/never")


def test_an_unreachable_endpoint_fails_before_any_work(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(storage.StorageError, match="cannot reach the object store"):
        _curate(f"s3://{BUCKET}/in", f"s3://{BUCKET}/runs/never")
    with pytest.raises(storage.StorageError, match="cannot reach the object store"):
        _tokenize(f"s3://{BUCKET}/curated", f"s3://{BUCKET}/runs/never")
