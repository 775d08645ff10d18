import gzip
import json
import re
from pathlib import Path

import pytest
import tokenizers

from llm.tokenizer.bpe import (
    EOS_TOKEN,
    eos_id,
    file_sha256,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)
from tests.shared import DATA

DATA = DATA
SHAKESPEARE = DATA / "text/tinyshakespeare/input.txt"
GERMAN_PAGES = DATA / "web/trafilatura_pages/pages_text.jsonl.gz"
NON_ASCII = "Schließen — naïve café, Ελληνικά, 日本語, emoji 😀\ttab\n  two spaces\r\n"

needs_data = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} is absent")


def shakespeare_docs() -> list[str]:
    text = SHAKESPEARE.read_text(encoding="utf-8")[:300_000]
    return [d for d in text.split("\n\n") if d.strip()]


@pytest.fixture(scope="module")
def tok() -> tokenizers.Tokenizer:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is absent")
    return train_bpe(shakespeare_docs(), vocab_size=512)


def german_texts(limit: int = 20) -> list[str]:
    if not GERMAN_PAGES.is_file():
        return []
    texts = []
    with gzip.open(GERMAN_PAGES, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line).get("text") or ""
            if any(ord(c) > 127 for c in text):
                texts.append(text)
            if len(texts) >= limit:
                break
    return texts


@needs_data
def test_vocab_size_and_eos_id(tok: tokenizers.Tokenizer) -> None:
    assert tok.get_vocab_size() == 512
    assert eos_id(tok) == 0
    assert tok.id_to_token(0) == EOS_TOKEN


@needs_data
def test_round_trip_real_documents(tok: tokenizers.Tokenizer) -> None:
    docs = shakespeare_docs()[-50:] + german_texts() + [NON_ASCII]
    for doc in docs:
        ids = tok.encode(doc).ids
        assert max(ids) < 512
        assert tok.decode(ids) == doc


@needs_data
def test_merges_compress_text(tok: tokenizers.Tokenizer) -> None:
    text = "\n\n".join(shakespeare_docs()[:100])
    assert len(tok.encode(text).ids) < 0.6 * len(text.encode("utf-8"))


def test_eos_id_is_stable_across_corpora() -> None:
    a = train_bpe(["hello world " * 50], vocab_size=300)
    b = train_bpe(["completely different text, zebra " * 50], vocab_size=300)
    assert eos_id(a) == eos_id(b) == 0
    c = train_bpe(["x y z " * 20], vocab_size=300, special_tokens=("<pad>", EOS_TOKEN))
    assert eos_id(c) == 1


def test_eos_encodes_as_one_token() -> None:
    tok = train_bpe(["some text here " * 20], vocab_size=300)
    assert tok.encode(f"ab{EOS_TOKEN}cd").ids.count(eos_id(tok)) == 1


def test_vocab_too_small() -> None:
    with pytest.raises(ValueError, match="at least 257"):
        train_bpe(["hello"], vocab_size=256)
    with pytest.raises(ValueError, match="at least 258"):
        train_bpe(["hello"], vocab_size=257, special_tokens=("<a>", "<b>"))


def test_empty_corpus() -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe(iter([]), vocab_size=300)
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe(["", ""], vocab_size=300)


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = train_bpe(["the cat sat on the mat " * 30], vocab_size=300)
    path = tmp_path / "tokenizer.json"
    save_tokenizer(tok, path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    plain = tokenizers.Tokenizer.from_file(str(path))
    loaded = load_tokenizer(path)
    for other in (plain, loaded):
        assert other.encode(NON_ASCII).ids == tok.encode(NON_ASCII).ids
        assert other.decode(other.encode(NON_ASCII).ids) == NON_ASCII
    assert len(file_sha256(path)) == 64


def test_load_missing_tokenizer(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_tokenizer(missing)
