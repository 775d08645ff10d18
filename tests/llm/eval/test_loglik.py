"""Log-likelihoods against values computed by hand from the model's logits."""

from __future__ import annotations

import math
import random

import pytest
import torch

from llm.eval import scoring
from llm.eval.lm import LlmforgeModel
from llm.eval.loglik import (
    EmptyContinuationError,
    Request,
    encode_requests,
    loglikelihood,
    loglikelihood_rolling,
    rolling_windows,
)
from llm.eval.scoring import TokenRequest, _score_rows, score_tokens
from tests.llm.eval.conftest import tiny_gpt


def by_hand(lm: LlmforgeModel, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """Sum of log p(cont_j | everything before) for the lm-eval input window."""
    limit = lm.max_length
    window = (ctx + cont)[-(limit + 1) :]
    with torch.no_grad():
        logits = lm.core(torch.tensor([window[:-1]]))[0][0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    first = len(window) - 1 - len(cont)
    picked = [logprobs[first + j, t].item() for j, t in enumerate(cont)]
    greedy = all(logprobs[first + j].argmax().item() == t for j, t in enumerate(cont))
    return sum(picked), greedy


def ids(lm: LlmforgeModel, text: str) -> list[int]:
    return lm.encode([text])[0]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_loglikelihood_equals_hand_computation(lm, share_prefix):
    ctx = "The king said that the queen"
    conts = [" would come", " is deep", " sea", " roof of the house"]
    scores = loglikelihood(lm, [Request(ctx, c) for c in conts], share_prefix=share_prefix)
    for cont, score in zip(conts, scores, strict=True):
        whole, c = ids(lm, ctx + cont), ids(lm, ctx)
        expected, greedy = by_hand(lm, c, whole[len(c) :])
        assert score.logprob == pytest.approx(expected, abs=1e-4)
        assert score.is_greedy == greedy
        assert score.tokens == len(whole) - len(c)


def test_trailing_space_of_the_context_moves_to_the_continuation(lm):
    # "said " + "that" scores the tokens of " that", exactly like "said" + " that"
    moved, plain = encode_requests(
        lm, [Request("The king said ", "that"), Request("The king said", " that")]
    )
    assert moved == plain
    assert moved.continuation == tuple(
        ids(lm, "The king said that")[len(ids(lm, "The king said")) :]
    )
    assert lm.decode(list(moved.continuation)).startswith(" ")


def test_continuation_split_at_the_encoded_context_length(lm, tok):
    # a word the vocabulary merges whole: its tail alone would join the context's last token,
    # so lm-eval's split leaves no continuation; that is an error naming the item
    word = next(w for w in ("castle", "morning", "planet", "closest") if tok.token_to_id("Ġ" + w))
    ctx, cont = "the " + word[:-2], word[-2:]
    whole, c = ids(lm, ctx + cont), ids(lm, ctx)
    assert len(whole) <= len(c)
    with pytest.raises(EmptyContinuationError, match="arc row 7 choice 2"):
        encode_requests(lm, [Request(ctx, cont, "arc row 7 choice 2")])


def test_empty_continuation_is_an_error_naming_the_item(lm):
    with pytest.raises(
        EmptyContinuationError, match=r"hellaswag row 3 choice 0.*empty continuation"
    ):
        loglikelihood(lm, [Request("The king", "", "hellaswag row 3 choice 0")])


def test_empty_context_conditions_on_the_prefix_token(lm):
    [score] = loglikelihood(lm, [Request("", " The king said")])
    assert lm.prefix_id == lm.eos_id  # no BOS in this vocabulary: lm-eval falls back to EOS
    cont = lm.encode([" The king said"], special=False)[0]
    expected, _ = by_hand(lm, [lm.prefix_id], cont)
    assert score.logprob == pytest.approx(expected, abs=1e-4)


def test_left_truncation_keeps_the_last_max_length_plus_one_tokens(lm):
    ctx = ("The king said that the queen would come to the castle in the morning. " * 3).rstrip()
    cont = " Hello world"
    c, whole = ids(lm, ctx), ids(lm, ctx + cont)
    assert len(whole) > lm.max_length + 1  # the request must really be truncated
    for share in (True, False):
        [score] = loglikelihood(lm, [Request(ctx, cont), Request(ctx, " sea")], share_prefix=share)[
            :1
        ]
        expected, _ = by_hand(lm, c, whole[len(c) :])
        assert score.logprob == pytest.approx(expected, abs=1e-4)


def test_greedy_flag_is_true_for_the_models_own_argmax(lm):
    ctx = ids(lm, "The king said")
    with torch.no_grad():
        nxt = int(lm.core(torch.tensor([ctx]))[0][0, -1].argmax())
    [score] = score_tokens(lm, [TokenRequest(tuple(ctx), (nxt,))])
    assert score.is_greedy


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_shared_context_cache_equals_one_row_per_request(tok, position):
    lm = LlmforgeModel(tiny_gpt(tok.get_vocab_size(), position=position), tok)
    rnd = random.Random(0)
    vocab = tok.get_vocab_size()
    requests = []
    for _ in range(12):  # groups of 1..5 choices, contexts 1..20 tokens, continuations 1..8
        ctx = tuple(rnd.randrange(vocab) for _ in range(rnd.randint(1, 20)))
        for _ in range(rnd.randint(1, 5)):
            requests.append(
                TokenRequest(ctx, tuple(rnd.randrange(vocab) for _ in range(rnd.randint(1, 8))))
            )
    rnd.shuffle(requests)
    shared = score_tokens(lm, requests, batch_size=7, share_prefix=True)
    plain = score_tokens(lm, requests, batch_size=5, share_prefix=False)
    for a, b, r in zip(shared, plain, requests, strict=True):
        expected, greedy = by_hand(lm, list(r.context), list(r.continuation))
        assert a.logprob == pytest.approx(expected, abs=1e-4)
        assert b.logprob == pytest.approx(expected, abs=1e-4)
        assert a.is_greedy == b.is_greedy == greedy


def _tree_shaped_requests(vocab: int, limit: int, seed: int) -> list[TokenRequest]:
    """Requests of every shape the prefix-tree rows meet: a few-shot prefix (longer than
    MIN_SHARED_PREFIX) before items of several choices, one-token choices that share their
    whole sequence, WinoGrande-style contexts that differ after a shared start and share the
    continuation, contexts beyond the model's window and unrelated single requests."""
    rnd = random.Random(seed)

    def toks(n: int) -> tuple[int, ...]:
        return tuple(rnd.randrange(vocab) for _ in range(n))

    shots = toks(scoring.MIN_SHARED_PREFIX + 2)
    out = []
    for _ in range(5):  # few-shot items: some choices multi-token, some one token
        ctx = shots + toks(rnd.randint(1, 6))
        out += [TokenRequest(ctx, toks(rnd.randint(1, 4))) for _ in range(rnd.randint(2, 4))]
        out += [TokenRequest(ctx, toks(1)) for _ in range(3)]
    for _ in range(3):  # one context per choice, the same continuation
        start, rest = toks(rnd.randint(4, 9)), toks(rnd.randint(1, 5))
        out += [TokenRequest(start + toks(rnd.randint(1, 2)), rest) for _ in range(2)]
    for _ in range(2):  # truncated on the left: the choices still share what is left
        ctx = toks(limit + rnd.randint(1, 10))
        out += [TokenRequest(ctx, toks(2)) for _ in range(3)]
    out += [TokenRequest(toks(rnd.randint(1, 12)), toks(rnd.randint(1, 6))) for _ in range(6)]
    rnd.shuffle(out)
    return out


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_prefix_tree_rows_score_every_request_as_alone(tok, position, batch_size):
    lm = LlmforgeModel(tiny_gpt(tok.get_vocab_size(), position=position), tok)
    requests = _tree_shaped_requests(tok.get_vocab_size(), lm.max_length, seed=batch_size)
    shared = score_tokens(lm, requests, batch_size=batch_size, share_prefix=True)
    plain = score_tokens(lm, requests, batch_size=batch_size, share_prefix=False)
    for a, b, r in zip(shared, plain, requests, strict=True):
        expected, greedy = by_hand(lm, list(r.context), list(r.continuation))
        assert a.logprob == pytest.approx(expected, abs=1e-4)
        assert b.logprob == pytest.approx(expected, abs=1e-4)
        assert a.is_greedy == b.is_greedy == greedy
        assert a.tokens == len(r.continuation)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_a_few_shot_prefix_runs_once_per_batch_on_one_row(tok, position, monkeypatch):
    lm = LlmforgeModel(tiny_gpt(tok.get_vocab_size(), position=position), tok)
    rnd = random.Random(1)
    shots = tuple(rnd.randrange(50) for _ in range(scoring.MIN_SHARED_PREFIX + 2))
    contexts = [(*shots, rnd.randrange(50), item) for item in range(12)]
    requests = [
        TokenRequest(ctx, (rnd.randrange(50), choice)) for ctx in contexts for choice in range(3)
    ]
    prefix_runs = []
    run = lm.core.hidden_states
    monkeypatch.setattr(
        lm.core, "hidden_states", lambda idx, **kw: prefix_runs.append(idx) or run(idx, **kw)
    )
    scores = score_tokens(lm, requests, batch_size=2)
    assert [p.tolist() for p in prefix_runs] == [[list(shots)]] * len(prefix_runs)
    assert len(prefix_runs) >= 2  # the rows (12 items x 3 choices > 32 tokens) need batches
    for score, r in zip(scores, requests, strict=True):
        expected, greedy = by_hand(lm, list(r.context), list(r.continuation))
        assert score.logprob == pytest.approx(expected, abs=1e-4)
        assert score.is_greedy == greedy


def test_tree_rows_hold_each_shared_token_once_and_fit_the_window():
    limit = 12
    a = TokenRequest((1, 2, 3, 4, 5), (6, 7))  # sequence 1 2 3 4 5 6
    b = TokenRequest((1, 2, 3, 4, 5), (8,))  # sequence 1 2 3 4 5: a's prefix, no new node
    c = TokenRequest((1, 2, 3, 4, 9), (6,))  # branches after 1 2 3 4
    d = TokenRequest((1, 2, 7), (5,))  # shares 2 tokens only (< MIN_JOIN): a row of its own
    e = TokenRequest((1, 2, 3, 4, 9, 9, 9, 9, 9), (1, 1, 1))  # 11 tokens: 6 more than c's row
    rows = scoring._tree_rows([a, b, c, d, e], limit)  # holds, one over the limit
    assert [len(r.tokens) for r in rows] == [7, 11, 3]
    by_request = {i: (n, nodes) for n, row in enumerate(rows) for i, nodes in row.reads}
    row = rows[by_request[0][0]]
    assert row.tokens == [1, 2, 3, 4, 5, 6, 9]
    assert row.depth == [0, 1, 2, 3, 4, 5, 4]
    assert by_request[0][1] == [4, 5]  # the nodes of 5 and 6 predict 6 and 7
    assert by_request[1][1] == [4]
    assert by_request[2][1] == [6]  # node 9 (depth 4) predicts c's 6
    assert row.trunk == 4
    seen = row.ancestry()
    assert seen[6].tolist() == [True, True, True, True, False, False, True]
    assert rows[by_request[3][0]].tokens == [1, 2, 7]
    assert all(len(r.tokens) <= limit for r in rows)


def test_rolling_windows_match_lm_evals_docstring_example():
    # lm-eval LM.loglikelihood_rolling docstring: tokens 0..9, max length 4, prefix BOS
    bos = 99
    windows = rolling_windows(list(range(10)), bos, max_length=4, context_len=1)
    assert windows == [([bos], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]


@pytest.mark.parametrize("n,max_len,ctx_len", [(1, 4, 1), (37, 8, 1), (37, 8, 3), (64, 16, 16)])
def test_rolling_windows_predict_every_token_once_with_full_context(n, max_len, ctx_len):
    tokens = list(range(100, 100 + n))
    windows = rolling_windows(tokens, 0, max_len, ctx_len)
    predicted = [t for _, cont in windows for t in cont]
    assert predicted == tokens
    for ctx, cont in windows:
        assert len(ctx) + len(cont) - 1 <= max_len  # the model input fits
        assert ctx  # every prediction has something to condition on


def test_rolling_loglikelihood_equals_direct_computation_within_one_window(lm):
    text = "The king said that the queen would come."
    [total] = loglikelihood_rolling(lm, [text])
    tokens = ids(lm, text)
    assert len(tokens) <= lm.max_length
    expected, _ = by_hand(lm, [lm.prefix_id], tokens)
    assert total == pytest.approx(expected, abs=1e-4)


def test_rolling_loglikelihood_over_several_windows_sums_the_windows(lm):
    text = "Hello world, the world is wide and the sea is deep. " * 6
    tokens = ids(lm, text)
    assert len(tokens) > 2 * lm.max_length
    [total] = loglikelihood_rolling(lm, [text], context_len=4)
    expected = sum(
        by_hand(lm, ctx, cont)[0]
        for ctx, cont in rolling_windows(tokens, lm.prefix_id, lm.max_length, 4)
    )
    assert total == pytest.approx(expected, abs=1e-3)
    assert math.isfinite(total) and total < 0


def test_greedy_is_argmax_equal_to_the_target_first_index_on_a_tie() -> None:
    """lm-eval's is_greedy: logprobs.argmax() == token, so on a tie only the first index wins."""
    logits = torch.tensor(
        [
            [0.0, 2.0, 2.0, 1.0],  # target 1: the first of two maxima
            [0.0, 2.0, 2.0, 1.0],  # target 2: a maximum, but not argmax's
            [3.0, 1.0, 0.0, 0.0],  # target 1: not a maximum
            [0.0, 0.0, 0.0, 5.0],  # target 3: the only maximum
        ]
    )
    scores = _score_rows(logits, [[1], [2], [1, 3]])
    assert [s.is_greedy for s in scores] == [True, False, False]
    rng = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (400, 6), generator=rng).float()  # many ties
    targets = torch.randint(0, 6, (400,), generator=rng).tolist()
    scores = _score_rows(logits, [[t] for t in targets])
    expected = (torch.log_softmax(logits, -1).argmax(-1) == torch.tensor(targets)).tolist()
    assert [s.is_greedy for s in scores] == expected
