"""Batched scoring of tokenized (context, continuation) requests.

Requests are sorted longest first (lm-eval's Collator order: -len(context + continuation), then
the tokens) and batched; inputs are right-padded and only the continuation positions go
through the LM head and log_softmax. On an llmforge GPT, requests that share a context (the
choices of one multiple-choice item) run that context once: a batch of contexts (longest
first) goes through the model with a KV cache, then their continuations, sorted by length, run
in batches on a copy of their context's cache. Padding between a context and its
continuations is masked and position ids count real tokens only, so each continuation is
scored as if it directly followed its context.

An llmforge encoder (``scoring == "pll"``) scores a continuation by pseudo-log-likelihood
(Salazar et al. 2020, as ``llm.eval.pll``): context and continuation are one bidirectional
input (left-truncated to max_length), each continuation token is masked in a copy of its own,
and log P(true token | the rest) is summed over them; the copies of all requests run in
batches of batch_size rows. An empty context is lm-eval's prefix token, so BLiMP-style minimal
pairs get every token of the sentence masked in turn.

An llmforge encoder-decoder (``scoring == "seq2seq"``) scores T5's way: the encoder reads the
context (left-truncated to max_length), the decoder reads START_ID + continuation[:-1] and the
log-probabilities of the continuation tokens are summed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llm.eval.lm import PLL, SEQ2SEQ, EvalModel, LlmforgeEncoder, LlmforgeSeq2Seq, hidden_states
from llm.model.encoders import START_ID
from llm.model.gpt import GPT
from llm.model.layers import KVCache


@dataclass(frozen=True)
class TokenRequest:
    context: tuple[int, ...]
    continuation: tuple[int, ...]
    label: str = ""


@dataclass(frozen=True)
class Score:
    logprob: float  # summed over the continuation's tokens
    is_greedy: bool  # every continuation token is the argmax
    tokens: int  # continuation tokens


def _sort_key(r: TokenRequest) -> tuple[int, tuple[int, ...]]:
    whole = r.context + r.continuation
    return -len(whole), whole


def _score_rows(logits: torch.Tensor, targets: Sequence[Sequence[int]]) -> list[Score]:
    """logits: (sum of len(targets), vocab), the rows predicting each target's tokens in turn."""
    flat = torch.tensor([t for target in targets for t in target], device=logits.device)
    logprobs = F.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(1, flat[:, None])[:, 0]
    # argmax == target (lm-eval's test, the first index on a tie), with argmax (ten times
    # slower than a max on the CPU) only on the rows where the target reaches the maximum
    greedy = picked >= torch.amax(logprobs, dim=-1)
    reach = greedy.nonzero()[:, 0]
    if len(reach):
        greedy[reach] = logprobs[reach].argmax(dim=-1) == flat[reach]
    out, start = [], 0
    for target in targets:
        end = start + len(target)
        logprob, is_greedy = float(picked[start:end].sum()), bool(greedy[start:end].all())
        out.append(Score(logprob, is_greedy, end - start))
        start = end
    return out


def _score_plain(model: EvalModel, requests: Sequence[TokenRequest]) -> list[Score]:
    """lm-eval's path: one row per request, left-truncated to max_length + 1 tokens."""
    limit = model.max_length
    inputs = [(r.context + r.continuation)[-(limit + 1) :][:-1] for r in requests]
    ids = torch.zeros(len(requests), max(len(i) for i in inputs), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    for row, (inp, r) in enumerate(zip(inputs, requests, strict=True)):
        ids[row, : len(inp)] = torch.tensor(inp)
        rows += [row] * len(r.continuation)
        cols += range(len(inp) - len(r.continuation), len(inp))
    logits = model.logits_at(ids, torch.tensor(rows), torch.tensor(cols))
    return _score_rows(logits, [r.continuation for r in requests])


def _padded(
    seqs: Sequence[Sequence[int]], width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their mask (1 = real token)."""
    ids = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, device=device)
        mask[row, : len(seq)] = 1
    return ids, mask


@torch.no_grad()
def _run_contexts(
    gpt: GPT, head: nn.Module, contexts: list[tuple[int, ...]]
) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
    """One pass over the contexts: their KV cache, padding mask and, from each context's last
    position, the logits of every continuation's first token."""
    device = gpt.wte.weight.device
    ids, mask = _padded(contexts, max(len(c) for c in contexts), device)
    cache = gpt.new_cache(len(contexts), ids.shape[1])
    hidden = gpt(ids, attention_mask=mask, cache=cache)[0]
    last = torch.tensor([len(c) - 1 for c in contexts], device=device)
    return cache, mask, head(hidden[torch.arange(len(contexts), device=device), last])


@torch.no_grad()
def _run_continuations(
    gpt: GPT,
    head: nn.Module,
    ctx: tuple[KVCache, torch.Tensor, torch.Tensor],
    owner: list[int],
    conts: list[tuple[int, ...]],
) -> list[Score]:
    """Score conts, conts[n] after context owner[n], on a copy of that context's cache."""
    cache, ctx_mask, first_all = ctx
    device = ctx_mask.device
    rows_of = torch.tensor(owner, device=device)
    first = first_all[rows_of]
    tail = max(len(k) for k in conts) - 1  # a continuation's last token is never an input
    if tail == 0:
        return _score_rows(first, conts)
    n_ctx = ctx_mask.shape[1]
    big = gpt.new_cache(len(conts), n_ctx + tail)
    big.k[:, :, :, :n_ctx] = cache.k[:, rows_of]
    big.v[:, :, :, :n_ctx] = cache.v[:, rows_of]
    big.length = n_ctx
    ids, mask = _padded([k[:-1] for k in conts], tail, device)
    hidden = gpt(ids, attention_mask=torch.cat((ctx_mask[rows_of], mask), dim=1), cache=big)[0]
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: each row's positions in turn
    rest = head(hidden[rows, cols])
    # interleave: row n's first-token logits, then its len(k) - 1 continuation positions
    lengths = torch.tensor([len(k) for k in conts], device=device)
    starts = torch.cumsum(lengths, 0) - lengths
    order = torch.empty(int(lengths.sum()), dtype=torch.long, device=device)
    order[starts] = torch.arange(len(conts), device=device)
    others = torch.ones_like(order, dtype=torch.bool)
    others[starts] = False
    order[others] = torch.arange(len(conts), len(conts) + len(rest), device=device)
    return _score_rows(torch.cat((first, rest))[order], conts)


def _score_shared(
    gpt: GPT, requests: Sequence[TokenRequest], groups: list[list[int]], batch_size: int
) -> dict[int, Score]:
    """Each group's context runs once; its continuations then run in batches of batch_size,
    longest first, so little of any batch is padding."""
    contexts = [requests[g[0]].context for g in groups]
    rows = [(n, i) for n, g in enumerate(groups) for i in g]
    rows.sort(key=lambda row: (-len(requests[row[1]].continuation), requests[row[1]].continuation))
    out: dict[int, Score] = {}
    with hidden_states(gpt) as head:
        ctx = _run_contexts(gpt, head, contexts)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            conts = [requests[i].continuation for _, i in chunk]
            scores = _run_continuations(gpt, head, ctx, [n for n, _ in chunk], conts)
            out.update(zip([i for _, i in chunk], scores, strict=True))
    return out


def _context_batches(
    requests: Sequence[TokenRequest], indices: list[int], batch_size: int, limit: int
) -> Iterator[list[list[int]]]:
    """Requests grouped by context, up to batch_size contexts per batch, longest context first,
    each batch small enough that its padded context plus any continuation fits the model."""
    by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i in indices:
        by_context[requests[i].context].append(i)
    groups = sorted(by_context.values(), key=lambda g: (-len(requests[g[0]].context), g[0]))
    batch: list[list[int]] = []
    for group in groups:
        candidate = [*batch, group]
        n_ctx = len(requests[candidate[0][0]].context)
        tail = max(len(requests[i].continuation) for g in candidate for i in g) - 1
        if batch and (len(candidate) > batch_size or n_ctx + tail > limit):
            yield batch
            candidate = [group]
        batch = candidate
    if batch:
        yield batch


@torch.no_grad()
def _score_pll(
    model: LlmforgeEncoder, requests: Sequence[TokenRequest], batch_size: int
) -> list[Score]:
    """Pseudo-log-likelihood of each continuation given its (visible) context: one masked copy
    per continuation token, batch_size copies per forward pass, longest inputs first."""
    limit, device = model.max_length, model.device
    windows = [(r.context + r.continuation)[-limit:] for r in requests]
    # (request, position of the masked token in its window), every continuation token
    copies = [
        (n, len(windows[n]) - len(r.continuation) + j)
        for n, r in enumerate(requests)
        for j in range(len(r.continuation))
    ]
    copies.sort(key=lambda c: (-len(windows[c[0]]), c))
    picked: dict[tuple[int, int], tuple[float, bool]] = {}
    with hidden_states(model.core) as head:
        for start in range(0, len(copies), batch_size):
            chunk = copies[start : start + batch_size]
            seqs = [windows[n] for n, _ in chunk]
            ids, mask = _padded(seqs, max(len(s) for s in seqs), device)
            rows = torch.arange(len(chunk), device=device)
            cols = torch.tensor([pos for _, pos in chunk], device=device)
            truth = ids[rows, cols].clone()
            ids[rows, cols] = model.mask_id
            # no mask when every row is as long: the same computation as pseudo_log_likelihood
            ragged = len({len(s) for s in seqs}) > 1
            hidden = model.model(ids, attention_mask=mask if ragged else None)[0]
            logprobs = F.log_softmax(head(hidden[rows, cols]).float(), dim=-1)
            lp = logprobs.gather(1, truth[:, None])[:, 0].tolist()
            greedy = (logprobs.argmax(dim=-1) == truth).tolist()
            picked.update(zip(chunk, zip(lp, greedy, strict=True), strict=True))
    out = []
    for n, r in enumerate(requests):
        first = len(windows[n]) - len(r.continuation)
        mine = [picked[(n, first + j)] for j in range(len(r.continuation))]
        out.append(Score(sum(lp for lp, _ in mine), all(g for _, g in mine), len(mine)))
    return out


@torch.no_grad()
def _score_seq2seq(
    model: LlmforgeSeq2Seq, requests: Sequence[TokenRequest], batch_size: int
) -> list[Score]:
    """The decoder's log-probabilities of each continuation, the encoder reading its context;
    batches of batch_size requests, longest first. Source and target are right-padded: the
    source padding is masked, the target's sits after every scored position of the causal
    decoder."""
    core, limit, device = model.core, model.max_length, model.device
    order = sorted(range(len(requests)), key=lambda i: _sort_key(requests[i]))
    out: dict[int, Score] = {}
    with hidden_states(core) as head:
        for start in range(0, len(order), batch_size):
            chunk = [requests[i] for i in order[start : start + batch_size]]
            srcs = [r.context[-limit:] for r in chunk]
            src, src_mask = _padded(srcs, max(len(s) for s in srcs), device)
            mask = src_mask if len({len(s) for s in srcs}) > 1 else None
            tgts = [(START_ID, *r.continuation[:-1]) for r in chunk]
            tgt, tgt_mask = _padded(tgts, max(len(t) for t in tgts), device)
            hidden = core.decode(tgt, core.encode(src, mask), mask)
            rows, cols = tgt_mask.nonzero(as_tuple=True)  # row-major, as the targets
            logits = head(hidden[rows, cols])
            scores = _score_rows(logits, [r.continuation for r in chunk])
            out.update(zip(order[start : start + batch_size], scores, strict=True))
    return [out[i] for i in range(len(requests))]


def score_tokens(
    model: EvalModel,
    requests: Sequence[TokenRequest],
    *,
    batch_size: int = 32,
    share_prefix: bool = True,
) -> list[Score]:
    """Score every request the model's way (its ``scoring``); results come back in the order
    of requests."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not requests:
        return []
    if model.scoring == PLL:
        assert isinstance(model, LlmforgeEncoder)
        return _score_pll(model, requests, batch_size)
    if model.scoring == SEQ2SEQ:
        assert isinstance(model, LlmforgeSeq2Seq)
        return _score_seq2seq(model, requests, batch_size)
    results: dict[int, Score] = {}
    gpt = model.gpt() if share_prefix else None
    if gpt is not None and gpt.config.position == "alibi":
        # ALiBi biases by slot distance, which the padding between a context and its
        # continuations would distort; the other position schemes count real tokens only
        gpt = None
    fits = [
        i
        for i, r in enumerate(requests)
        if len(r.context) + len(r.continuation) <= model.max_length + 1
    ]
    shared: list[int] = []
    if gpt is not None:
        counts: dict[tuple[int, ...], int] = defaultdict(int)
        for i in fits:
            counts[requests[i].context] += 1
        shared = [i for i in fits if counts[requests[i].context] > 1]
    plain = sorted(set(range(len(requests))) - set(shared), key=lambda i: _sort_key(requests[i]))
    for start in range(0, len(plain), batch_size):
        chunk = plain[start : start + batch_size]
        results.update(zip(chunk, _score_plain(model, [requests[i] for i in chunk]), strict=True))
    if gpt is not None and shared:
        for batch in _context_batches(requests, shared, batch_size, model.max_length):
            results.update(_score_shared(gpt, requests, batch, batch_size))
    return [results[i] for i in range(len(requests))]
