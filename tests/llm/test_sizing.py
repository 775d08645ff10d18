"""Training memory and the Chinchilla planner against Hoffmann et al. 2022."""

import pytest

from llm.model.chinchilla import (
    budget_from_gpu_hours,
    nearest_config,
    optimal_for_tokens,
    optimal_size,
    plan,
    plan_for_tokens,
    predicted_loss,
)
from llm.model.config import ModelConfig
from llm.model.sizing import count_parameters, training_memory

GPT2 = ModelConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)

# Hoffmann et al. 2022, Table 3: (parameters, FLOPs, tokens)
TABLE_3 = [
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


@pytest.mark.parametrize(("params", "flops", "tokens"), TABLE_3)
def test_planner_reproduces_table_3(params, flops, tokens):
    n, d = optimal_size(flops)
    assert n == pytest.approx(params, rel=0.15)
    assert d == pytest.approx(tokens, rel=0.15)


def test_chinchilla_budget_gives_70b_and_1_4t():
    n, d = optimal_size(5.76e23)
    assert n == pytest.approx(70e9, rel=0.15)
    assert d == pytest.approx(1.4e12, rel=0.15)


def test_approach3_is_the_minimum_of_its_own_fit():
    flops = 1e21
    n, d = optimal_size(flops, "approach3")
    assert 6 * n * d == pytest.approx(flops)
    best = predicted_loss(n, d)
    for factor in (0.7, 1.4):
        assert predicted_loss(n * factor, d / factor) > best


def test_nearest_config_is_close_and_valid():
    config = nearest_config(1.3e9, GPT2)
    assert count_parameters(config) == pytest.approx(1.3e9, rel=0.15)
    assert config.n_embd % config.n_head == 0 and config.n_embd // config.n_head == 64


def test_plan_from_gpu_hours():
    flops = budget_from_gpu_hours(1000, "H100", mfu=0.4)
    assert flops == pytest.approx(1000 * 3600 * 989e12 * 0.4)
    result = plan(flops, GPT2)
    assert result.loss > 1.69
    assert result.config_tokens == pytest.approx(result.tokens, rel=0.5)
    assert dict(result.rows())["tokens per parameter"] == "20.0"


def test_memory_fsdp_shards_states_and_checkpointing_saves_activations():
    ddp = training_memory(GPT2, micro_batch=8, strategy="ddp", n_gpus=8)
    fsdp = training_memory(GPT2, micro_batch=8, strategy="fsdp", n_gpus=8)
    n = count_parameters(GPT2)
    assert ddp.weights + ddp.grads + ddp.optimizer == 16 * n  # fp32 master, grads, 2 moments
    assert fsdp.optimizer == ddp.optimizer / 8
    ckpt = training_memory(GPT2, micro_batch=8, checkpointing=True)
    # the fp32 logits dominate at this vocabulary; the per-layer stores shrink 17x
    assert ckpt.activations < ddp.activations / 2
    assert training_memory(GPT2, micro_batch=8, precision="fp32").activations > ddp.activations


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"precision": "fp8"}, "precision"), ({"strategy": "zero9"}, "strategy")],
)
def test_memory_rejects_unknown_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        training_memory(GPT2, micro_batch=1, **kwargs)


def test_unknown_gpu_is_named():
    with pytest.raises(ValueError, match="gpu"):
        budget_from_gpu_hours(10, "TPU9")


@pytest.mark.parametrize(("params", "flops", "tokens"), TABLE_3)
def test_fixed_data_mode_reproduces_table_3(params, flops, tokens):
    """Given the row's tokens, the size and compute of that row. The table rounds tokens to two
    digits (1.5T for 67B), which alone moves N = D/20 by up to 12% and C = 6ND by up to 17%."""
    n, c = optimal_for_tokens(tokens)
    assert n == pytest.approx(params, rel=0.15)
    assert c == pytest.approx(flops, rel=0.2)


@pytest.mark.parametrize("tokens", [1e9, 2e11, 1.4e12])
def test_fixed_data_mode_inverts_the_compute_frontier(tokens):
    for method in ("rule", "approach3"):
        n, c = optimal_for_tokens(tokens, method)
        assert 6 * n * tokens == pytest.approx(c)
        assert optimal_size(c, method) == pytest.approx((n, tokens), rel=1e-9)


def test_over_training_for_inference_is_a_smaller_model_on_the_same_data():
    optimal = plan_for_tokens(2e9, GPT2)
    small = plan_for_tokens(2e9, GPT2, overtrain=4)
    assert small.params == pytest.approx(optimal.params / 4)
    assert small.tokens == optimal.tokens == small.config_tokens == 2e9
    assert small.flops == pytest.approx(optimal.flops / 4)
    assert small.loss > optimal.loss  # the price of a cheaper model, by the approach-3 fit
    assert count_parameters(small.config) < count_parameters(optimal.config)
    assert small.config_flops > 6 * small.config_params * 2e9 * 0.99  # attention on top
    with pytest.raises(ValueError, match="overtrain"):
        plan_for_tokens(2e9, GPT2, overtrain=0.5)
