import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm.tokenizer.bpe import (
    BOS_TOKEN,
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    save_tokenizer,
    train_bpe,
)
from llm.tokenizer.hf import pretrained_fast
from llm.tokenizer.local_train import read_texts, train_from_files

TEXT = "Die Straße 12345 ist 'sehr' schön. I'm sure we'll see 2024 numbers!\n\n  Next  line\r\n"


def test_llama3_splits_digits_in_threes() -> None:
    gpt2 = train_bpe([TEXT * 30], vocab_size=400)
    llama3 = train_bpe([TEXT * 30], vocab_size=400, pretokenizer="llama3")
    pieces = [p for p, _ in llama3.pre_tokenizer.pre_tokenize_str("12345 x")]
    assert pieces[:2] == ["123", "45"]
    assert next(p for p, _ in gpt2.pre_tokenizer.pre_tokenize_str("12345 x")) == "12345"
    assert llama3.decode(llama3.encode(TEXT).ids) == TEXT
    with pytest.raises(ValueError, match="pretokenizer must be one of"):
        train_bpe([TEXT], vocab_size=400, pretokenizer="bert")


def test_special_tokens_get_leading_ids() -> None:
    specials = (EOS_TOKEN, PAD_TOKEN, BOS_TOKEN, MASK_TOKEN)
    tok = train_bpe([TEXT * 20], vocab_size=400, special_tokens=specials)
    assert [tok.token_to_id(t) for t in specials] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="at least 260"):
        train_bpe([TEXT], vocab_size=259, special_tokens=specials)
    with pytest.raises(ValueError, match="duplicates"):
        train_bpe([TEXT], vocab_size=400, special_tokens=(EOS_TOKEN, EOS_TOKEN))


def test_transformers_loads_saved_tokenizer(tmp_path: Path) -> None:
    tok = train_bpe([TEXT * 20], vocab_size=400, special_tokens=(EOS_TOKEN, PAD_TOKEN, MASK_TOKEN))
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    hf = pretrained_fast(tmp_path / "tokenizer.json")
    assert (hf.eos_token_id, hf.pad_token_id, hf.mask_token_id, hf.bos_token) == (0, 1, 2, None)
    assert hf(TEXT)["input_ids"] == tok.encode(TEXT).ids
    assert hf.decode(hf(TEXT)["input_ids"]) == TEXT
    padded = hf([TEXT, "short"], padding=True)["input_ids"]
    assert padded[1][-1] == 1 and len(padded[0]) == len(padded[1])


def write_inputs(directory: Path) -> list[Path]:
    docs = [f"{TEXT} document {i} " * 5 for i in range(60)]
    pq.write_table(pa.table({"text": docs[:30]}), directory / "a.parquet")
    lines = [json.dumps({"text": d}) for d in docs[30:]] + ["", json.dumps({"text": ""})]
    (directory / "b.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "c.txt").write_text("Plain text file, naïve café.\n")
    return [directory / "a.parquet", directory / "b.jsonl", directory / "c.txt"]


def test_train_from_files(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    assert len(list(read_texts([tmp_path]))) == 61
    assert len(list(read_texts(inputs, limit=10))) == 10
    report = train_from_files(inputs, tmp_path / "tok.json", vocab_size=300, val_fraction=0.2)
    assert report["vocab_size"] == 300 and report["bytes_per_token"] > 1.0
    assert report["train_documents"] + report["val_documents"] == 61
    assert pretrained_fast(tmp_path / "tok.json").eos_token == EOS_TOKEN


def test_train_from_files_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty corpus"):
        train_from_files([tmp_path / "empty.jsonl"], tmp_path / "t.json", vocab_size=300)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8"):
        train_from_files([tmp_path / "latin1.txt"], tmp_path / "t.json", vocab_size=300)
    with pytest.raises(FileNotFoundError, match="nope"):
        train_from_files([tmp_path / "nope"], tmp_path / "t.json", vocab_size=300)
