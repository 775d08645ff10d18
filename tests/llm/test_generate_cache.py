"""KV-cache generation, batches of ragged prompts, repetition penalty, stop strings, streaming."""

import pytest
import torch

from llm.generate import Sampling, _penalise, generate, generate_batch, stream
from llm.model.config import ModelConfig
from llm.model.gpt import GPT

BASE = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
LLAMA = dict(norm="rmsnorm", activation="swiglu", position="rope", n_kv_head=2)
VARIANTS = {
    "gpt2": {},
    "llama": LLAMA,
    "alibi_mqa": {"position": "alibi", "n_kv_head": 1, "qk_norm": True},
    "post_norm_relu2": {"norm_placement": "post", "activation": "relu2", "bias": True},
}


def build(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**BASE, **overrides})).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_equals_no_cache_greedy_past_block_size(variant):
    model = build(**VARIANTS[variant])
    # 24 new tokens from a 5-token prompt crosses block_size=16, where the window slides
    cached = generate(model, [1, 2, 3, 4, 5], 24, temperature=0)
    uncached = generate(model, [1, 2, 3, 4, 5], 24, temperature=0, use_cache=False)
    assert cached == uncached
    assert len(cached) == 24


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_logits_match_full_forward(variant):
    model = build(**VARIANTS[variant])
    idx = torch.randint(0, 64, (2, 12))
    full, _ = model(idx)
    cache = model.new_cache(2)
    parts = [model(idx[:, :7], cache=cache)[0]]
    parts += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_of_ragged_prompts_equals_one_at_a_time(variant, use_cache):
    model = build(**VARIANTS[variant])
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7], [9, 8, 7]]
    batch = generate_batch(model, prompts, 14, Sampling(temperature=0), use_cache=use_cache)
    alone = [generate(model, p, 14, temperature=0) for p in prompts]
    assert batch == alone


def test_stream_yields_the_same_tokens_one_by_one():
    model = build()
    it = stream(model, [3, 1, 4], 6, Sampling(temperature=0))
    first = next(it)
    rest = list(it)
    assert [first, *rest] == generate(model, [3, 1, 4], 6, temperature=0)


def test_stop_string_ends_generation_after_the_completing_token():
    model = build()
    greedy = generate(model, [1, 2], 10, temperature=0)

    def decode(ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)

    stop = f"t{greedy[2]}"
    got = generate(model, [1, 2], 10, temperature=0, stop=[stop], decode=decode)
    assert got == greedy[: greedy.index(greedy[2]) + 1]


def test_stop_strings_need_decode():
    with pytest.raises(ValueError, match="decode"):
        generate(build(), [1], 3, stop=["x"])


def test_repetition_penalty_lowers_seen_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert _penalise(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]


def test_repetition_penalty_avoids_seen_tokens():
    model = build()
    penalised = generate(model, [1, 2], 15, temperature=0, repetition_penalty=1e9)
    # with an overwhelming penalty neither a prompt token nor a generated one comes back
    assert len(set(penalised)) == len(penalised)
    assert not {1, 2} & set(penalised)


def test_max_new_tokens_caps_each_row():
    model = build()
    out = generate_batch(model, [[1], [2, 3]], 4, Sampling(temperature=1.0, seed=0))
    assert [len(row) for row in out] == [4, 4]


def test_sampled_batch_is_reproducible_with_seed():
    model = build(**LLAMA)
    opts = Sampling(temperature=1.0, top_k=10, top_p=0.9, seed=7)
    assert generate_batch(model, [[1], [2, 3]], 8, opts) == generate_batch(
        model, [[1], [2, 3]], 8, opts
    )


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "alibi_mqa"])
def test_masked_hidden_of_a_prefix_tree_equals_each_branch_alone(variant):
    """One row holding [a b c] + [d e] after b + [f] after c (tree order a b c f d e) gives
    every token the hidden state of its own path run alone; a cached past is seen by all."""
    model = build(**VARIANTS[variant])
    a, b, c, d, e, f = 3, 9, 4, 11, 20, 7
    tokens = torch.tensor([[a, b, c, f, d, e]])
    parent = [-1, 0, 1, 2, 1, 4]
    depth = [0, 1, 2, 3, 2, 3]
    allowed = torch.zeros(6, 6, dtype=torch.bool)
    for node in range(6):
        up = node
        while up >= 0:
            allowed[node, up] = True
            up = parent[up]
    with torch.no_grad():
        hidden = model.masked_hidden(tokens, torch.tensor([depth]), allowed[None, None])
        paths = {3: [a, b, c, f], 5: [a, b, d, e]}
        for leaf, path in paths.items():
            alone = model.hidden_states(torch.tensor([path]))[0]
            nodes = [n for n in range(6) if allowed[leaf, n]]
            torch.testing.assert_close(hidden[0, nodes], alone, atol=1e-5, rtol=1e-4)
        # the same with [a b] already in a cache: the rest sees it through the past columns
        cache = model.new_cache(1, 6)
        model.hidden_states(tokens[:, :2], cache=cache)
        rest = model.masked_hidden(
            tokens[:, 2:], torch.tensor([depth[2:]]), allowed[None, None, 2:], cache=cache
        )
        assert cache.length == 6
        torch.testing.assert_close(rest[0], hidden[0, 2:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["gpt2", "llama", "post_norm_relu2"])
@pytest.mark.parametrize("cached", [False, True])
def test_masked_hidden_at_some_columns_equals_those_columns_of_all(variant, cached):
    """at= makes only the chosen columns' hidden states (the last block runs their queries and
    MLP alone), each row its own columns, padded with repeats: the same values as the full
    output at those columns, before and after a cached past."""
    model = build(**VARIANTS[variant])
    torch.manual_seed(1)
    idx = torch.randint(0, 64, (2, 9))
    positions = torch.tensor([list(range(9)), [0, 1, 2, 3, 2, 3, 4, 1, 2]])
    allowed = torch.tril(torch.ones(9, 9, dtype=torch.bool)).repeat(2, 1, 1)
    allowed[1, 4:7, 2:4] = False  # row 1: a branch after node 1 at 4..6 and another at 7..8
    allowed[1, 7:, 2:7] = False
    at = torch.tensor([[8, 0, 5, 3], [6, 8, 3, 3]])
    with torch.no_grad():
        cache = past = None
        if cached:
            cache = model.new_cache(2, 12)
            model.hidden_states(torch.randint(0, 64, (2, 3)), cache=cache)
            past = torch.ones(2, 9, 3, dtype=torch.bool)
            positions = positions + 3
        mask = allowed if past is None else torch.cat([past, allowed], dim=2)
        full = model.masked_hidden(idx, positions, mask[:, None], cache=cache)
        if cache is not None:
            cache.length = 3  # the same past again: the new columns are written over
        some = model.masked_hidden(idx, positions, mask[:, None], cache=cache, at=at)
    assert some.shape == (2, 4, model.config.n_embd)
    torch.testing.assert_close(some, full[torch.arange(2)[:, None], at], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="outside"):
        model.masked_hidden(idx, positions % 9, allowed[:, None], at=torch.tensor([[9], [0]]))


def test_masked_hidden_refuses_alibi_and_positions_past_the_block():
    ok = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="ALiBi"):
        build(position="alibi").masked_hidden(torch.tensor([[1, 2]]), torch.tensor([[0, 1]]), ok)
    with pytest.raises(ValueError, match="block_size"):
        build().masked_hidden(torch.tensor([[1, 2]]), torch.tensor([[15, 16]]), ok)
    with pytest.raises(ValueError, match="columns"):
        build().masked_hidden(torch.tensor([[1, 2]]), torch.tensor([[0, 1]]), ok[..., :1])
