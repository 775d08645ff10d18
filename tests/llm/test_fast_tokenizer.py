import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import normalizers

from llm.tokenizer.bpe import EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, save_tokenizer, train_bpe
from llm.tokenizer.fast import NotExact, build_encoding, document_encoder, fast_encode_documents
from llm.tokenizer.shards import encode_documents
from tests.shared import DATA

DATA = DATA
DOLMA = DATA / "web/cc_dolma_sample/CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
GERMAN_PAGES = DATA / "web/trafilatura_pages/pages_text.jsonl.gz"
SPECIALS = (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)
TRICKY = [
    "Schließen — naïve café, Ελληνικά, 日本語, emoji 😀\ttab\n  two spaces\r\n",
    f"one document{EOS_TOKEN}glued to the next{PAD_TOKEN}",
    "numbers 1234567 and 3.14159, contractions: I'm, we'll, they've, DON'T",
    "   leading and trailing whitespace   \n\n\n",
    "",
]


def jsonl_texts(path: Path, limit: int | None = None) -> list[str]:
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line).get("text") or "")
            if limit is not None and len(texts) >= limit:
                break
    return texts


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    if not DOLMA.is_file() or not GERMAN_PAGES.is_file():
        pytest.skip(f"{DOLMA} or {GERMAN_PAGES} is absent")
    return jsonl_texts(DOLMA) + jsonl_texts(GERMAN_PAGES, limit=150) + TRICKY


@pytest.fixture(scope="module", params=["gpt2", "llama3"])
def trained(
    request: pytest.FixtureRequest, corpus: list[str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[tokenizers.Tokenizer, Path]:
    tok = train_bpe(
        corpus[:250], vocab_size=4096, special_tokens=SPECIALS, pretokenizer=request.param
    )
    path = tmp_path_factory.mktemp("fast") / "tokenizer.json"
    save_tokenizer(tok, path)
    return tok, path


def test_ids_equal_tokenizers_on_every_document(
    trained: tuple[tokenizers.Tokenizer, Path], corpus: list[str]
) -> None:
    tok, path = trained
    enc = build_encoding(path)
    expected = [e.ids for e in tok.encode_batch(corpus, add_special_tokens=False)]
    for text, ids in zip(corpus, expected, strict=True):
        assert enc.encode(text, allowed_special="all") == ids, text[:80]
    flat = [i for ids in expected for i in [*ids, 0]]
    assert fast_encode_documents(enc, corpus, 0, np.uint16).tolist() == flat


def test_round_trip_non_ascii(
    trained: tuple[tokenizers.Tokenizer, Path], corpus: list[str]
) -> None:
    tok, path = trained
    enc = build_encoding(path)
    for text in corpus[-60:]:
        ids = enc.encode_ordinary(text)
        assert enc.decode(ids) == text
        assert tok.decode(ids) == text


def test_document_encoder_picks_tiktoken(trained: tuple[tokenizers.Tokenizer, Path]) -> None:
    tok, path = trained
    encode, kind = document_encoder(path, np.uint16, TRICKY)
    assert kind == "tiktoken"
    assert np.array_equal(encode(TRICKY), encode_documents(tok, TRICKY, 0, np.uint16))
    _, forced = document_encoder(path, np.uint16, allow_fast=False)
    assert forced == "tokenizers"


def rewrite(path: Path, dest: Path, change) -> Path:  # type: ignore[no-untyped-def]
    config = json.loads(path.read_text())
    change(config)
    dest.write_text(json.dumps(config))
    return dest


def test_ids_out_of_merge_order_are_rejected(
    trained: tuple[tokenizers.Tokenizer, Path], tmp_path: Path
) -> None:
    _, path = trained

    def swap_last_two(config: dict) -> None:
        vocab = config["model"]["vocab"]
        merges = config["model"]["merges"]
        a, b = ("".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges[-2:])
        vocab[a], vocab[b] = vocab[b], vocab[a]

    bad = rewrite(path, tmp_path / "tokenizer.json", swap_last_two)
    with pytest.raises(NotExact, match=r"tokenizer\.json: .*merge order"):
        build_encoding(bad)
    encode, kind = document_encoder(bad, np.uint16)
    assert kind.startswith("tokenizers (") and "merge order" in kind
    assert encode(["abc"]).size > 1


def test_unsupported_features_fall_back(tmp_path: Path) -> None:
    tok = train_bpe(["some text here and there " * 30], vocab_size=300)
    tok.normalizer = normalizers.NFKC()
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    with pytest.raises(NotExact, match="normalizer"):
        build_encoding(tmp_path / "tokenizer.json")
    wordpiece = tokenizers.Tokenizer(tokenizers.models.WordPiece({"[UNK]": 0}, unk_token="[UNK]"))
    save_tokenizer(wordpiece, tmp_path / "wp.json")
    with pytest.raises(NotExact, match="WordPiece"):
        build_encoding(tmp_path / "wp.json")
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        build_encoding(tmp_path / "missing.json")
