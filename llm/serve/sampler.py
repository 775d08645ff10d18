"""Next tokens for a batch of rows that each sample with their own parameters and generator.

Each row draws from its own torch.Generator, so a seeded choice gets the same tokens whether it
runs alone or beside others: the batch changes which rows share a forward, never which random
numbers a row consumes. Logprobs are the model's own distribution (log-softmax of the raw
logits, before temperature, penalties and truncation), as OpenAI and vLLM report them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llm.generate import filter_logits
from llm.serve.outputs import TokenInfo
from llm.serve.params import SamplingParams


@dataclass
class RowSampler:
    """One choice's sampling state: its parameters, generator and the counts penalties use."""

    params: SamplingParams
    generator: torch.Generator
    counts: Counter[int]

    @classmethod
    def create(cls, params: SamplingParams, choice: int, device: torch.device) -> RowSampler:
        generator = torch.Generator(device=device)
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed + choice)
        return cls(params, generator, Counter())

    def pick(self, logits: torch.Tensor) -> int:
        """(vocab,) logits -> a token id."""
        p = self.params
        if p.penalised and self.counts:
            # OpenAI's penalties: frequency scales with the count, presence is paid once
            ids = torch.tensor(list(self.counts), device=logits.device)
            seen = torch.tensor(
                list(self.counts.values()), device=logits.device, dtype=logits.dtype
            )
            logits = logits.clone()
            logits[ids] -= seen * p.frequency_penalty + p.presence_penalty
        if p.temperature == 0:
            token = int(logits.argmax())
        else:
            top_p = p.top_p if p.top_p < 1 else None
            probs = filter_logits(logits / p.temperature, p.top_k, top_p).softmax(dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        self.counts[token] += 1
        return token


def token_infos(
    logprobs: torch.Tensor,
    tokens: Sequence[int],
    top: int,
    text_of: Callable[[int], str],
) -> list[TokenInfo]:
    """(N, vocab) log-probabilities -> each of tokens' logprob and the top most likely."""
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device)[:, None])[:, 0]
    best = logprobs.topk(top, dim=-1) if top else None
    infos = []
    for i, token in enumerate(tokens):
        alternatives: tuple[tuple[str, float], ...] = ()
        if best is not None:
            pairs = zip(best.indices[i].tolist(), best.values[i].tolist(), strict=True)
            alternatives = tuple((text_of(t), v) for t, v in pairs)
        infos.append(TokenInfo(token, text_of(token), float(chosen[i]), alternatives))
    return infos
