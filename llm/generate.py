"""Autoregressive sampling from a GPT: greedy, temperature, top-k and nucleus (top-p)."""

from __future__ import annotations

import torch

from llm.model.gpt import GPT


def _validate(
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> None:
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids must not be empty: the model needs at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus."""
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # drop a token once the mass before it already reaches top_p, so the most likely
        # token always survives and the kept set is the smallest reaching top_p
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> int:
    if temperature == 0:
        return int(torch.argmax(logits).item())
    probs = _filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator).item())


def generate(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """Return only the newly generated token ids; stop after eos_id, which is not returned.

    The context fed to the model is cropped to its last block_size tokens, so generation can
    run past the model's context length.
    """
    _validate(prompt_ids, max_new_tokens, temperature, top_k, top_p)
    device = next(model.parameters()).device
    # a private generator keeps sampling reproducible without touching the global RNG
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    block_size = model.config.block_size
    ids = list(prompt_ids)
    new_ids: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                context = torch.tensor([ids[-block_size:]], dtype=torch.long, device=device)
                logits, _ = model(context)
                token = _next_token(logits[0, -1].float(), temperature, top_k, top_p, generator)
                if token == eos_id:
                    break
                ids.append(token)
                new_ids.append(token)
    finally:
        model.train(was_training)
    return new_ids
