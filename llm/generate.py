"""Autoregressive sampling with a KV cache: greedy, temperature, top-k, top-p, repetition
penalty, EOS and stop strings, for one prompt or a batch of prompts of different lengths,
returned whole or streamed token by token.

A batch is left-padded, so every row's next token sits in the last column; the padding mask
keeps real tokens from attending to padding and gives each row its own positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from llm.model.encoders import START_ID, EncoderDecoder
from llm.model.gpt import GPT
from llm.model.layers import KVCache


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token and when to stop."""

    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019): > 1 discourages seen tokens
    eos_id: int | None = None  # stops a row; the EOS token is not returned
    stop: Sequence[str] = ()  # stops a row once its decoded completion contains one
    decode: Callable[[list[int]], str] | None = field(default=None, compare=False)
    seed: int | None = None

    def validate(self, max_new_tokens: int) -> None:
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.stop and self.decode is None:
            raise ValueError("stop strings need decode, a function from token ids to text")


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
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


def _penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    # divide positive logits and multiply negative ones, so a seen token always loses mass
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def _next_tokens(
    logits: torch.Tensor, seen: torch.Tensor, opts: Sampling, generator: torch.Generator
) -> torch.Tensor:
    """(B, vocab) logits -> (B,) token ids."""
    if opts.repetition_penalty != 1.0:
        logits = _penalise(logits, seen, opts.repetition_penalty)
    if opts.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits / opts.temperature, opts.top_k, opts.top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


class _Stepper:
    """Feeds a GPT the growing batch and returns the last position's logits.

    With the cache, a step runs one new token per row. Once the context outgrows block_size the
    window slides, every position shifts, and the cache must be rebuilt from the window, which is
    exactly what the uncached path computes.
    """

    def __init__(self, model: nn.Module, core: GPT, use_cache: bool, padded: bool) -> None:
        # model may be core compiled; core gives the config and builds the cache
        self.model, self.core, self.use_cache, self.padded = model, core, use_cache, padded
        self.block_size = core.config.block_size
        self.cache: KVCache | None = None

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        window = min(ids.shape[1], self.block_size)
        attention_mask = mask[:, -window:] if self.padded else None
        if not self.use_cache:
            logits, _ = self.model(ids[:, -window:], attention_mask=attention_mask)
        elif self.cache is None or ids.shape[1] > self.block_size:
            self.cache = self.core.new_cache(ids.shape[0])
            logits, _ = self.model(
                ids[:, -window:], attention_mask=attention_mask, cache=self.cache
            )
        else:
            logits, _ = self.model(ids[:, -1:], attention_mask=attention_mask, cache=self.cache)
        return logits[:, -1].float()


class _Seq2SeqStepper:
    """Encodes the prompts once; the decoder starts from START_ID and extends with the cache
    (or, without it, reruns the whole decoder input every step: the reference the cache must
    match).

    The prompt columns of ids are the encoder's input (their last block_size), the columns
    after them the decoder's.
    """

    def __init__(
        self, model: EncoderDecoder, ids: torch.Tensor, mask: torch.Tensor, use_cache: bool
    ) -> None:
        self.model, self.prompt_len = model, ids.shape[1]
        block = model.config.block_size
        self.src_mask = mask[:, -block:]
        self.memory = model.encode(ids[:, -block:], self.src_mask)
        self.cache = KVCache(model.config, ids.shape[0], block, self.memory) if use_cache else None
        self.start = torch.full((ids.shape[0], 1), START_ID, dtype=torch.long, device=ids.device)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        new = ids[:, self.prompt_len :]
        if 1 + new.shape[1] > self.model.config.block_size:
            raise ValueError("the decoder's output cannot exceed ModelConfig.block_size tokens")
        if self.cache is None:
            tgt = torch.cat((self.start, new), dim=1)
            return self.model.decode(tgt, self.memory, self.src_mask)[:, -1].float()
        step = self.start if new.shape[1] == 0 else new[:, -1:]
        return self.model.decode(step, self.memory, self.src_mask, self.cache)[:, -1].float()


def _left_pad(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt), device=device)
            mask[row, width - len(prompt) :] = 1
    return ids, mask


def _stepper(
    model: nn.Module,
    core: GPT | EncoderDecoder,
    ids: torch.Tensor,
    mask: torch.Tensor,
    use_cache: bool,
    padded: bool,
) -> _Stepper | _Seq2SeqStepper:
    # the encoder-decoder steps through decode(), which a compiled forward does not cover
    if isinstance(core, EncoderDecoder):
        return _Seq2SeqStepper(core, ids, mask, use_cache)
    return _Stepper(model, core, use_cache, padded)


def stream_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    opts: Sampling | None = None,
    *,
    use_cache: bool = True,
) -> Iterator[list[int | None]]:
    """Yield, per step, each row's new token, or None for a row that has already stopped."""
    opts = opts or Sampling()
    opts.validate(max_new_tokens)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompt_ids must not be empty: the model needs at least one token")
    # a torch.compile'd model wraps the original, which holds the config and the type
    core = getattr(model, "_orig_mod", model)
    if not isinstance(core, GPT | EncoderDecoder):
        raise ValueError(f"generation needs a GPT or an EncoderDecoder, got {type(core).__name__}")
    device = next(model.parameters()).device
    # a private generator keeps sampling reproducible without touching the global RNG
    generator = torch.Generator(device=device)
    if opts.seed is None:
        generator.seed()
    else:
        generator.manual_seed(opts.seed)
    ids, mask = _left_pad(prompts, device)
    seen = torch.zeros(len(prompts), core.config.vocab, dtype=torch.bool, device=device)
    seen.scatter_(1, ids, mask.bool())
    done = [False] * len(prompts)
    new: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            step = _stepper(model, core, ids, mask, use_cache, len({len(p) for p in prompts}) > 1)
            for _ in range(max_new_tokens):
                tokens = _next_tokens(step(ids, mask), seen, opts, generator)
                out = _record(tokens.tolist(), done, new, opts)
                yield out
                if all(done):
                    return
                seen.scatter_(1, tokens[:, None], True)
                ids = torch.cat((ids, tokens[:, None]), dim=1)
                mask = torch.cat((mask, torch.ones_like(tokens)[:, None]), dim=1)
    finally:
        model.train(was_training)


def _record(
    tokens: list[int], done: list[bool], new: list[list[int]], opts: Sampling
) -> list[int | None]:
    """Mark rows that hit EOS or a stop string as done; return what each row emits."""
    out: list[int | None] = []
    for row, token in enumerate(tokens):
        if done[row] or token == opts.eos_id:
            done[row] = True
            out.append(None)
            continue
        new[row].append(token)
        out.append(token)
        if opts.stop and opts.decode is not None:
            text = opts.decode(new[row])
            done[row] = any(s in text for s in opts.stop)
    return out


def generate_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    opts: Sampling | None = None,
    *,
    use_cache: bool = True,
) -> list[list[int]]:
    """Each prompt's new token ids. A row that meets a stop string keeps the token completing it."""
    results: list[list[int]] = [[] for _ in prompts]
    for step in stream_batch(model, prompts, max_new_tokens, opts, use_cache=use_cache):
        for row, token in enumerate(step):
            if token is not None:
                results[row].append(token)
    return results


def stream(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    opts: Sampling | None = None,
    *,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield one prompt's new tokens as they are sampled."""
    for (token,) in stream_batch(model, [prompt_ids], max_new_tokens, opts, use_cache=use_cache):
        if token is not None:
            yield token


def generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    use_cache: bool = True,
    **sampling: object,
) -> list[int]:
    """Return only the newly generated token ids; keyword arguments are Sampling's fields.

    The context is cropped to its last block_size tokens, so generation can run past the
    model's context length.
    """
    opts = Sampling(**sampling)  # type: ignore[arg-type]
    return list(stream(model, prompt_ids, max_new_tokens, opts, use_cache=use_cache))
