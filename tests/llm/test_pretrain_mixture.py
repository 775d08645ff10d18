"""A mixed pretraining run through ``llm.train.pretrain.train`` (what the train job's workers
run) on three real sources of ../shared/data — web, books and news — sharing one tokenizer:
the realised token shares are the requested ones within 1%, the summary reports each source's
tokens and epochs, and a run resumed from a checkpoint is exact."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from llm.model.config import ModelConfig
from llm.tokenizer.bpe import eos_id, save_tokenizer, train_bpe
from llm.tokenizer.shards import (
    encode_documents,
    split_of,
    token_dtype,
    write_manifest,
    write_shard,
)
from llm.train.config import TrainConfig
from llm.train.pretrain import train

SOURCES = {
    "web": "web/cc_dolma_sample",
    "books": "text/gutenberg_books/gutenberg_books.jsonl.gz",
    "news": "text/reuters21578/reuters21578.jsonl.gz",
}
SHARES = {"web": 0.6, "books": 0.3, "news": 0.1}
SEQ_LEN = 32


def _texts(path: Path, chars: int) -> list[str]:
    """Documents of a JSONL.gz file (the first file of a folder) up to ``chars`` characters."""
    path = next(iter(sorted(path.iterdir()))) if path.is_dir() else path
    texts, total = [], 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"][: min(5000, chars)]
            texts.append(text)
            total += len(text)
            if total >= chars:
                break
    return texts


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Shards tagged web, books and news (of unequal sizes), one tokenizer for all."""
    folder = tmp_path_factory.mktemp("mixed")
    # news the smallest source, by far
    sizes = {"web": 40_000, "books": 40_000, "news": 1_500}
    docs = {name: _texts(shared_data / rel, sizes[name]) for name, rel in SOURCES.items()}
    tok = train_bpe([t for texts in docs.values() for t in texts], vocab_size=512)
    save_tokenizer(tok, folder / "tokenizer.json")
    eos, dtype = eos_id(tok), token_dtype(tok.get_vocab_size())
    entries: dict[str, list[dict]] = {"train": [], "val": []}
    for name, texts in docs.items():
        for split in ("train", "val"):
            chosen = [t for i, t in enumerate(texts) if split_of(f"{name}{i}", 0.1) == split]
            tokens = encode_documents(tok, chosen, eos, dtype)
            entry = write_shard(folder, f"{split}-{name}.bin", tokens)
            entries[split].append({**entry, "documents": len(chosen), "source": name})
    write_manifest(
        folder,
        tokenizer_file="tokenizer.json",
        vocab_size=tok.get_vocab_size(),
        dtype=dtype,
        eos_id=eos,
        shards=entries,
    )
    return folder


def _run(shards: Path, out: Path, steps: int, on_checkpoint: Any = None) -> dict:
    model = ModelConfig(vocab_size=512, block_size=SEQ_LEN, n_layer=1, n_head=2, n_embd=32)
    cfg = TrainConfig(
        steps=steps, batch_size=8, lr=3e-3, warmup_steps=2, log_every=5, eval_every=20,
        eval_batches=2, checkpoint_every=20, spike_factor=None, seed=1,
    )  # fmt: skip
    return train(cfg, model, shards, out, mixture=SHARES, on_checkpoint=on_checkpoint)


def test_a_mixed_run_realises_its_shares_and_resumes_exactly(shards: Path, tmp_path: Path) -> None:
    straight = _run(shards, tmp_path / "straight", 40)
    usage = straight["mixture"]
    windows = 40 * 8
    assert sum(u["windows"] for u in usage.values()) == windows
    for name, share in SHARES.items():
        assert abs(usage[name]["share"] - share) < 0.01, (name, usage[name])
        assert usage[name]["tokens"] == usage[name]["windows"] * (SEQ_LEN + 1)
    # news is the smallest source: read more than once over, the others less
    assert usage["news"]["epochs"] > 1 > usage["books"]["epochs"]

    # a crash right after the step-20 checkpoint, then the same run again: it resumes there
    def crash(step: int, path: Path | None, metrics: dict[str, float]) -> None:
        if step == 20:
            raise RuntimeError("crash after the step-20 checkpoint")

    with pytest.raises(RuntimeError, match="crash"):
        _run(shards, tmp_path / "resumed", 40, on_checkpoint=crash)
    resumed = _run(shards, tmp_path / "resumed", 40)
    assert len(resumed["loss_history"]) == 4  # steps 25 to 40
    assert resumed["loss_history"] == pytest.approx(straight["loss_history"][-4:], rel=1e-5)
    assert resumed["mixture"] == usage
