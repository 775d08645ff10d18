"""ray_jobs.tokenize_corpus on local Ray: tiktoken fast path, shard contents, stats, errors, and
sources: named inputs and the curated documents' source tags both reach the shards."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.specs import TokenizeSpec
from llm.tokenizer.bpe import EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, load_tokenizer
from llm.tokenizer.shards import split_of
from llm.train.data import TokenShards
from ray_jobs import tokenize_corpus
from ray_jobs.entrypoint import JobError
from ray_jobs.tokenize_corpus import _plan, _read_piece, run

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("shared_ray")]
NON_ASCII = "Schließen — naïve café, Ελληνικά, 日本語, emoji 😀\n  two spaces\r\n"


# which source each of the corpus's three parts is
PART_SOURCES = ("web", "web", "books")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """The documents three ways: all/ with a source column (as curation writes it), and web/
    and books/ without one, to be named as inputs."""
    src = Path(__file__).resolve().parents[2].parent / "shared/data/web/cc_dolma_sample"
    if not src.is_dir():
        pytest.skip("shared data absent")
    with gzip.open(next(src.iterdir()), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:300]
    ids = [r["id"] for r in rows] + ["non-ascii", "has-eos"]
    texts = [r["text"] for r in rows] + [NON_ASCII, f"one{EOS_TOKEN}two"]
    directory = tmp_path_factory.mktemp("tokenize-job")
    for part, source in enumerate(PART_SOURCES):
        table = pa.table({"id": ids[part::3], "text": texts[part::3]})
        for folder in (directory / "all" / "data", directory / source / "data"):
            folder.mkdir(parents=True, exist_ok=True)
            tagged = folder.parent.name == "all"
            rows_out = table.append_column("source", pa.array([source] * len(table)))
            pq.write_table(rows_out if tagged else table, folder / f"part-{part}.parquet")
    return directory, ids, texts


@pytest.fixture(scope="module")
def job(
    corpus: tuple[Path, list[str], list[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("tokenize-out")
    spec = TokenizeSpec(
        inputs={"web": str(corpus[0] / "web"), "books": str(corpus[0] / "books")},
        output=str(out),
        vocab_size=1024,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, MASK_TOKEN],
        pretokenizer="llama3",
        val_fraction=0.2,
    )
    return out, run(spec)["stats"]


def shard_documents(out: Path, split: str, source: str | None = None) -> Counter[tuple[int, ...]]:
    shards = TokenShards(out, split)
    if source is not None:
        shards = shards.by_source()[source]
    tokens = np.concatenate(shards.arrays).tolist()
    docs: list[tuple[int, ...]] = []
    start = 0
    for i, token in enumerate(tokens):
        if token == shards.eos_id:
            docs.append(tuple(tokens[start:i]))
            start = i + 1
    return Counter(docs)


def test_shards_equal_direct_encode(
    job: tuple[Path, dict[str, Any]], corpus: tuple[Path, list[str], list[str]]
) -> None:
    out, stats = job
    assert stats["encoder"] == "tiktoken"
    tok = load_tokenizer(out / "tokenizer.json")
    _, ids, texts = corpus
    for split in ("train", "val"):
        docs = [t for i, t in zip(ids, texts, strict=True) if split_of(i, 0.2) == split]
        encoded = [tuple(tok.encode(t, add_special_tokens=False).ids) for t in docs]
        # A literal EOS inside a document splits it on reading back, as it would for a model.
        expected = Counter(p for e in encoded for p in _split_on(e, 0))
        assert shard_documents(out, split) == expected
        assert stats["splits"][split]["documents"] == len(docs)


def _split_on(ids: tuple[int, ...], eos: int) -> list[tuple[int, ...]]:
    parts: list[list[int]] = [[]]
    for token in ids:
        parts.append([]) if token == eos else parts[-1].append(token)
    return [tuple(p) for p in parts]


def test_stats_report(job: tuple[Path, dict[str, Any]]) -> None:
    out, stats = job
    assert json.loads((out / "stats.json").read_text()) == stats
    assert 1.5 < stats["splits"]["train"]["bytes_per_token"] < 6
    assert 0 < stats["vocab_used"] <= stats["vocab_size"] == 1024
    assert stats["encode_mb_per_s"] > 0 and stats["tokenizer_train_seconds"] > 0


def test_named_inputs_tag_the_shards(
    job: tuple[Path, dict[str, Any]], corpus: tuple[Path, list[str], list[str]]
) -> None:
    out, stats = job
    manifest = json.loads((out / "manifest.json").read_text())
    _, ids, _ = corpus
    for split in ("train", "val"):
        sources = manifest["splits"][split]["sources"]
        assert sorted(sources) == ["books", "web"]
        assert stats["sources"][split] == sources
        for name in ("web", "books"):
            parts = [p for p, s in enumerate(PART_SOURCES) if s == name]
            docs = [i for p in parts for i in ids[p::3] if split_of(i, 0.2) == split]
            assert sources[name]["documents"] == len(docs)
        assert sum(c["tokens"] for c in sources.values()) == stats["splits"][split]["tokens"]
    assert {s["source"] for s in manifest["splits"]["train"]["shards"]} == {"web", "books"}
    assert manifest["inputs"] == {"web": str(corpus[0] / "web"), "books": str(corpus[0] / "books")}


def test_reuse_tokenizer_gives_same_shards_from_the_documents_source_tags(
    job: tuple[Path, dict[str, Any]],
    corpus: tuple[Path, list[str], list[str]],
    tmp_path: Path,
) -> None:
    out, _ = job
    spec = TokenizeSpec(
        input=str(corpus[0] / "all"),
        output=str(tmp_path),
        tokenizer=str(out / "tokenizer.json"),
        val_fraction=0.2,
        workers=1,
    )
    stats = run(spec)["stats"]
    assert stats["tokenizer_train_seconds"] == 0.0
    for split in ("train", "val"):
        assert shard_documents(out, split) == shard_documents(tmp_path, split)
        for source in ("web", "books"):
            assert shard_documents(out, split, source) == shard_documents(tmp_path, split, source)


def test_corrupt_shard_is_named(job: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = job
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    victim = json.loads((copy / "manifest.json").read_text())["splits"]["val"]["shards"][0]
    data = bytearray((copy / victim["file"]).read_bytes())
    data[0] ^= 0xFF
    (copy / victim["file"]).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"shard {victim['file']}: sha256 mismatch"):
        TokenShards(copy, "val")


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
        tmp_path / "data" / "part-0.parquet",
    )
    with pytest.raises(JobError, match="empty corpus"):
        run(TokenizeSpec(input=str(tmp_path), output=str(tmp_path / "out")))


def _row_grouped(corpus: tuple[Path, list[str], list[str]], folder: Path) -> Path:
    """The corpus as two Parquet files of many uneven row groups (37 rows), tagged by source."""
    _, ids, texts = corpus
    (folder / "data").mkdir(parents=True)
    half = len(ids) // 2 + 5
    for n, (start, stop) in enumerate(((0, half), (half, len(ids)))):
        table = pa.table(
            {
                "id": ids[start:stop],
                "text": texts[start:stop],
                "source": ["web" if i % 3 else "books" for i in range(start, stop)],
            }
        )
        pq.write_table(table, folder / "data" / f"part-{n}.parquet", row_group_size=37)
    return folder


def test_pieces_cover_every_row_once_in_batch_units(
    corpus: tuple[Path, list[str], list[str]], tmp_path: Path
) -> None:
    folder = _row_grouped(corpus, tmp_path / "in")
    plan = _plan({None: str(folder / "data")}, batch=16, piece_batches=3)
    _, ids, _ = corpus
    assert plan.documents == {None: len(ids)}
    read: list[str] = []
    for piece in plan.pieces:
        assert piece.start % 16 == 0 and piece.stop - piece.start <= 48 and piece.tagged
        rows = _read_piece(piece)
        assert rows.num_rows == piece.stop - piece.start
        # the row groups named are exactly those the rows lie in (37 rows each)
        assert piece.groups == tuple(range(piece.start // 37, (piece.stop - 1) // 37 + 1))
        read += rows.column("id").to_pylist()
    assert read == ids
    named = _plan({"news": str(folder / "data")}, batch=16, piece_batches=3)
    assert {p.source for p in named.pieces} == {"news"} and not any(p.tagged for p in named.pieces)
    assert set(_read_piece(named.pieces[0]).column("source").to_pylist()) == {"news"}


def test_shards_do_not_depend_on_the_pieces_or_the_workers(
    job: tuple[Path, dict[str, Any]],
    corpus: tuple[Path, list[str], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches are counted from each file's first row, so pieces of 1 or 3 batches over 1 or 3
    workers write the same shards, byte for byte, holding the documents' direct encodings."""
    out, _ = job
    folder = _row_grouped(corpus, tmp_path / "in")
    monkeypatch.setattr(tokenize_corpus, "ENCODE_BATCH", 16)
    manifests = []
    for piece_batches, workers in ((3, 1), (1, 3)):
        monkeypatch.setattr(tokenize_corpus, "PIECE_BATCHES", piece_batches)
        result = tmp_path / f"out-{piece_batches}-{workers}"
        spec = TokenizeSpec(
            input=str(folder),
            output=str(result),
            tokenizer=str(out / "tokenizer.json"),
            val_fraction=0.2,
            workers=workers,
        )
        run(spec)
        manifests.append(json.loads((result / "manifest.json").read_text())["splits"])
        for split in ("train", "val"):
            assert shard_documents(result, split) == shard_documents(out, split)
    assert manifests[0] == manifests[1]
    # 302 documents in files of 156 and 146 rows: 10 + 10 batches, each a shard per split met
    shards = manifests[0]["train"]["shards"] + manifests[0]["val"]["shards"]
    assert len({s["file"] for s in shards}) == len(shards) > 20


def test_a_file_without_a_text_column_or_not_parquet_is_named(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), tmp_path / "data" / "p.parquet")
    with pytest.raises(JobError, match=r"p\.parquet: no column 'text'"):
        run(TokenizeSpec(input=str(tmp_path), output=str(tmp_path / "out")))
    (tmp_path / "data" / "p.parquet").write_text("id,text\na,x\n")
    with pytest.raises(JobError, match=r"p\.parquet: not a readable Parquet file"):
        run(TokenizeSpec(input=str(tmp_path), output=str(tmp_path / "out")))
