"""Greedy completions of held-out prompts: what the tuned model (and the base model) answers."""

from __future__ import annotations

from typing import Any

import tokenizers

from llm.finetune.data import TokenizedSet
from llm.generate import generate
from llm.model.gpt import GPT


def sample_indices(data: TokenizedSet, count: int, block_size: int) -> list[int]:
    """The first count examples whose prompt leaves room for at least one new token."""
    fits = [i for i in range(len(data)) if 0 < data.prompt_lens[i] < block_size]
    return fits[:count]


def complete(
    models: dict[str, GPT],
    data: TokenizedSet,
    tok: tokenizers.Tokenizer,
    *,
    eos: int,
    count: int,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """For each chosen example: its prompt, reference response and each model's greedy answer
    (stopped at EOS or at the model's context length), keyed "<name>_completion"."""
    block_size = min(m.config.block_size for m in models.values())
    samples = []
    for i in sample_indices(data, count, block_size):
        prompt = data.prompt(i)
        room = min(max_new_tokens, block_size - len(prompt))
        sample: dict[str, Any] = {
            "prompt": tok.decode(prompt),
            "reference": tok.decode([t for t in data.response(i) if t != eos]),
        }
        for name, model in models.items():
            new = generate(model, prompt, room, temperature=0.0, eos_id=eos)
            sample[f"{name}_completion"] = tok.decode(new)
        samples.append(sample)
    return samples
