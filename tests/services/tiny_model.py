"""A tiny llmforge checkpoint with its tokenizer, for the completions tests."""

from __future__ import annotations

from pathlib import Path

import torch

from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.tokenizer.bpe import save_tokenizer, train_bpe
from llm.train.checkpoint import save_checkpoint

TEXT = (
    "The king said that the queen would come to the castle in the morning. "
    "Hello world, the world is wide and the sea is deep. "
    "A man is sitting on a roof. He is ripping tiles off the roof of the house. "
) * 20
CONTEXT = 128
EOS_ID = 0  # train_bpe puts its one special token, <|endoftext|>, first


def tiny_checkpoint(folder: Path, context: int = CONTEXT) -> Path:
    """A random-weight GPT (context 128 unless asked) saved as a checkpoint with tokenizer.json
    beside it."""
    tok = train_bpe([TEXT], vocab_size=300)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tok.get_vocab_size(), block_size=context, n_layer=2, n_head=2, n_embd=32
    )
    model = GPT(config)
    path = save_checkpoint(
        folder, model=model, config=config, optimizer=None, trainer_state={"step": 1}
    )
    save_tokenizer(tok, path / "tokenizer.json")
    return path
