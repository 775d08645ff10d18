"""Log-likelihood of continuations, tokenized and truncated exactly as lm-evaluation-harness does.

Tokenization (lm-eval's ``LM.loglikelihood`` and ``HFLM._encode_pair``): trailing spaces of the
context move to the front of the continuation; context and continuation are encoded together
and the continuation is whatever follows the first len(encode(context)) tokens; an empty
context is replaced by the prefix token (BOS, else EOS). The model sees
``(context + continuation)[-(max_length + 1):][:-1]``, i.e. long inputs lose tokens on the left.

Rolling log-likelihood (perplexity) cuts a document into lm-eval's windows
(``get_rolling_token_windows`` + ``make_disjoint_window``): each token is predicted once, every
window but the last holds max_length predictions, the last gets as much context as fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llm.eval.lm import EvalModel
from llm.eval.scoring import Score, TokenRequest, score_tokens


class EmptyContinuationError(ValueError):
    """A continuation that encodes to no tokens; the message names the item."""


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str
    label: str = ""  # names the item in error messages, e.g. "arc_easy row 12 choice 3"


def _lm_eval_pair(context: str, continuation: str) -> tuple[str, str]:
    """Trailing spaces of the context moved onto the continuation; "" means the prefix path."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


def encode_requests(model: EvalModel, requests: Sequence[Request]) -> list[TokenRequest]:
    """Token ids of each (context, continuation) pair, lm-eval's way (see module docstring);
    EmptyContinuationError names the first request whose continuation has no tokens."""
    out = []
    for encoded in encode_or_explain(model, requests):
        if isinstance(encoded, ValueError):
            raise encoded
        out.append(encoded)
    return out


def encode_or_explain(
    model: EvalModel, requests: Sequence[Request]
) -> list[TokenRequest | ValueError]:
    """Each request's tokens, or why it cannot be scored (a message naming it).

    Unique contexts and unique context+continuation strings are encoded once, in one batch.
    A context of spaces only counts as empty (lm-eval would fail on it).
    """
    pairs = [_lm_eval_pair(r.context, r.continuation) for r in requests]
    wanted = sorted({t for c, x in pairs if c for t in (c, c + x)})
    encoded = dict(zip(wanted, model.encode(wanted), strict=True))
    bare = sorted({x for c, x in pairs if not c})
    encoded_bare = dict(zip(bare, model.encode(bare, special=False), strict=True))
    out: list[TokenRequest | ValueError] = []
    for request, (ctx, cont) in zip(requests, pairs, strict=True):
        if ctx:
            ctx_ids = encoded[ctx]
            cont_ids = encoded[ctx + cont][len(ctx_ids) :]
        else:
            ids, prefix = encoded_bare[cont], model.prefix_id
            # lm-eval: a continuation that already starts with the prefix token keeps it
            ctx_ids, cont_ids = (ids[:1], ids[1:]) if ids[:1] == [prefix] else ([prefix], ids)
        label = request.label or "request"
        if not cont_ids:
            out.append(
                EmptyContinuationError(
                    f"{label}: empty continuation: {request.continuation!r} encodes to no "
                    f"tokens after the context ending {request.context[-40:]!r}"
                )
            )
        elif len(cont_ids) > model.max_length:
            out.append(
                ValueError(
                    f"{label}: the continuation has {len(cont_ids)} tokens, more than the "
                    f"model's context of {model.max_length}"
                )
            )
        else:
            out.append(TokenRequest(tuple(ctx_ids), tuple(cont_ids), request.label))
    return out


def loglikelihood(
    model: EvalModel,
    requests: Sequence[Request],
    *,
    batch_size: int = 32,
    share_prefix: bool = True,
) -> list[Score]:
    """Summed log-probability of each continuation given its context, and whether greedy
    decoding would have produced it, in the order of requests."""
    return score_tokens(
        model, encode_requests(model, requests), batch_size=batch_size, share_prefix=share_prefix
    )


def rolling_windows(
    tokens: Sequence[int], prefix: int, max_length: int, context_len: int = 1
) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) windows covering tokens, each token predicted exactly once."""
    if not 1 <= context_len <= max_length:
        raise ValueError(f"context_len must be in 1..{max_length}, got {context_len}")
    tokens = list(tokens)
    if not tokens:
        return []
    pred_len = max_length - context_len + 1
    first = min(max_length, len(tokens))
    windows = [([prefix, *tokens[: first - 1]], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, pred_len)
        end = predicted + n
        windows.append((tokens[end - max_length - 1 : end - 1], tokens[end - n : end]))
        predicted += n
    # make_disjoint_window: the context keeps only what the continuation does not overlap
    return [(ctx[: len(ctx) - (len(cont) - 1)], cont) for ctx, cont in windows]


def loglikelihood_rolling(
    model: EvalModel,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    context_len: int = 1,
) -> list[float]:
    """Total log-likelihood of each text, conditioned only on the prefix token."""
    windows: list[TokenRequest] = []
    owners: list[int] = []
    for i, ids in enumerate(model.encode(list(texts))):
        for ctx, cont in rolling_windows(ids, model.prefix_id, model.max_length, context_len):
            windows.append(TokenRequest(tuple(ctx), tuple(cont), f"text {i}"))
            owners.append(i)
    totals = [0.0] * len(texts)
    scores = score_tokens(model, windows, batch_size=batch_size, share_prefix=False)
    for owner, score in zip(owners, scores, strict=True):
        totals[owner] += score.logprob
    return totals
