"""Tiny checkpoints with other weights than ``tiny_model.tiny_checkpoint``'s (the same
tokenizer and shape), for tests that need two models that answer differently."""

from __future__ import annotations

from pathlib import Path

import torch

from llm.model.gpt import GPT
from llm.train.checkpoint import load_model, save_checkpoint
from tests.services.tiny_model import tiny_checkpoint


def seeded_checkpoint(folder: Path, seed: int) -> Path:
    """tiny_checkpoint's model with its weights drawn from ``seed`` instead (0: the same)."""
    path = tiny_checkpoint(folder)
    if seed == 0:
        return path
    config = load_model(path).config
    torch.manual_seed(seed)
    model = GPT(config)
    tokenizer = (path / "tokenizer.json").read_bytes()
    path = save_checkpoint(
        folder, model=model, config=config, optimizer=None, trainer_state={"step": 2}
    )
    (path / "tokenizer.json").write_bytes(tokenizer)
    return path
