"""Batched scoring of tokenized (context, continuation) requests.

Requests longer than the model's window are cut on the left as lm-eval cuts them, as a shorter
context. Without a shared-context path (``share_prefix=False``, an ALiBi model, a Hugging Face
model) they run lm-eval's way: one right-padded row per request, longest first, and only the
continuation positions go through the LM head and log_softmax.

On an llmforge GPT, requests that share leading tokens run them once. Each request's sequence
(context + continuation[:-1]) becomes a path in a prefix tree: the choices of a multiple-choice
item branch after their context, WinoGrande-style contexts after their shared start, and
one-token choices add nothing to their context. A row holds a tree of up to max_length tokens in
depth-first order; each token attends to its ancestors only (a mask) and has its depth as its
position, so every continuation is scored exactly as if it followed its context alone. Rows run
longest first, batch_size rows at a time, and a prefix every row of a batch starts with (a
few-shot task's description and examples) runs once, on one row, into a KV cache the batch
reads. Logits are made and scored a few hundred rows at a time, which stay in cache.

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

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llm.eval.lm import PLL, SEQ2SEQ, EvalModel, LlmforgeEncoder, LlmforgeSeq2Seq, hidden_states
from llm.model.encoders import START_ID
from llm.model.gpt import GPT

# shorter prefixes shared by a whole batch run with each row: one more forward costs more
MIN_SHARED_PREFIX = 16
# a sequence joins the previous one's row when they share at least this many leading tokens
MIN_JOIN = 4
# rows of logits scored at a time: 256 x a 50k vocabulary is 50 MB, a 4k one 4 MB
SCORE_CHUNK = 256


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


def _fitted(r: TokenRequest, limit: int) -> TokenRequest:
    """r with the context lm-eval's window leaves it: the model reads the last limit + 1 tokens
    of context + continuation but the last; the continuation (at most limit tokens, checked
    when it was encoded) keeps every token and the context at least one."""
    if len(r.continuation) > limit:
        raise ValueError(
            f"{r.label or 'request'}: the continuation has {len(r.continuation)} tokens, more "
            f"than the model's context of {limit}"
        )
    over = len(r.context) + len(r.continuation) - (limit + 1)
    return r if over <= 0 else TokenRequest(r.context[over:], r.continuation, r.label)


def _score_rows(
    rows: torch.Tensor, targets: Sequence[Sequence[int]], head: nn.Module | None = None
) -> list[Score]:
    """rows: (sum of len(targets), vocab) logits predicting each target's tokens in turn, or
    the hidden states the LM head ``head`` turns into them. Logits are made and read
    SCORE_CHUNK rows at a time, which stay in the CPU's cache."""
    flat = torch.tensor([t for target in targets for t in target], device=rows.device)
    picked = torch.empty(len(flat), device=rows.device)
    greedy = torch.empty(len(flat), dtype=torch.bool, device=rows.device)
    for start in range(0, len(flat), SCORE_CHUNK):
        part = slice(start, start + SCORE_CHUNK)
        logits = rows[part] if head is None else head(rows[part])
        logprobs = F.log_softmax(logits.float(), dim=-1)
        mine = flat[part]
        picked[part] = logprobs.gather(1, mine[:, None])[:, 0]
        # argmax == target (lm-eval's test, the first index on a tie), with argmax (ten times
        # slower than a max on the CPU) only on the rows where the target reaches the maximum
        reaches = picked[part] >= torch.amax(logprobs, dim=-1)
        reach = reaches.nonzero()[:, 0]
        if len(reach):
            reaches[reach] = logprobs[reach].argmax(dim=-1) == mine[reach]
        greedy[part] = reaches
    out, start = [], 0
    for target in targets:
        end = start + len(target)
        logprob, is_greedy = float(picked[start:end].sum()), bool(greedy[start:end].all())
        out.append(Score(logprob, is_greedy, end - start))
        start = end
    return out


def _score_plain(model: EvalModel, requests: Sequence[TokenRequest]) -> list[Score]:
    """lm-eval's path: one row per request (already _fitted to the window)."""
    inputs = [_sequence(r) for r in requests]
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


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the prefix a and b share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _Row:
    """Sequences (context + continuation[:-1]) laid out as a prefix tree in one model input:
    a token shared by several sequences appears once, in depth-first order, and attends to its
    ancestors only; its position id is its depth."""

    first: tuple[int, ...]  # the first sequence placed, lexicographically the least
    tokens: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    # each request's index and the nodes whose logits predict its continuation tokens
    reads: list[tuple[int, list[int]]] = field(default_factory=list)
    trunk: int = 0  # leading nodes every sequence of the row shares

    def ancestry(self) -> torch.Tensor:
        """(n, n) bool: node a sees node b iff b is a or one of its ancestors. In depth-first
        order b's subtree is the range b..end[b], so that is b <= a <= end[b]."""
        end = list(range(len(self.tokens)))
        for node in range(len(self.tokens) - 1, 0, -1):
            up = self.parent[node]
            if up >= 0 and end[node] > end[up]:
                end[up] = end[node]
        idx = torch.arange(len(self.tokens))
        return (idx[None, :] <= idx[:, None]) & (idx[:, None] <= torch.tensor(end)[None, :])


def _tree_rows(requests: Sequence[TokenRequest], limit: int) -> list[_Row]:
    """Requests packed into prefix-tree rows of at most limit tokens.

    In lexicographic order each sequence shares with its predecessor the longest prefix it
    shares with any earlier one, so it joins the current row as the path down that prefix plus
    its own new tokens. A sequence starts a row of its own when it shares fewer than
    MIN_JOIN tokens (unrelated texts would only lengthen every attention row) or would not fit.
    """
    order = sorted(range(len(requests)), key=lambda i: _sequence(requests[i]))
    rows: list[_Row] = []
    previous: tuple[int, ...] = ()
    path: list[int] = []
    for i in order:
        r = requests[i]
        seq = _sequence(r)
        shared = _common(previous, seq)
        row = rows[-1] if rows else None
        joins = shared >= MIN_JOIN or (shared == len(seq) and shared > 0)
        if row is None or not joins or len(row.tokens) + len(seq) - shared > limit:
            row, shared = _Row(first=seq), 0
            rows.append(row)
        # the new nodes hang in a chain below the last shared one
        start, new = len(row.tokens), len(seq) - shared
        row.parent += [path[shared - 1] if shared else -1, *range(start, start + new - 1)][:new]
        row.depth += range(shared, len(seq))
        row.tokens += seq[shared:]
        path = path[:shared] + list(range(start, start + new))
        row.trunk = _common(row.first, seq) if row.reads else len(seq)
        first = len(r.context) - 1  # the context's last token predicts the first one
        row.reads.append((i, path[first : first + len(r.continuation)]))
        previous = seq
    return rows


def _sequence(r: TokenRequest) -> tuple[int, ...]:
    # a continuation's last token is never an input
    return r.context + r.continuation[:-1]


@torch.no_grad()
def _run_rows(gpt: GPT, requests: Sequence[TokenRequest], rows: list[_Row]) -> dict[int, Score]:
    """Score the requests of rows in one forward. The prefix every row starts with (a few-shot
    task's description and examples) runs once, on one row, and the rows read its keys and
    values from a cache; each context keeps at least its last token out of it."""
    device = gpt.wte.weight.device
    firsts = [row.first for row in rows]
    shared = min(
        _common(min(firsts), max(firsts)),  # the least and greatest bound all the others
        *(row.trunk for row in rows),
        *(len(requests[i].context) - 1 for row in rows for i, _ in row.reads),
    )
    if len(rows) == 1 or shared < MIN_SHARED_PREFIX:
        shared = 0
    width = max(len(row.tokens) for row in rows) - shared
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros_like(ids)
    # padding sees the shared prefix and itself, so no softmax row is empty
    allowed = torch.zeros(len(rows), width, shared + width, dtype=torch.bool)
    allowed[:, :, :shared] = True
    allowed[:, torch.arange(width), shared + torch.arange(width)] = True
    for b, row in enumerate(rows):
        n = len(row.tokens) - shared
        ids[b, :n] = torch.tensor(row.tokens[shared:])
        positions[b, :n] = torch.tensor(row.depth[shared:])
        allowed[b, :n, : shared + n] = row.ancestry()[shared:]
    cache = None
    if shared:
        cache = gpt.new_cache(len(rows), shared + width)
        one = gpt.new_cache(1, shared)
        gpt.hidden_states(torch.tensor([rows[0].first[:shared]], device=device), cache=one)
        cache.k[:, :, :, :shared] = one.k
        cache.v[:, :, :, :shared] = one.v
        cache.length = shared
    # only the nodes whose logits are read leave the last block (a third of them on the bench)
    read = [sorted({n - shared for _, nodes in row.reads for n in nodes}) for row in rows]
    at = torch.zeros(len(rows), max(map(len, read)), dtype=torch.long)
    for b, cols in enumerate(read):
        at[b, : len(cols)] = torch.tensor(cols)
    hidden = gpt.masked_hidden(
        ids.to(device),
        positions.to(device),
        allowed[:, None].to(device),
        cache=cache,
        at=at.to(device),
    )
    slot = [{col: j for j, col in enumerate(cols)} for cols in read]
    picks = [
        (b, slot[b][node - shared])
        for b, row in enumerate(rows)
        for _, nodes in row.reads
        for node in nodes
    ]
    pick = torch.tensor(picks, device=device)
    owners = [i for row in rows for i, _ in row.reads]
    targets = [requests[i].continuation for i in owners]
    scores = _score_rows(hidden[pick[:, 0], pick[:, 1]], targets, gpt.lm_head)
    return dict(zip(owners, scores, strict=True))


def _score_shared(
    gpt: GPT, requests: Sequence[TokenRequest], limit: int, batch_size: int
) -> dict[int, Score]:
    """Prefix-tree rows (see _tree_rows), longest first, batch_size rows per forward."""
    rows = _tree_rows(requests, limit)
    rows.sort(key=lambda row: (-len(row.tokens), row.first))
    out: dict[int, Score] = {}
    for start in range(0, len(rows), batch_size):
        out.update(_run_rows(gpt, requests, rows[start : start + batch_size]))
    return out


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
    # lm-eval's left truncation, as a shorter context: the model sees the same tokens, and the
    # choices of an item whose context was cut still share it (when their lengths agree)
    requests = [_fitted(r, model.max_length) for r in requests]
    gpt = model.gpt() if share_prefix else None
    if gpt is not None and gpt.config.position == "alibi":
        # ALiBi biases by column distance, which prefix-tree rows do not keep
        gpt = None
    if gpt is not None:
        results = _score_shared(gpt, requests, model.max_length, batch_size)
    else:
        results = {}
        order = sorted(range(len(requests)), key=lambda i: _sort_key(requests[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            scores = _score_plain(model, [requests[i] for i in chunk])
            results.update(zip(chunk, scores, strict=True))
    return [results[i] for i in range(len(requests))]
