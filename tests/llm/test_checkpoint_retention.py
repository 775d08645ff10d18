"""Keep the newest K checkpoints plus the best by validation loss; best.json points at it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.train.checkpoint import (
    best_checkpoint,
    complete_checkpoints,
    prune_checkpoints,
    record_best,
    save_checkpoint,
    step_dir,
)
from llm.train.pretrain import train
from tests.llm.test_loop import base_cfg, tiny_model, vocab_of


def _save(root: Path, step: int) -> None:
    config = ModelConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8)
    save_checkpoint(
        step_dir(root, step), model=GPT(config), config=config, optimizer=None, trainer_state={}
    )


def test_prune_keeps_the_newest_and_the_named_steps(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8, 10):
        _save(tmp_path, step)
    (tmp_path / "step_00000012").mkdir()  # incomplete (another rank's save in progress)
    removed = prune_checkpoints(tmp_path, 2, keep_steps={4})
    assert sorted(p.name for p in removed) == ["step_00000002", "step_00000006"]
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4, 8, 10]
    assert (tmp_path / "step_00000012").is_dir()
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, 0, keep_steps=set())


def test_record_best_replaces_the_pointer(tmp_path: Path) -> None:
    record_best(tmp_path, 4, 2.5)
    record_best(tmp_path, 8, 2.25)
    assert best_checkpoint(tmp_path) == {"step": 8, "val_loss": 2.25, "path": "step_00000008"}
    assert not list(tmp_path.glob(".*tmp"))


def test_training_keeps_last_k_plus_best(shakespeare_shards: Path, tmp_path: Path) -> None:
    model = tiny_model(vocab_of(shakespeare_shards))
    common = {"log_every": 2, "eval_every": 2, "checkpoint_every": 2, "eval_batches": 2}
    common |= {"warmup_steps": 0, "grad_clip": 0.0, "spike_factor": None, "keep_last": 2}
    logs: list[tuple[int, dict[str, float]]] = []
    train(base_cfg(steps=8, **common), model, shakespeare_shards, tmp_path,
          on_log=lambda s, m: logs.append((s, m)))  # fmt: skip
    # the run goes on at a rate far too high, so validation loss rises again: the best
    # checkpoint is an early one, which keep_last alone would delete
    summary = train(
        base_cfg(steps=16, lr=1.0, min_lr=1.0, **common),
        model,
        shakespeare_shards,
        tmp_path,
        on_log=lambda s, m: logs.append((s, m)),
    )
    val = {step: m["val_loss"] for step, m in logs}
    assert sorted(val) == list(range(2, 17, 2))
    best_step = min(val, key=lambda s: val[s])
    assert best_step < 14, val  # the case this test is for: the best is not among the newest
    root = tmp_path / "checkpoints"
    best = {"step": best_step, "val_loss": val[best_step], "path": step_dir(root, best_step).name}
    assert json.loads((root / "best.json").read_text()) == best
    assert summary["best_checkpoint"] == best
    assert [s for s, _ in complete_checkpoints(root)] == [best_step, 14, 16]
