import pytest
import torch

from llm.generate import filter_logits, generate
from llm.model.config import ModelConfig
from llm.model.gpt import GPT


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=64, block_size=8, n_layer=2, n_head=4, n_embd=32))


def greedy_by_hand(model: GPT, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(torch.tensor([ids[-model.config.block_size :]]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_matches_argmax_by_hand_and_crops_context(model):
    model.eval()
    # 20 new tokens from a 5-token prompt runs well past block_size=8
    expected = greedy_by_hand(model, [1, 2, 3, 4, 5], 20)
    assert generate(model, [1, 2, 3, 4, 5], 20, temperature=0) == expected
    assert generate(model, [1, 2, 3, 4, 5], 20, temperature=0) == expected


def test_top_k_one_equals_greedy(model):
    greedy = generate(model, [3, 1, 4], 12, temperature=0)
    assert generate(model, [3, 1, 4], 12, temperature=1.5, top_k=1, seed=123) == greedy


def test_seed_makes_sampling_reproducible(model):
    a = generate(model, [7], 30, temperature=1.0, seed=42)
    b = generate(model, [7], 30, temperature=1.0, seed=42)
    c = generate(model, [7], 30, temperature=1.0, seed=43)
    assert a == b
    assert len(a) == 30
    assert a != c


def test_sampling_leaves_global_rng_alone(model):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    generate(model, [7], 10, seed=1)
    torch.testing.assert_close(torch.rand(3), expected)


def test_eos_stops_and_is_not_returned(model):
    greedy = generate(model, [1, 2], 10, temperature=0)
    eos = greedy[3]
    first_eos = greedy.index(eos)
    assert generate(model, [1, 2], 10, temperature=0, eos_id=eos) == greedy[:first_eos]


def test_restores_training_mode(model):
    model.train()
    generate(model, [1], 3, seed=0)
    assert model.training
    model.eval()
    generate(model, [1], 3, seed=0)
    assert not model.training


def test_zero_new_tokens(model):
    assert generate(model, [1, 2], 0) == []


def test_filter_logits_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(filter_logits(logits, None, 0.75))
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(filter_logits(logits, None, 0.85))
    assert kept.tolist() == [True, True, True, False]
    # the most likely token survives any top_p
    kept = torch.isfinite(filter_logits(logits, None, 1e-6))
    assert kept.tolist() == [True, False, False, False]


def test_top_p_sampling_only_draws_from_nucleus(model):
    greedy = generate(model, [1], 5, temperature=0)
    for seed in range(5):
        assert generate(model, [1], 5, top_p=1e-6, seed=seed) == greedy


@pytest.mark.parametrize(
    ("prompt", "max_new", "kwargs", "name"),
    [
        ([], 5, {}, "prompt_ids"),
        ([1], -1, {}, "max_new_tokens"),
        ([1], 5, {"temperature": -0.5}, "temperature"),
        ([1], 5, {"top_p": 0.0}, "top_p"),
        ([1], 5, {"top_p": 1.5}, "top_p"),
        ([1], 5, {"top_k": 0}, "top_k"),
    ],
)
def test_argument_validation_names_argument(model, prompt, max_new, kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate(model, prompt, max_new, **kwargs)
