"""Masked-LM scoring: pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model
Scoring"), so that an encoder can be scored on minimal pairs as a decoder is by its
log-likelihood (BLiMP: the grammatical sentence should score higher).

PLL(x) = sum over scored positions i of log P(x_i | x with x_i masked): each position is masked
in a copy of its own, and the copies go through the model in batches. Special tokens (a
sentence's BOS/EOS, padding) stay visible but are not scored. lm-evaluation-harness has no
masked-LM scoring; minicons and the paper's ``mlm-scoring`` do this per sentence, which is what
is written here for llmforge's own ``EncoderLM`` (it returns ``(logits, loss)``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn


@torch.no_grad()
def pseudo_log_likelihood(
    model: nn.Module,
    ids: Sequence[int],
    mask_id: int,
    *,
    skip: Collection[int] = (),
    batch_size: int = 64,
) -> float:
    """The sequence's PLL in nats: every position whose id is not in ``skip``, masked in turn."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens = torch.tensor(list(ids), dtype=torch.long, device=device)
    positions = [i for i, t in enumerate(ids) if t not in skip]
    total = 0.0
    for start in range(0, len(positions), batch_size):
        chunk = torch.tensor(positions[start : start + batch_size], device=device)
        rows = tokens.repeat(len(chunk), 1)
        rows[torch.arange(len(chunk), device=device), chunk] = mask_id
        logits = model(rows)[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp[torch.arange(len(chunk), device=device), chunk, tokens[chunk]]
        total += float(picked.sum())
    model.train(was_training)
    return total


def minimal_pair_accuracy(
    model: nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    mask_id: int,
    *,
    skip: Collection[int] = (),
    batch_size: int = 64,
) -> dict[str, float]:
    """BLiMP-style scoring by PLL: the share of (good, bad) pairs whose good sentence scores
    higher, and the mean PLL of each side."""
    if not pairs:
        raise ValueError("no minimal pairs to score")

    def pll(ids: Sequence[int]) -> float:
        return pseudo_log_likelihood(model, ids, mask_id, skip=skip, batch_size=batch_size)

    good = [pll(g) for g, _ in pairs]
    bad = [pll(b) for _, b in pairs]
    right = sum(g > b for g, b in zip(good, bad, strict=True))
    return {
        "acc": right / len(pairs),
        "pll_good": sum(good) / len(good),
        "pll_bad": sum(bad) / len(bad),
        "pairs": float(len(pairs)),
    }
