"""A tiny llmforge checkpoint with its tokenizer, for the completions tests."""

from __future__ import annotations

from pathlib import Path

import torch

from llm.finetune.config import LoraSettings, finetune_config
from llm.finetune.data import Example, TokenizedSet
from llm.finetune.sft import finetune
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.tokenizer.bpe import load_tokenizer, save_tokenizer, train_bpe
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


def tiny_lora(base: Path, out: Path) -> Path:
    """A few LoRA steps teaching the base to answer any prompt with 'the sea is deep'."""
    tok = load_tokenizer(base / "tokenizer.json")
    answer = tok.encode(" the sea is deep").ids
    examples = []
    for text in ("The king said", "Hello world", "A man is", "the queen"):
        prompt = tok.encode(text).ids
        ids = [*prompt, *answer, EOS_ID]
        trained = [False] * len(prompt) + [True] * (len(answer) + 1)
        examples.append(Example(ids, trained, len(prompt), False))
    data = TokenizedSet.from_examples(examples * 2)
    cfg = finetune_config(
        steps=3, batch_size=4, lr=1e-1, min_lr=1e-2, warmup_steps=1, log_every=3,
        eval_every=3, checkpoint_every=3,
    )  # fmt: skip
    settings = LoraSettings(r=4, alpha=8.0, target_modules=("qkv", "proj", "fc"))
    return Path(finetune(cfg, base, data, data, out, pad_id=EOS_ID, lora=settings)["checkpoint"])
