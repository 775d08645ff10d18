"""The engine with a task other than pretraining's: an encoder on the masked-LM objective."""

from __future__ import annotations

from pathlib import Path

from llm.model.config import ModelConfig
from llm.model.encoders import EncoderLM
from llm.train.checkpoint import load_checkpoint, step_dir
from llm.train.config import TrainConfig
from llm.train.data import TokenShards
from llm.train.objectives import MaskedLMBatches, next_token_loss
from llm.train.trainer import Task, Trainer

SEQ_LEN = 32


def test_masked_lm_trains_as_a_plugged_in_task(shakespeare_shards: Path, tmp_path: Path) -> None:
    shards = TokenShards(shakespeare_shards, "train")
    config = ModelConfig(
        vocab_size=shards.vocab_size,
        block_size=SEQ_LEN,
        n_layer=2,
        n_head=2,
        n_embd=32,
        arch="encoder",
    )
    task = Task(
        build_model=lambda device: EncoderLM(config).to(device),
        build_batches=lambda rank, world_size: MaskedLMBatches(
            shards,
            batch_size=8,
            seq_len=SEQ_LEN,
            mask_id=shards.vocab_size - 1,
            rank=rank,
            world_size=world_size,
        ),
        objective=next_token_loss,
        seq_len=SEQ_LEN,
    )
    cfg = TrainConfig(steps=30, log_every=5, checkpoint_every=30, warmup_steps=3, spike_factor=None)
    trainer = Trainer(cfg, task, tmp_path)
    history = trainer.fit()
    assert [step for step, _ in history] == [5, 10, 15, 20, 25, 30]
    assert history[-1][1] < history[0][1] - 0.5, history
    saved, state = load_checkpoint(step_dir(tmp_path / "checkpoints", 30))
    assert saved == config and state["step"] == 30 and "val_loss" not in trainer.last
