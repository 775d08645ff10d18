"""Tiny models and tokenizers for the evaluation tests, built in the test session."""

from __future__ import annotations

import pytest
import tokenizers
import torch

from llm.eval.data import default_data_root
from llm.eval.lm import LlmforgeModel
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.tokenizer.bpe import train_bpe

# a few sentences of plain English: enough merges that words become single tokens
TEXT = (
    "The king said that the queen would come to the castle in the morning. "
    "Hello world, the world is wide and the sea is deep. "
    "A man is sitting on a roof. He is ripping tiles off the roof of the house. "
    "Question: Which planet is closest to the sun? Answer: Mercury is closest. "
) * 20


@pytest.fixture(scope="session")
def tok() -> tokenizers.Tokenizer:
    return train_bpe([TEXT], vocab_size=400)


def tiny_gpt(vocab: int, **overrides: object) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab, block_size=32, n_layer=2, n_head=2, n_embd=32)
    return GPT(ModelConfig(**{**cfg, **overrides})).eval()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def lm(tok: tokenizers.Tokenizer) -> LlmforgeModel:
    return LlmforgeModel(tiny_gpt(tok.get_vocab_size()), tok)


def needs_data(*paths: str) -> None:
    """Skip unless the data root ($LLMFORGE_DATA_ROOT or ../shared/data) holds paths."""
    root = default_data_root()
    for p in paths:
        if root is None or not (root / p).exists():
            pytest.skip(f"{p} absent under the data root ({root})")
