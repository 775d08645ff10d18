import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from llm.tokenizer.bpe import eos_id, save_tokenizer, train_bpe
from llm.tokenizer.shards import (
    FORMAT,
    encode_documents,
    read_manifest,
    split_of,
    token_dtype,
    write_manifest,
    write_shard,
)

DOCS = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak.",
    "Zürich, Straße, naïve — 日本語 😀",
    "",
    "You are all resolved rather to die than to famish?",
]


@pytest.fixture(scope="module")
def tok() -> tokenizers.Tokenizer:
    return train_bpe([d * 20 for d in DOCS], vocab_size=320)


def build_folder(directory: Path, tok: tokenizers.Tokenizer) -> dict:
    """Two train shards and one val shard from DOCS, plus tokenizer and manifest."""
    save_tokenizer(tok, directory / "tokenizer.json")
    eos, dtype = eos_id(tok), token_dtype(tok.get_vocab_size())
    groups = {"train-0001.bin": DOCS[2:4], "train-0000.bin": DOCS[:2], "val-0000.bin": DOCS[4:]}
    shards: dict[str, list[dict]] = {"train": [], "val": []}
    for name, docs in groups.items():
        entry = write_shard(directory, name, encode_documents(tok, docs, eos, dtype))
        entry["documents"] = len(docs)
        shards[name.split("-")[0]].append(entry)
    return write_manifest(
        directory,
        tokenizer_file="tokenizer.json",
        vocab_size=tok.get_vocab_size(),
        dtype=dtype,
        eos_id=eos,
        shards=shards,
        extra={"source": "unit-test"},
    )


def test_shard_contents_equal_direct_encode(tmp_path: Path, tok: tokenizers.Tokenizer) -> None:
    build_folder(tmp_path, tok)
    eos = eos_id(tok)
    expected: list[int] = []
    for doc in DOCS[:2]:
        expected += [*tok.encode(doc).ids, eos]
    stored = np.fromfile(tmp_path / "train-0000.bin", dtype="<u2")
    assert stored.tolist() == expected
    # Documents round-trip: split on EOS and decode.
    text_ids = np.split(stored, np.flatnonzero(stored == eos) + 1)[:-1]
    assert [tok.decode(ids[:-1].tolist()) for ids in text_ids] == DOCS[:2]


def test_manifest_schema(tmp_path: Path, tok: tokenizers.Tokenizer) -> None:
    written = build_folder(tmp_path, tok)
    manifest = read_manifest(tmp_path)
    assert manifest == written == json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == FORMAT
    assert manifest["dtype"] == "uint16"
    assert manifest["eos_id"] == 0
    assert manifest["source"] == "unit-test"
    train = manifest["splits"]["train"]
    assert [s["file"] for s in train["shards"]] == ["train-0000.bin", "train-0001.bin"]
    assert train["documents"] == 4
    assert train["tokens"] == sum(s["tokens"] for s in train["shards"])
    assert manifest["splits"]["val"]["documents"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_verify_catches_corrupted_shard(tmp_path: Path, tok: tokenizers.Tokenizer) -> None:
    build_folder(tmp_path, tok)
    path = tmp_path / "train-0001.bin"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"shard train-0001\.bin: sha256 mismatch"):
        read_manifest(tmp_path)
    read_manifest(tmp_path, verify=False)


def test_verify_catches_truncated_shard(tmp_path: Path, tok: tokenizers.Tokenizer) -> None:
    build_folder(tmp_path, tok)
    path = tmp_path / "val-0000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"shard val-0000\.bin: size mismatch"):
        read_manifest(tmp_path)


def test_verify_catches_changed_tokenizer(tmp_path: Path, tok: tokenizers.Tokenizer) -> None:
    build_folder(tmp_path, tok)
    other = train_bpe(["a different corpus entirely " * 30], vocab_size=320)
    save_tokenizer(other, tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=r"tokenizer tokenizer\.json: sha256 mismatch"):
        read_manifest(tmp_path)


def test_missing_files_are_named(tmp_path: Path, tok: tokenizers.Tokenizer) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        read_manifest(tmp_path)
    build_folder(tmp_path, tok)
    (tmp_path / "val-0000.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"val-0000\.bin"):
        read_manifest(tmp_path)


def test_bad_format_is_rejected(tmp_path: Path, tok: tokenizers.Tokenizer) -> None:
    manifest = build_folder(tmp_path, tok)
    manifest["format"] = "something/9"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest\.json: format"):
        read_manifest(tmp_path)


def test_split_of_is_stable_and_proportional() -> None:
    ids = [f"doc-{i}" for i in range(20_000)]
    first = [split_of(d, 0.1) for d in ids]
    assert first == [split_of(d, 0.1) for d in ids]
    assert set(first) == {"train", "val"}
    assert first.count("val") / len(ids) == pytest.approx(0.1, abs=0.01)
    # Growing the fraction only moves documents train -> val, never the other way.
    wider = [split_of(d, 0.2) for d in ids]
    assert all(w == "val" for f, w in zip(first, wider, strict=True) if f == "val")
    assert {split_of(d, 0.0) for d in ids[:100]} == {"train"}
    assert {split_of(d, 1.0) for d in ids[:100]} == {"val"}
    with pytest.raises(ValueError):
        split_of("x", 1.5)


def test_token_dtype() -> None:
    assert token_dtype(512) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(200_000) == np.uint32


def test_encode_documents_empty_list(tok: tokenizers.Tokenizer) -> None:
    out = encode_documents(tok, [], eos_id(tok), np.uint16)
    assert out.dtype == np.uint16 and out.size == 0
